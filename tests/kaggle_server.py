"""A Kaggle API server on loopback for the tests, modelled on what ``../shared/REMOTE_FACTS.md`` (and the
project's docs/kaggle.md) record of the real service -- never kinder than it.

It speaks what the real ``kaggle`` package sends (``POST /api/v1/<Service>/<Method>``, camelCase JSON,
basic auth), takes blob uploads by the resumable protocol the package uses (a status query
``Content-Range: bytes */N`` answers 308 with the ``Range`` received so far; a ``Content-Range`` PUT
continues), serves files with ``Range`` requests, pages listings, and **executes** pushed script kernels in
a sandbox laid out like Kaggle, with the entry told the root through ``STREAMAPPROX_KAGGLE_ROOT`` and none
of the caller's credentials. What it models:

- **archives are unpacked** (``unpack=True``, the default): a mounted file that is a ``.zip``/``.tar`` (by
  name) or a zip/tar archive by content appears as a folder named after it without its extension, holding
  the members -- in datasets and in kernel sources alike, at any depth. ``unpack=False`` keeps them as files;
  the real service's rule is not documented, so jobs must survive both;
- **mount layouts**: ``layout="current"`` mounts ``input/datasets/<owner>/<slug>`` and
  ``input/notebooks/<owner>/<slug>``; ``layout="legacy"`` mounts ``input/<slug>``. ``input`` is read-only. A model
  source (``add_model`` seeds a version, not through the kaggle package's upload calls) mounts at
  ``input/models/<owner>/<model>/<framework>/<variation>/<version>``, or ``input/<model>/...`` in the legacy layout,
  the framework in lower case; a push naming a version that does not exist is answered ``invalidModelSources``;
- **at most ``max_gpu_sessions`` (2) GPU sessions at a time**: a third GPU push is refused as Kaggle refuses it;
- **at most ``max_files`` (50) top-level files per dataset version**; a new version is invisible (404) for
  ``hidden_s`` seconds, then processing for ``processing_s`` more (by default 1 s and 2 s; ``hidden_polls`` /
  ``processing_polls`` add status polls on top); a new version meanwhile is refused with Kaggle's misleading 403;
  each version holds exactly the files uploaded with it;
- **kernels queue** (``queue_s``, 1 s by default) before they run, **in Kaggle's image**: their own Python with torch
  and a few of Kaggle's packages (``kaggle_image``), nothing of this project, each kernel on an overlay of its own, in
  a mount namespace where this checkout, the tests' inputs (``hide``) and /tmp are empty -- only what it was sent;
  pip installs from the wheelhouse on loopback -- the kernel's internet -- and a kernel with ``enable_internet: false``
  runs in an empty network namespace (its own loopback only): it reaches nothing;
- **the session wall**: a kernel still running ``session_limit_s`` after it started (12 h; scaled down in tests) is
  killed and ends in ERROR, and what it wrote to ``/kaggle/working`` is not kept (``keep_at_wall=False``, the
  pessimistic reading: Kaggle does not document it); ``slow_start[name]`` seconds pass in a session before its script
  runs (a slow image, a stuck mount: a session that runs out of time);
- **a session's disk is gone when it ends**: only what it wrote to ``/kaggle/working`` is kept (its outputs); what it
  installed and what was mounted are deleted (``Kernel.input_listing`` names what ``/kaggle/input`` held);
- **live logs** through the logs stream endpoint the official ``kaggle kernels logs --follow`` reads (server-sent events
  ending with END_OF_LOG while a kernel runs, the whole log once it ended); ``stream_faults[name]`` (``"drop"``: the
  stream breaks after its first event); the output listing's log and files are the latest *finished* version's only;
- **kernel output listings** are paged (``page_cap``);
- **the GPU quota call** (``GetAcceleratorQuotaStatistics``, undocumented) answers the account's GPU time this week when
  ``answers_quota`` (the default), else 404;
- **faults on request**: ``faults[method]`` (HTTP statuses, or ``"drop"``: the connection closes without an
  answer) for API calls; ``blob_faults[name]`` (``"truncate"``: the body stops halfway under a full
  ``Content-Length``; ``"reset"``; a status) for file downloads; ``upload_faults[name]`` (``"drop"``: the
  connection closes after half the body arrived) for uploads; ``broken`` blob names answer 403 (an expired URL).
- a P100 machine shape's kernels see a P100: its device node (``/dev/nvidia0``) and a sitecustomize that makes torch
  report one;
  ``kernel_env``: extra environment for every kernel.
"""
from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from servers import CHECKOUT, _Server, separate_machine_mounts

