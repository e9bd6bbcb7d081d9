"""What ``launch kaggle`` uploads, as private datasets that Kaggle takes as they are.

Kaggle unpacks every archive it is given (a shard is a tar, a wheel and a checkpoint are zips) and holds
at most 50 top-level files per dataset version, so every dataset is a few *packs* (``launch.carry``):
files Kaggle leaves alone, each verified by sha256 when the kernel unpacks it. A dataset is named by its
content (the code's is versioned, with a ``BUNDLE.json`` marker), so it is uploaded once; one is taken as
already there only when Kaggle lists exactly the packs a complete upload has. After an upload, the listing
is checked the same way: the kaggle package skips a file whose upload it gave up on without saying so.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_shards.files import cache_root
from launch import bundle as code_bundle
from launch import carry
from launch.accelerate import REPO_ROOT
from launch.errors import LaunchError
from launch.inputs import run_files, staged_form
from launch.transports.kaggle_api import KaggleService

IMAGE_PROVIDES = ("torch", "torchvision", "torchaudio")  # Kaggle's image has its own torch; with it, everything torch needs
LAUNCHER_ONLY = {"kaggle", "boto3", "six", "requests"}  # what the launcher uses and the kernel does not
KERNEL_GLIBC = (2, 35)  # Kaggle's image is built on Ubuntu 22.04: wheels for glibc up to 2.35 run there
MAX_DATASET_FILES = 50  # Kaggle's cap on top-level files in a dataset version
PACK_BYTES = 1 << 30  # about this much per pack (a few packs for a big shard set, never over the cap)
MAX_PACKS = MAX_DATASET_FILES - 2  # room for a marker file
WHEELS_MARKER = "WHEELS.json"
UPLOAD_ATTEMPTS = 3


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str], stop: set[str]) -> dict[str, str]:
    """Every distribution ``requirements`` need, as installed here (name -> version), through their own requirements
    (markers and extras evaluated for this interpreter, which is the kernel's kind: CPython 3.11 on Linux), not going
    into ``stop``. A requirement not installed here is refused: the kernel gets exactly what was tested here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    extras: dict[str, set[str]] = {}  # the extras of each distribution already followed
    queue = [(Requirement(text), "") for text in requirements]
    while queue:
        requirement, extra = queue.pop()
        name = canonical(requirement.name)
        if name in stop or (requirement.marker and not requirement.marker.evaluate({"extra": extra})):
            continue
        wanted = set(requirement.extras)
        if name in found and wanted <= extras[name]:
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise LaunchError(f"the kernel needs {requirement.name} ({requirement}), which is not installed here; install the job's "
                              "dependencies here first (./setup.sh, or pip install -e '.[EXTRA]'), so that the kernel gets the "
                              "versions tested here") from None
        found[name] = dist.version
        extras[name] = extras.get(name, set()) | wanted
        for text in dist.requires or []:
            child = Requirement(text)
            queue += [(child, "")] + [(child, wanted_extra) for wanted_extra in wanted]
    return found


def kernel_requirements(extras: Sequence[str]) -> list[str]:
    """What a Kaggle kernel installs for a job: the project's dependencies and ``extras``, with everything they
    need, pinned to the versions installed here -- less what the image has (torch and what torch needs) and what only
    the launcher uses. Pinned, so a kernel without internet installs the same from the wheels dataset."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    image = set(closure(list(IMAGE_PROVIDES), set()))
    stop = image | {canonical(name) for name in LAUNCHER_ONLY}
    return [f"{name}=={version}" for name, version in sorted(closure(declared, stop).items())]


def wheels_digest(requirements: list[str]) -> str:
    return hashlib.sha256(json.dumps(["cp311-manylinux_x86_64", *requirements]).encode()).hexdigest()


def build_wheels(requirements: list[str], folder: Path) -> list[tuple[str, Path]]:
    """Wheels of ``requirements`` (pinned, the whole closure) for a Kaggle image: CPython 3.11 on manylinux x86_64. A
    project that publishes no wheel is built into one here, which must then be pure Python (py3-none-any)."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(KERNEL_GLIBC[1], 4, -1)] + \
        ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]  # pip does not widen --platform itself
    platform = [*(arg for tag in tags for arg in ("--platform", tag)), "--python-version", "3.11", "--implementation", "cp"]
    binary, built = list(requirements), []
    while binary:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(folder),
                   *platform, *binary]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0:
            break
        missing = re.search(r"No matching distribution found for (\S+)", result.stderr)
        if not missing or missing.group(1) not in binary:
            raise LaunchError(f"building the wheels dataset failed (pip download exit {result.returncode}): {result.stderr[-1500:]}")
        binary.remove(missing.group(1))
        built.append(missing.group(1))
    downloaded = set(folder.glob("*.whl"))
    if built:
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder), *built]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LaunchError(f"building wheels of {', '.join(built)} (they publish none) failed: {result.stderr[-1500:]}")
    impure = [path.name for path in set(folder.glob("*.whl")) - downloaded if not path.name.endswith("-none-any.whl")]
    if impure:
        raise LaunchError(f"{', '.join(impure)}: built here for this machine, not for a Kaggle kernel; run the launch on Linux x86_64 "
                          "or drop --no-internet")
    return [(path.name, path) for path in sorted(folder.glob("*.whl"))]


