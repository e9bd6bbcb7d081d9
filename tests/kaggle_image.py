"""What the loopback Kaggle's kernels run on, as on Kaggle: an image with its own Python and torch but nothing of this
project, and the package index a kernel with internet installs from.

- ``build_image(dest)``: a Python environment (a venv of this interpreter) holding torch, torchvision, torchaudio and
  everything they need, plus a few packages Kaggle's image is known to carry (``PREINSTALLED``) -- hard links to the
  files installed here, so it costs seconds, not gigabytes. Not the dev venv: no editable install, no test tools, no
  webdataset, av, open_clip, Ray, Qdrant. Each kernel gets it as an overlay of its own (``kaggle_server``), so what
  one kernel installs is gone for the next, as on Kaggle.
- ``WHEELHOUSE``: wheels (sdists where a project ships none) of every distribution a kernel may install, at the
  versions installed here; ``./setup.sh --dev`` fills it (``python tests/kaggle_image.py``) from pip's cache of what
  it just installed. ``WheelServer`` serves it on loopback: the "internet" of a kernel that has internet. A kernel
  without internet has no network at all, so it cannot reach it.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = Path(sys.prefix) / "kaggle-wheelhouse"
# Packages of Kaggle's Python image (github.com/Kaggle/docker-python) beside torch; the rest a kernel installs.
PREINSTALLED = ("numpy", "pyyaml", "tqdm", "requests", "pydantic", "accelerate", "tensorboard", "matplotlib", "pillow", "psutil",
                "packaging", "huggingface-hub", "safetensors", "six", "pip", "setuptools", "wheel")


def image_distributions() -> dict[str, str]:
    from launch.transports.kaggle_upload import IMAGE_PROVIDES, closure

    return closure([*IMAGE_PROVIDES, *PREINSTALLED], set())


def build_image(dest: Path) -> Path:
    """The image at ``dest`` (a venv); returns its python."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(dest)], check=True)  # type: ignore[attr-defined]
    here = Path(sysconfig.get_paths()["purelib"])
    there = Path(sysconfig.get_paths(vars={"base": str(dest), "platbase": str(dest)})["purelib"])
    for name in image_distributions():
        dist = metadata.distribution(name)
        for file in dist.files or []:
            source = Path(dist.locate_file(file))
            try:
                rel = source.resolve().relative_to(here.resolve())
            except ValueError:
                continue  # scripts in bin/: the image's python runs modules
            target = there / rel
            if target.exists() or not source.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
    return dest / "bin" / "python"


def kernel_installable() -> list[str]:
    """Every pinned requirement of every job's kernels (a training config's trackers too), and what a kernel needs to
    build an sdist."""
    from jobs import JOBS
    from launch.transports.kaggle_upload import kernel_requirements

    wanted = {requirement for extras in [*(spec.extras for spec in JOBS.values()), ("trackers",)] for requirement in kernel_requirements(extras)}
    return sorted(wanted | {f"{name}=={metadata.version(name)}" for name in ("setuptools", "wheel")})


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class WheelServer:
    """The wheelhouse over HTTP on 127.0.0.1: pip's ``--find-links`` reads the directory listing."""

    def __init__(self, folder: Path = WHEELHOUSE):
        if not any(folder.glob("*.whl")):
            raise RuntimeError(f"{folder}: no wheelhouse for the Kaggle test server's kernels; run ./setup.sh --dev")
        handler = functools.partial(QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fill_wheelhouse(folder: Path = WHEELHOUSE) -> None:
    """Download (from pip's cache, after ./setup.sh installed them) what ``kernel_installable`` names."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "requirements.txt"
    listing.write_text("\n".join(kernel_installable()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "download", "-qq", "--disable-pip-version-check", "--no-deps", "--dest", str(folder),
                    "-r", str(listing)], check=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    fill_wheelhouse()
    print(f"setup: Kaggle test wheelhouse ready ({len(list(WHEELHOUSE.iterdir())) - 1} files in {WHEELHOUSE})")
