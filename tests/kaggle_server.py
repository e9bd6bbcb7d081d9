"""A Kaggle API server on loopback for the tests. It speaks what the real ``kaggle`` package sends
(``POST /api/v1/<Service>/<Method>``, camelCase JSON, basic auth, resumable blob uploads, paged
listings capped like the real service) and **executes** pushed script kernels in a sandbox laid out
like Kaggle: ``<root>/input/datasets/<owner>/<slug>`` (or ``<root>/input/<slug>`` with
``layout="legacy"``), read-only, and ``<root>/working``, the output, with the entry told the root
through ``STREAMAPPROX_KAGGLE_ROOT``. The kernel process gets none of the caller's credentials.

Knobs for failure tests: ``faults[method]`` (HTTP statuses to answer, in order), ``hidden_polls`` /
``processing_polls`` (a new dataset version answers 404, then a processing state, for that many
status polls; pushing a kernel that mounts it meanwhile is refused), ``broken`` (blob names that
answer 403), ``fake_gpu`` per machine shape (a sitecustomize that makes torch see that GPU).
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from servers import _Server

P100_SITECUSTOMIZE = """import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.get_device_name = lambda index=0: "Tesla P100-PCIE-16GB"
torch.cuda.get_device_capability = lambda index=0: (6, 0)
torch.cuda.get_arch_list = lambda: ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
"""


class Kernel:
    def __init__(self, owner: str, slug: str, body: dict, version: int):
        self.owner, self.slug, self.body, self.version = owner, slug, body, version
        self.status, self.failure = "QUEUED", ""
        self.log: list[dict] = []
        self.outputs: dict[str, bytes] = {}
        self.process: subprocess.Popen | None = None
        self.started = time.monotonic()


class FakeKaggle(_Server):
    def __init__(self, username: str, key: str, workdir: Path | None = None, page_cap: int = 3, layout: str = "current"):
        self.auth = "Basic " + base64.b64encode(f"{username}:{key}".encode()).decode()
        self.workdir, self.page_cap, self.layout = workdir, page_cap, layout
        self.kernel_outputs: dict[tuple[str, str], dict[str, bytes]] = {}
        self.datasets: dict[tuple[str, str], dict[str, bytes]] = {}
        self.dataset_polls: dict[tuple[str, str], list[str]] = {}  # status answers still to give before READY
        self.kernels: dict[tuple[str, str], Kernel] = {}
        self.blobs: dict[str, dict] = {}
        self.bytes_received = 0
        self.uploaded: list[tuple[str, bytes]] = []  # every blob and kernel script that arrived
        self.hidden_polls, self.processing_polls = 0, 0
        self.faults: dict[str, list[int]] = {}
        self.broken: set[str] = set()
        self.requests: list[tuple[str, dict]] = []
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

            def do_GET(self):
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
                self._send(200, files[name], "application/octet-stream")

            def do_PUT(self):  # resumable blob upload (Google-style): the whole body in one PUT
                token = self.path.rsplit("/", 1)[-1]
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if token not in fake.blobs:
                    return self._send(404, {"code": 404, "message": "upload expired"})
                fake.blobs[token]["data"] = data
                fake.bytes_received += len(data)
                fake.uploaded.append((fake.blobs[token]["name"], data))
                self._send(200, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                method = self.path.rsplit("/", 1)[-1]
                fake.requests.append((method, body))
                if self.headers.get("Authorization") != fake.auth:
                    return self._send(401, {"code": 401, "message": "Unauthenticated"})
                planned = fake.faults.get(method)
                if planned:
                    status = planned.pop(0)
                    return self._send(status, {"code": status, "message": f"injected {status}"}, headers={"Retry-After": "0"} if status == 429 else None)
                handler = getattr(fake, f"_{method}", None)
                if handler is None:
                    return self._send(404, {"code": 404, "message": f"unknown method {method}"})
                with fake._lock:
                    status, reply, headers = handler(body)
                self._send(status, reply, headers=headers)

        self.start(Handler)

    def stop(self) -> None:
        for kernel in self.kernels.values():
            if kernel.process and kernel.process.poll() is None:
                kernel.process.kill()
        super().stop()

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
        return 200, {"files": files, "log": json.dumps(kernel.log) if kernel else "", "nextPageToken": token}, None

    def _ListDatasetFiles(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets:
            return 404, {"code": 404, "message": "Dataset not found"}, None
        names, token = self._page(sorted(self.datasets[key]), body)
        files = [{"name": n, "totalBytes": len(self.datasets[key][n]), "creationDate": "2026-11-01T00:00:00Z"} for n in names]
        return 200, {"datasetFiles": files, "nextPageToken": token}, None

    def _DownloadDataset(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets or body.get("fileName") not in self.datasets[key] or self.dataset_polls.get(key):
            return 404, {"code": 404, "message": "Dataset file not found"}, None
        location = f"{self.endpoint}/blob/dataset/{key[0]}/{key[1]}/{body['fileName']}"
        return 302, b"", {"Location": location}

    # -- datasets ------------------------------------------------------------------------------
    def _StartBlobUpload(self, body):
        token = f"blob-{next(self._tokens)}"
        self.blobs[token] = {"name": body["name"], "size": int(body.get("contentLength") or 0), "data": None}
        return 200, {"token": token, "createUrl": f"{self.endpoint}/upload/{token}"}, None

    def _files_of(self, entries: list[dict]) -> dict[str, bytes] | None:
        blobs = [self.blobs.get(e.get("token")) for e in entries]
        if any(b is None or b["data"] is None for b in blobs):
            return None
        return {b["name"]: b["data"] for b in blobs}

    def _new_version(self, key, entries) -> tuple[int, dict, None]:
        files = self._files_of(entries)
        if files is None:
            return 200, {"status": "error", "error": "an uploaded file is missing (blob not received)"}, None
        self.datasets[key] = files
        self.dataset_polls[key] = ["hidden"] * self.hidden_polls + ["BLOBS_RECEIVED"] * self.processing_polls
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
        if self.dataset_polls.get(key):
            return 200, {"status": "error", "error": "A previous version of this dataset is still being processed"}, None
        return self._new_version(key, (body.get("body") or {}).get("files") or [])

    def _GetDatasetStatus(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets:
            return 404, {"code": 404, "message": "Dataset not found"}, None
        pending = self.dataset_polls.get(key)
        answer = pending.pop(0) if pending else "READY"
        if answer == "hidden":
            return 404, {"code": 404, "message": "Dataset not found"}, None
        return 200, {"status": answer}, None

    # -- kernels -------------------------------------------------------------------------------
    def _SaveKernel(self, body):
        owner, slug = body["slug"].split("/")
        for source in body.get("datasetDataSources") or []:
            key = tuple(source.split("/"))
            if key not in self.datasets:
                return 200, {"error": f"dataset {source} does not exist"}, None
            if self.dataset_polls.get(key):
                return 200, {"error": f"dataset {source} is still being processed; try again when it is ready"}, None
        for source in body.get("kernelDataSources") or []:
            if tuple(source.split("/")) not in self.kernels:
                return 200, {"invalidKernelSources": [source]}, None
        previous = self.kernels.get((owner, slug))
        kernel = Kernel(owner, slug, body, previous.version + 1 if previous else 1)
        self.kernels[(owner, slug)] = kernel
        self.uploaded.append((f"{slug}/entry.py", body["text"].encode()))
        threading.Thread(target=self._execute, args=(kernel,), daemon=True).start()
        return 200, {"ref": f"/code/{owner}/{slug}", "url": f"{self.endpoint}/code/{owner}/{slug}", "versionNumber": kernel.version,
                     "error": None}, None

    def _GetKernelSessionStatus(self, body):
        kernel = self.kernels.get((body["userName"], body["kernelSlug"]))
        if kernel is None:
            return 404, {"code": 404, "message": "Kernel not found"}, None
        return 200, {"status": kernel.status, "failureMessage": kernel.failure}, None

    def _execute(self, kernel: Kernel) -> None:
        root = self.workdir / f"{kernel.slug}-v{kernel.version}" / "kaggle"
        inputs, working, home = root / "input", root / "working", root.parent / "home"
        for path in (inputs, working, home):
            path.mkdir(parents=True)
        sources = [("datasets", s, self.datasets[tuple(s.split("/"))]) for s in kernel.body.get("datasetDataSources") or []]
        sources += [("notebooks", s, self.kernels[tuple(s.split("/"))].outputs) for s in kernel.body.get("kernelDataSources") or []]
        for kind, source, files in sources:
            owner, slug = source.split("/")
            target = inputs / kind / owner / slug if self.layout == "current" else inputs / slug
            for name, data in files.items():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                (target / name).write_bytes(data)
        for path in [inputs, *inputs.rglob("*")]:  # /kaggle/input is read-only
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        script = root.parent / "entry.py"
        script.write_text(kernel.body["text"])
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "STREAMAPPROX_KAGGLE_ROOT": str(root)}
        if os.environ.get("STREAMAPPROX_CACHE"):  # the image's cache of synthetic shards: only saves time
            env["STREAMAPPROX_CACHE"] = os.environ["STREAMAPPROX_CACHE"]
        if kernel.body.get("machineShape") == "NvidiaTeslaP100":
            site = root.parent / "site"
            site.mkdir()
            (site / "sitecustomize.py").write_text(P100_SITECUSTOMIZE)
            env["PYTHONPATH"] = str(site)
        kernel.status = "RUNNING"
        kernel.process = subprocess.Popen([sys.executable, str(script)], cwd=working, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
        for line in kernel.process.stdout:
            kernel.log.append({"stream_name": "stdout", "time": round(time.monotonic() - kernel.started, 3), "data": line})
        code = kernel.process.wait()
        kernel.outputs = {p.relative_to(working).as_posix(): p.read_bytes() for p in sorted(working.rglob("*")) if p.is_file()}
        for path in [inputs, *inputs.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        kernel.failure = "" if code == 0 else f"Your notebook tried to run but exited with code {code}"
        kernel.status = "COMPLETE" if code == 0 else "ERROR"


def kaggle_env(fake: FakeKaggle, username: str, key: str, config_dir: Path) -> dict:
    """Environment for a process that should talk to ``fake`` with the kaggle package."""
    return {**os.environ, "STREAMAPPROX_KAGGLE_ENDPOINT": fake.endpoint, "KAGGLE_USERNAME": username, "KAGGLE_KEY": key,
            "KAGGLE_CONFIG_DIR": str(config_dir), "STREAMAPPROX_KAGGLE_BACKOFF_S": "0.05", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}