@dataclass
class Upload:
    """A dataset version on its way: what it must hold, and what Kaggle held before it."""

    folder: Path
    slug: str
    title: str
    expected: dict[str, int]  # file name -> size
    present: dict[str, int] | None
    notes: str
    attempt: int = 1


class Uploader:
    """Datasets on Kaggle, each uploaded only when Kaggle does not already hold it complete; counts the bytes it sent."""

    def __init__(self, service: KaggleService, dataset_timeout: float, dry_run: bool = False):
        self.service, self.dataset_timeout, self.dry_run = service, dataset_timeout, dry_run
        self.bytes_uploaded = 0
        self.planned: list[tuple[str, int]] = []  # (dataset, bytes) a dry run would upload
        self.pending: list[Upload] = []  # uploaded, not yet seen whole on Kaggle (``settle``)

    def _present(self, slug: str) -> dict[str, int] | None:
        """What Kaggle lists for the dataset, once a version still being processed is ready (None: no such dataset)."""
        status = self.service.dataset_status(slug)
        if status is None:
            return None
        if status not in ("ready", "failed"):
            self.service.wait_dataset_ready(slug, self.dataset_timeout)
        return self.service.dataset_files(slug)

    def _stage(self, slug: str) -> Path:
        folder = cache_root() / "kaggle" / self.service.owner / slug
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _send(self, upload: Upload) -> None:
        """Upload the dataset's folder (packs already written) as a new version; ``settle`` checks what Kaggle holds."""
        folder, expected = upload.folder, upload.expected
        for stale in [p for p in folder.iterdir() if p.is_file() and p.name not in expected and p.name != "dataset-metadata.json"]:
            stale.unlink()
        size = sum(expected.values())
        print(f"launch kaggle: uploading {upload.title} ({size / 1e6:.1f} MB in {len(expected)} file{'s' if len(expected) > 1 else ''}) "
              f"to {self.service.owner}/{upload.slug}", flush=True)
        self.service.upload_dataset(folder, upload.slug, upload.title, new=upload.present is None, notes=upload.notes,
                                    timeout_s=self.dataset_timeout)
        self.bytes_uploaded += size
        self.pending.append(upload)

    def settle(self) -> None:
        """Every dataset uploaded by this launch, once Kaggle processed them (together: a new version answers 404, then a
        processing state, for a while), listed whole -- the kaggle package leaves out a file whose upload it gave up on,
        without a word: a dataset that came out incomplete is uploaded again, up to UPLOAD_ATTEMPTS times."""
        while self.pending:
            uploads, self.pending = self.pending, []
            self.service.wait_datasets_ready([upload.slug for upload in uploads], self.dataset_timeout)
            for upload in uploads:
                upload.present = self.service.dataset_files(upload.slug)
                if upload.present == upload.expected:
                    continue
                missing = sorted(name for name, size in upload.expected.items() if (upload.present or {}).get(name) != size)
                if upload.attempt >= UPLOAD_ATTEMPTS:
                    raise LaunchError(f"kaggle: dataset {self.service.owner}/{upload.slug} is still incomplete after {UPLOAD_ATTEMPTS} "
                                      f"uploads (Kaggle lists {sorted(upload.present or {})}); run the launch again")
                upload.attempt += 1
                print(f"launch kaggle: {self.service.owner}/{upload.slug} came out incomplete ({', '.join(missing[:5])} missing or cut "
                      f"short); uploading it again (attempt {upload.attempt} of {UPLOAD_ATTEMPTS})", file=sys.stderr, flush=True)
                self._send(upload)

    def _carry_files(self, slug: str, title: str, pack_id: str, files: list[tuple[str, Path]], digests: dict[str, str],
                     markers: dict[str, bytes], notes: str) -> bool:
        """Make the dataset hold ``files`` as packs (plus small ``markers`` files); returns whether anything was uploaded.
        Equal names and sizes mean equal content only where the slug names the content, or a marker says which."""
        packs = carry.plan(files, MAX_PACKS, PACK_BYTES)
        expected = {**carry.sizes(pack_id, packs), **{name: len(data) for name, data in markers.items()}}
        present = self._present(slug)
        if present == expected and all(self.service.dataset_file(slug, name) == data for name, data in markers.items()):
            return False
        if self.dry_run:
            self.planned.append((f"{self.service.owner}/{slug}", sum(expected.values())))
            return True
        folder = self._stage(slug)
        carry.write_all(folder, pack_id, packs, digests)
        for name, data in markers.items():
            (folder / name).write_bytes(data)
        self._send(Upload(folder, slug, title, expected, present, notes))
        return True

    def code(self, bundle: code_bundle.Bundle) -> dict:
        """One dataset, a new version whenever the bundle's content digest changed."""
        slug = "streamapprox-code"
        marker = json.dumps({"digest": bundle.digest}).encode()
        files = [(rel, bundle.root / rel) for rel in bundle.files]
        if not self._carry_files(slug, "StreamApprox code", bundle.digest, files, bundle.files, {code_bundle.MANIFEST: marker},
                                 notes=f"bundle {bundle.digest[:16]}"):
            print(f"launch kaggle: code bundle {bundle.digest[:12]} already on Kaggle ({self.service.owner}/{slug})", flush=True)
        return {"dataset": f"{self.service.owner}/{slug}", "digest": bundle.digest}

    def carry(self, key: str, spec) -> dict:
        """An input (shard set, video collection, file) as a dataset named by its content."""
        staged = staged_form(spec)
        slug = f"streamapprox-{staged.name}"
        if not self._carry_files(slug, f"StreamApprox {staged.name}", staged.pack_id, staged.files, staged.digests, {}, notes=key):
            print(f"launch kaggle: {key} ({spec.location}) already on Kaggle as {self.service.owner}/{slug}", flush=True)
        return {"dataset": f"{self.service.owner}/{slug}", "pack": staged.pack_id, "target": staged.target, **staged.locator,
                "also_set": staged.also_set}

    def run_directory(self, run_dir: Path) -> dict:
        """A run directory to continue on a kernel (made on another backend), as a dataset named by its content."""
        digest, files, digests = run_files(run_dir)
        slug = f"streamapprox-run-{digest[:16]}"
        if not self._carry_files(slug, f"StreamApprox run {run_dir.name}", digest, files, digests, {}, notes=run_dir.name):
            print(f"launch kaggle: run {run_dir} already on Kaggle as {self.service.owner}/{slug}", flush=True)
        return {"dataset": f"{self.service.owner}/{slug}", "pack": digest}

    def wheels(self, requirements: list[str]) -> dict:
        """The job's dependencies as wheels, for kernels without internet; built and uploaded once per requirement list."""
        digest = wheels_digest(requirements)
        slug = f"streamapprox-wheels-{digest[:16]}"
        present = self._present(slug)
        if not (present and WHEELS_MARKER in present and len(present) > 1):
            with tempfile.TemporaryDirectory(prefix="streamapprox-wheels-") as tmp:
                files = build_wheels(requirements, Path(tmp)) if not self.dry_run else []
                marker = json.dumps({"digest": digest, "requirements": requirements}).encode()
                if self.dry_run:
                    self.planned.append((f"{self.service.owner}/{slug}", 0))
                else:
                    self._carry_files(slug, f"StreamApprox wheels {digest[:8]}", digest, files, {}, {WHEELS_MARKER: marker}, notes="")
        return {"dataset": f"{self.service.owner}/{slug}", "digest": digest}