P100_SITECUSTOMIZE = """import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.get_device_name = lambda index=0: "Tesla P100-PCIE-16GB"
torch.cuda.get_device_capability = lambda index=0: (6, 0)
torch.cuda.get_arch_list = lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
"""
USER, KEY = "kaggle-user", "kgl-" + secrets.token_hex(12)  # made at run time: no key is written in any tracked file
FAST = ["--accelerator", "none"]  # CPU kernels, as a user without GPU quota chooses; nothing is sped up
GPU_SESSIONS_REFUSED = "Maximum batch GPU session count of {limit} reached."
SESSION_LIMIT_S = 12 * 3600
WALL_FAILURE = "Your notebook was stopped because it exceeded the maximum execution time"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def archive_stem(name: str, data: bytes) -> str | None:
    """The folder an archive unpacks into (its name without the extension), or None for a file left as it is."""
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    if zipfile.is_zipfile(io.BytesIO(data)) or _is_tar(data):
        return name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name + "_unpacked"
    return None


def _is_tar(data: bytes) -> bool:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*"):
            return True
    except (tarfile.TarError, EOFError, OSError):
        return False


def unpack_into(folder: Path, data: bytes) -> None:
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.extractall(folder)
        return
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        archive.extractall(folder, filter="data")


class Kernel:
    def __init__(self, owner: str, slug: str, body: dict, version: int, previous: Kernel | None):
        self.owner, self.slug, self.body, self.version = owner, slug, body, version
        self.status, self.failure = "QUEUED", ""
        self.log: list[dict] = []  # this version's, as it grows
        self.outputs: dict[str, bytes] = previous.outputs if previous else {}  # the latest finished version's
        self.listed_log: list[dict] = previous.listed_log if previous else []  # ... and its log
        self.process: subprocess.Popen | None = None
        self.runner: threading.Thread | None = None  # the server's thread that runs the session
        self.started = time.monotonic()
        self.running_since: float | None = None
        self.ended: float | None = None
        self.walled = False
        self.gpu = bool(body.get("enableGpu"))
        self.input_listing: list[str] = []  # what /kaggle/input held (directories end in /), kept once the session's disk is gone

    @property
    def active(self) -> bool:
        return self.status in ("QUEUED", "RUNNING")


class FakeKaggle(_Server):
    def __init__(self, username: str, key: str, workdir: Path | None = None, image: Path | None = None, index_url: str = "",
                 hide: tuple[Path, ...] = (CHECKOUT,),
                 page_cap: int = 3, layout: str = "current", unpack: bool = True, max_gpu_sessions: int = 2, max_files: int = 50):
        self.auth = "Basic " + base64.b64encode(f"{username}:{key}".encode()).decode()
        self.workdir, self.page_cap, self.layout, self.unpack = workdir, page_cap, layout, unpack
        self.image, self.index_url = image, index_url  # the kernels' Python image (a venv) and their package index (None: no kernels)
        self.hide = hide  # what a kernel does not see of this machine: this checkout, the tests' inputs
        self.max_gpu_sessions, self.max_files = max_gpu_sessions, max_files
        self.kernel_outputs: dict[tuple[str, str], dict[str, bytes]] = {}
        self.datasets: dict[tuple[str, str], dict[str, bytes]] = {}
        self.models: dict[tuple[str, str, str, str, int], dict[str, bytes]] = {}  # (owner, model, framework, variation, version)
        self.dataset_polls: dict[tuple[str, str], list[str]] = {}  # status answers still to give before READY
        self.dataset_ready_at: dict[tuple[str, str], tuple[float, float]] = {}  # (visible at, ready at), monotonic
        self.kernels: dict[tuple[str, str], Kernel] = {}
        self.sessions: list[Kernel] = []  # every kernel version ever run, in push order
        self.blobs: dict[str, dict] = {}
        self.bytes_received = 0
        self.uploaded: list[tuple[str, bytes]] = []  # every completed blob and kernel script
        self.hidden_polls, self.processing_polls = 0, 0
        self.hidden_s, self.processing_s, self.queue_s = 1.0, 2.0, 1.0
        self.stopping = False
        self.session_limit_s: float = SESSION_LIMIT_S
        self.keep_at_wall = False
        self.slow_start: dict[str, float] = {}
        self.stream_faults: dict[str, list] = {}
        self.answers_quota = True
        self.faults: dict[str, list] = {}
        self.blob_faults: dict[str, list] = {}
        self.upload_faults: dict[str, list] = {}
        self.broken: set[str] = set()
        self.kernel_env: dict[str, str] = {}
        self.outside_gpu_sessions = 0  # the account's GPU sessions started elsewhere (the web editor): they count too
        self.requests: list[tuple[str, dict]] = []
        self.refused_pushes = 0
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body, content_type="application/json", headers=None):
                data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _drop(self):
                self.close_connection = True
                self.connection.shutdown(2)

            def do_GET(self):
                if self.path.startswith(LOG_STREAM):
                    return fake._stream_log(self, *self.path[len(LOG_STREAM):].split("/", 1))
                _, _, kind, owner, slug, name = self.path.split("/", 5)
                if name in fake.broken:
                    return self._send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", "application/xml")
                if kind == "kernel":
                    kernel = fake.kernels.get((owner, slug))
                    files = kernel.outputs if kernel else fake.kernel_outputs.get((owner, slug), {})
                else:
                    files = fake.datasets.get((owner, slug), {})
                if name not in files:
                    return self._send(404, {"code": 404, "message": "no such blob"})
                data, start = files[name], 0
                fault = fake._take(fake.blob_faults, name)
                if fault == "reset":
                    return self._drop()
                if isinstance(fault, int):
                    return self._send(fault, {"code": fault, "message": f"injected {fault}"})
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if ranged and int(ranged.group(1)) < len(data):
                    start = int(ranged.group(1))
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if fault == "truncate":  # the body stops halfway, under a Content-Length promising all of it
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    return self._drop()
                self.wfile.write(data[start:])

            def do_PUT(self):  # the resumable blob upload the kaggle package speaks (Google's protocol)
                token = self.path.rsplit("/", 1)[-1]
                length = int(self.headers.get("Content-Length") or 0)
                blob = fake.blobs.get(token)
                if blob is None:
                    self.rfile.read(length)
                    return self._send(404, {"code": 404, "message": "upload expired"})
                content_range = self.headers.get("Content-Range", "")
                if content_range.startswith("bytes */"):  # where does the upload stand?
                    if blob["complete"]:
                        return self._send(200, {})
                    held = len(blob["data"])
                    return self._send(308, b"", headers={"Range": f"bytes=0-{held - 1}"} if held else None)
                start = int(re.match(r"bytes (\d+)-", content_range).group(1)) if content_range else 0
                if start != len(blob["data"]) and start != 0:
                    self.rfile.read(length)
                    return self._send(400, {"code": 400, "message": f"upload continues at {len(blob['data'])}, not {start}"})
                if fake._take(fake.upload_faults, blob["name"]) == "drop":  # half of it arrives, then the line drops
                    blob["data"] = blob["data"][:start] + self.rfile.read(length // 2)
                    return self._drop()
                blob["data"] = blob["data"][:start] + self.rfile.read(length)
                if len(blob["data"]) != blob["size"]:
                    return self._send(308, b"", headers={"Range": f"bytes=0-{len(blob['data']) - 1}"})
                blob["complete"] = True
                fake.bytes_received += blob["size"]
                fake.uploaded.append((blob["name"], blob["data"]))
                self._send(200, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                method = self.path.rsplit("/", 1)[-1]
                fake.requests.append((method, body))
                if self.headers.get("Authorization") != fake.auth:
                    return self._send(401, {"code": 401, "message": "Unauthenticated"})
                planned = fake._take(fake.faults, method)
                if planned == "drop":
                    return self._drop()
                if planned is not None:
                    return self._send(planned, {"code": planned, "message": f"injected {planned}"},
                                      headers={"Retry-After": "0"} if planned == 429 else None)
                handler = getattr(fake, f"_{method}", None)
                if handler is None:
                    return self._send(404, {"code": 404, "message": f"unknown method {method}"})
                with fake._lock:
                    status, reply, headers = handler(body)
                self._send(status, reply, headers=headers)

        self.start(Handler)

    def _stream_log(self, handler: BaseHTTPRequestHandler, owner: str, slug: str) -> None:
        """``GET /api/v1/kernels/logs/stream/OWNER/SLUG``: while the session runs, server-sent events of its log lines as
        they come, then END_OF_LOG; once it ended, its whole log as a JSON list."""
        if handler.headers.get("Authorization") != self.auth:
            return handler._send(401, {"code": 401, "message": "Unauthenticated"})
        kernel = self.kernels.get((owner, slug))
        if kernel is None:
            return handler._send(404, {"code": 404, "message": "Kernel not found"})
        if not kernel.active:
            return handler._send(200, kernel.log)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.close_connection = True

        def chunk(data: bytes) -> None:
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        sent, fault = 0, self._take(self.stream_faults, slug)
        try:
            while True:
                done = not kernel.active
                for event in kernel.log[sent:]:
                    chunk(f"data: {json.dumps(event)}\n\n".encode())
                    sent += 1
                    if fault == "drop":  # the stream breaks after its first event, mid-body
                        return handler._drop()
                if done:
                    chunk(b"data: END_OF_LOG\n\n")
                    handler.wfile.write(b"0\r\n\r\n")
                    return
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _dataset_state(self, key: tuple[str, str], poll: bool = False) -> str:
        """``hidden`` (404), a processing state, or READY: the polls still planned first, then the version's clock."""
        pending = self.dataset_polls.get(key)
        if pending:
            return pending.pop(0) if poll else pending[0]
        visible_at, ready_at = self.dataset_ready_at.get(key, (0.0, 0.0))
        now = time.monotonic()
        return "hidden" if now < visible_at else "BLOBS_RECEIVED" if now < ready_at else "READY"

    @staticmethod
    def _take(table: dict[str, list], name: str):
        """The next fault planned for ``name`` (an exact name, or a key contained in it), if any."""
        for key, planned in table.items():
            if planned and (key == name or key in name):
                return planned.pop(0)
        return None

    def stop(self) -> None:
        self.stopping = True  # a kernel still queued never starts
        for kernel in self.sessions:  # each kernel leads a process group: its job's processes go with it
            if kernel.process and kernel.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(kernel.process.pid, signal.SIGKILL)
        for kernel in self.sessions:  # each session ends (its disk cleared) before the test's directory goes
            if kernel.runner is not None:
                kernel.runner.join(timeout=30)
        super().stop()

    def gpu_sessions_at_once(self) -> int:
        """The most GPU sessions that ever ran at the same time."""
        events = sorted([(k.started, 1) for k in self.sessions if k.gpu] + [(k.ended or 1e18, -1) for k in self.sessions if k.gpu],
                        key=lambda e: (e[0], e[1]))
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        return peak

    # -- listings ------------------------------------------------------------------------------
    def _page(self, names: list[str], body: dict) -> tuple[list[str], str]:
        size = min(int(body.get("pageSize") or self.page_cap), self.page_cap)
        start = int(body.get("pageToken") or 0)
        following = start + size
        return names[start:following], (str(following) if following < len(names) else "")

    def _ListKernelSessionOutput(self, body):
        key = (body["userName"], body["kernelSlug"])
        kernel = self.kernels.get(key)
        outputs = kernel.outputs if kernel else self.kernel_outputs.get(key)
        if outputs is None:
            return 404, {"code": 404, "message": "Kernel not found"}, None
        names, token = self._page(sorted(outputs), body)
        files = [{"fileName": n, "url": f"{self.endpoint}/blob/kernel/{key[0]}/{key[1]}/{n}"} for n in names]
        return 200, {"files": files, "log": json.dumps(kernel.listed_log) if kernel else "", "nextPageToken": token}, None

    def _ListDatasetFiles(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets:
            return 404, {"code": 404, "message": "Dataset not found"}, None
        names, token = self._page(sorted(self.datasets[key]), body)
        files = [{"name": n, "totalBytes": len(self.datasets[key][n]), "creationDate": "2026-11-01T00:00:00Z"} for n in names]
        return 200, {"datasetFiles": files, "nextPageToken": token}, None

    def _DownloadDataset(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets or body.get("fileName") not in self.datasets[key] or self._dataset_state(key) != "READY":
            return 404, {"code": 404, "message": "Dataset file not found"}, None
        location = f"{self.endpoint}/blob/dataset/{key[0]}/{key[1]}/{body['fileName']}"
        return 302, b"", {"Location": location}

    # -- datasets ------------------------------------------------------------------------------
    def _StartBlobUpload(self, body):
        token = f"blob-{next(self._tokens)}"
        self.blobs[token] = {"name": body["name"], "size": int(body.get("contentLength") or 0), "data": b"", "complete": False}
        return 200, {"token": token, "createUrl": f"{self.endpoint}/upload/{token}"}, None

    def _new_version(self, key, entries) -> tuple[int, dict, None]:
        blobs = [self.blobs.get(e.get("token")) for e in entries]
        if any(b is None or not b["complete"] for b in blobs):
            return 200, {"status": "error", "error": "an uploaded file is missing (blob not received)"}, None
        if len(blobs) > self.max_files:
            return 200, {"status": "error", "error": f"A dataset version may hold at most {self.max_files} top-level files; "
                                                      f"this one has {len(blobs)}. Use archives or folders"}, None
        self.datasets[key] = {b["name"]: b["data"] for b in blobs}
        self.dataset_polls[key] = ["hidden"] * self.hidden_polls + ["BLOBS_RECEIVED"] * self.processing_polls
        now = time.monotonic()
        self.dataset_ready_at[key] = (now + self.hidden_s, now + self.hidden_s + self.processing_s)
        return 200, {"ref": f"{key[0]}/{key[1]}", "url": f"{self.endpoint}/{key[0]}/{key[1]}", "status": "ok", "error": ""}, None

    def _CreateDataset(self, body):
        key = (body["ownerSlug"], body["slug"])
        if key in self.datasets:
            return 200, {"status": "error", "error": "The requested title is already in use"}, None
        return self._new_version(key, body.get("files") or [])

    def _CreateDatasetVersion(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets:
            return 404, {"code": 404, "message": "Dataset not found"}, None
        if self._dataset_state(key) != "READY":  # Kaggle's answer while the previous version is processed: a misleading 403
            return 403, {"code": 403, "message": "Permission 'datasets.versions.create' was denied"}, None
        return self._new_version(key, (body.get("body") or {}).get("files") or [])

    def _GetDatasetStatus(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets:
            return 404, {"code": 404, "message": "Dataset not found"}, None
        answer = self._dataset_state(key, poll=True)
        if answer == "hidden":
            return 404, {"code": 404, "message": "Dataset not found"}, None
        return 200, {"status": answer}, None

    # -- models --------------------------------------------------------------------------------
    def add_model(self, owner: str, model: str, framework: str, variation: str, files: dict[str, bytes]) -> int:
        """A new version of a model variation holding ``files`` (as ``kaggle models variations versions create``
        leaves one); returns its version number."""
        key = (owner, model, framework_name(framework), variation)
        version = max((k[4] for k in self.models if k[:4] == key), default=0) + 1
        self.models[(*key, version)] = dict(files)
        return version

    def _model_source(self, source: str) -> tuple[str, str, str, str, int] | None:
        parts = source.split("/")
        if len(parts) != 5 or not parts[4].isdigit():
            return None
        key = (parts[0], parts[1], framework_name(parts[2]), parts[3], int(parts[4]))
        return key if key in self.models else None

    def _GetModelInstance(self, body):
        key = (body.get("ownerSlug"), body.get("modelSlug"), framework_name(str(body.get("framework", ""))), body.get("instanceSlug"))
        versions = [k[4] for k in self.models if k[:4] == key]
        if not versions:
            return 404, {"code": 404, "message": "Model instance not found"}, None
        return 200, {"slug": key[3], "framework": body.get("framework"), "versionNumber": max(versions)}, None

    # -- kernels -------------------------------------------------------------------------------
    def _SaveKernel(self, body):
        owner, slug = body["slug"].split("/")
        for source in body.get("datasetDataSources") or []:
            key = tuple(source.split("/"))
            if key not in self.datasets:
                return 200, {"error": f"dataset {source} does not exist"}, None
            if self._dataset_state(key) != "READY":
                return 200, {"error": f"dataset {source} is still being processed; try again when it is ready"}, None
        for source in body.get("kernelDataSources") or []:
            if tuple(source.split("/")) not in self.kernels:
                return 200, {"invalidKernelSources": [source]}, None
        for source in body.get("modelDataSources") or []:
            if self._model_source(source) is None:
                return 200, {"invalidModelSources": [source]}, None
        if body.get("enableGpu") and sum(k.gpu and k.active for k in self.sessions) + self.outside_gpu_sessions >= self.max_gpu_sessions:
            self.refused_pushes += 1
            return 200, {"error": GPU_SESSIONS_REFUSED.format(limit=self.max_gpu_sessions)}, None
        if self.image is None or self.workdir is None:
            return 200, {"error": "this test server stores datasets and outputs only: it has no image to run kernels in"}, None
        previous = self.kernels.get((owner, slug))
        kernel = Kernel(owner, slug, body, previous.version + 1 if previous else 1, previous)
        self.kernels[(owner, slug)] = kernel
        self.sessions.append(kernel)
        self.uploaded.append((f"{slug}/entry.py", body["text"].encode()))
        kernel.runner = threading.Thread(target=self._execute, args=(kernel,), daemon=True)
        kernel.runner.start()
        return 200, {"ref": f"/code/{owner}/{slug}", "url": f"{self.endpoint}/code/{owner}/{slug}", "versionNumber": kernel.version,
                     "error": None}, None

    def _GetAcceleratorQuotaStatistics(self, body):
        if not self.answers_quota:
            return 404, {"code": 404, "message": "unknown method GetAcceleratorQuotaStatistics"}, None
        used = sum(((k.ended or time.monotonic()) - k.running_since) for k in self.sessions if k.gpu and k.running_since)
        return 200, {"gpuQuota": {"timeUsed": f"{used:.3f}s", "totalTimeAllowed": f"{30 * 3600}s"}}, None

    def _GetKernelSessionStatus(self, body):
        kernel = self.kernels.get((body["userName"], body["kernelSlug"]))
        if kernel is None:
            return 404, {"code": 404, "message": "Kernel not found"}, None
        return 200, {"status": kernel.status, "failureMessage": kernel.failure}, None

    def _mount(self, target: Path, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            stem = archive_stem(name, data) if self.unpack else None
            if stem is None:
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                (target / name).write_bytes(data)
            else:
                (target / stem).mkdir(parents=True, exist_ok=True)
                unpack_into(target / stem, data)

    def _execute(self, kernel: Kernel) -> None:
        root = self.workdir / f"{kernel.slug}-v{kernel.version}" / "kaggle"
        inputs, working, home = root / "input", root / "working", root.parent / "home"
        for path in (inputs, working, home):
            path.mkdir(parents=True)
        sources = [("datasets", s, self.datasets[tuple(s.split("/"))]) for s in kernel.body.get("datasetDataSources") or []]
        sources += [("notebooks", s, self.kernels[tuple(s.split("/"))].outputs) for s in kernel.body.get("kernelDataSources") or []]
        for kind, source, files in sources:
            owner, slug = source.split("/")
            self._mount(inputs / kind / owner / slug if self.layout == "current" else inputs / slug, files)
        for source in kernel.body.get("modelDataSources") or []:
            key = self._model_source(source)
            assert key is not None  # checked at the push
            owner, *handle = map(str, key)
            self._mount(inputs.joinpath("models", owner, *handle) if self.layout == "current" else inputs.joinpath(*handle), self.models[key])
        for path in [inputs, *inputs.rglob("*")]:  # /kaggle/input is read-only
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        script = root.parent / "entry.py"
        script.write_text(kernel.body["text"])
        scratch = tempfile.mkdtemp(prefix="kgl", dir="/tmp")  # each kernel's own /tmp, short enough for Ray's socket paths
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "STREAMAPPROX_KAGGLE_ROOT": str(root), "TMPDIR": scratch, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
               "PIP_FIND_LINKS": self.index_url, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **self.kernel_env}
        if os.environ.get("STREAMAPPROX_CACHE"):  # the image's cache of synthetic shards: only saves time
            env["STREAMAPPROX_CACHE"] = os.environ["STREAMAPPROX_CACHE"]
        p100 = kernel.body.get("machineShape") == "NvidiaTeslaP100"
        if p100:
            site = root.parent / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(P100_SITECUSTOMIZE)
            env["PYTHONPATH"] = str(site)
        # Kaggle's image, as an overlay of this kernel's own (what it installs is gone with it); no network without internet
        layer = root.parent / "image-layer"
        (layer / "upper").mkdir(parents=True)
        (layer / "work").mkdir()
        keep = (root.parent, self.image, *([Path(env["STREAMAPPROX_CACHE"])] if "STREAMAPPROX_CACHE" in env else []))
        boot = separate_machine_mounts(self.hide, keep, own_python=False)
        boot += f" && mount -t overlay overlay -o lowerdir={self.image},upperdir={layer}/upper,workdir={layer}/work {self.image}"
        if p100:  # its device node, on a /dev of this kernel's own (and a /dev/shm of its own, as a container has)
            (layer / "dev-upper").mkdir()
            (layer / "dev-work").mkdir()
            boot += (f" && mount -t overlay overlay -o lowerdir=/dev,upperdir={layer}/dev-upper,workdir={layer}/dev-work /dev"
                     " && mknod /dev/nvidia0 c 195 0 && mount -t tmpfs tmpfs /dev/shm")
        internet = bool(kernel.body.get("enableInternet"))
        if not internet:
            boot += " && ip link set lo up"
        delay = next((seconds for name, seconds in self.slow_start.items() if name in kernel.slug), 0.0)
        command = ["unshare", "--mount", "--propagation", "private", *([] if internet else ["--net"]), "sh", "-c",
                   f"{boot} && sleep {delay} && exec {self.image}/bin/python {script}"]
        time.sleep(self.queue_s)
        if self.stopping:
            return
        kernel.status, kernel.running_since = "RUNNING", time.monotonic()
        kernel.process = subprocess.Popen(command, cwd=working, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True)
        wall = threading.Timer(self.session_limit_s, self._wall, args=(kernel,))
        wall.start()
        assert kernel.process.stdout is not None
        for line in kernel.process.stdout:
            kernel.log.append({"stream_name": "stdout", "time": round(time.monotonic() - kernel.started, 3), "data": line})
        code = kernel.process.wait()
        wall.cancel()
        shutil.rmtree(scratch, ignore_errors=True)
        if not kernel.walled or self.keep_at_wall:
            kernel.outputs = {p.relative_to(working).as_posix(): p.read_bytes() for p in sorted(working.rglob("*")) if p.is_file()}
        else:
            kernel.outputs = {}
        kernel.input_listing = sorted(p.relative_to(inputs).as_posix() + ("/" if p.is_dir() else "") for p in inputs.rglob("*"))
        for path in [inputs, *inputs.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(root.parent, ignore_errors=True)  # a session's disk is gone when it ends; what it saved is in outputs
        kernel.failure = WALL_FAILURE if kernel.walled else "" if code == 0 else f"Your notebook tried to run but exited with code {code}"
        kernel.listed_log = kernel.log
        kernel.ended = time.monotonic()
        kernel.status = "COMPLETE" if code == 0 and not kernel.walled else "ERROR"

    @staticmethod
    def _wall(kernel: Kernel) -> None:
        """The session limit: the kernel is stopped, whatever it was doing."""
        if kernel.process and kernel.process.poll() is None:
            kernel.walled = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(kernel.process.pid, signal.SIGKILL)


def framework_name(framework: str) -> str:
    """A model framework as Kaggle's mount paths spell it (``pytorch``), from a URL's (``pyTorch``) or the API's
    (``MODEL_FRAMEWORK_PY_TORCH``) spelling."""
    return framework.upper().removeprefix("MODEL_FRAMEWORK_").replace("_", "").replace("-", "").lower()


def packed(files: dict[str, bytes]) -> dict[str, int]:
    """Name -> size of every file inside the packs of a dataset (``launch.carry``'s format, read here independently)."""
    members = {}
    for name, data in files.items():
        if name.endswith(".pack"):
            head, _, rest = data.partition(b"\n")
            index = json.loads(rest[: int(head.rsplit(b" ", 1)[1])])
            members.update({entry["name"]: entry["size"] for entry in index["files"]})
    return members


LOG_STREAM = "/api/v1/kernels/logs/stream/"


def kaggle_env(fake: FakeKaggle, username: str, key: str, config_dir: Path) -> dict:
    """Environment for a process that should talk to ``fake`` with the kaggle package."""
    return {**os.environ, "STREAMAPPROX_KAGGLE_ENDPOINT": fake.endpoint, "KAGGLE_USERNAME": username, "KAGGLE_KEY": key,
            "KAGGLE_CONFIG_DIR": str(config_dir), "STREAMAPPROX_KAGGLE_BACKOFF_S": "0.05", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": fake.index_url}


def launch_kaggle(kaggle: FakeKaggle, cwd: Path, *args: str, env_extra: dict | None = None, timeout: float = 300):
    """The real ``launch`` CLI as a user runs it, talking to ``kaggle`` (``env_extra`` values of None unset a variable)."""
    from conftest import launch_command

    env = {**kaggle_env(kaggle, USER, KEY, cwd / "kaggle-config"), **(env_extra or {})}
    env = {name: value for name, value in env.items() if value is not None}
    return subprocess.run(launch_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def only_run_dir(cwd: Path) -> Path:
    runs = [p for p in (cwd / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]
