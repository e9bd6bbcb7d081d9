"""Real servers on loopback for the sync tests: moto's S3 server (a subprocess), a forwarding
proxy that can slow or corrupt what passes through it, and a fake Kaggle API server."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``moto_server`` on 127.0.0.1, started and stopped by the fixture that owns it."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start within 30 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class _Server:
    def start(self, handler) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        getattr(self, "stop_holding", threading.Event()).set()
        self.server.shutdown()
        self.server.server_close()


class Proxy(_Server):
    """Forwards every request to ``upstream``. ``hold_parts_above = N`` stalls multipart part
    uploads numbered above N (they are never forwarded: a sync stuck mid-upload, ready to be
    killed); ``corrupt`` (a key substring) flips a byte in matching GET bodies. Counts the part
    uploads it forwards."""

    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.hold_parts_above: int | None = None
        self.corrupt: str | None = None
        self.part_uploads = 0
        self.stop_holding = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and "partNumber=" in self.path:
                    number = int(self.path.split("partNumber=")[1].split("&")[0])
                    if proxy.hold_parts_above is not None and number > proxy.hold_parts_above:
                        proxy.stop_holding.wait(60)
                        self.close_connection = True
                        return
                    proxy.part_uploads += 1
                connection = HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                connection.request(self.command, self.path, body=body, headers=headers)
                reply = connection.getresponse()
                data = reply.read()
                if self.command == "GET" and proxy.corrupt and proxy.corrupt in self.path and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.start(Handler)


class FakeKaggle(_Server):
    """Speaks the Kaggle HTTP API (``POST /api/v1/<Service>/<Method>``, camelCase JSON) for kernel
    outputs and dataset files, with pages capped at ``page_cap`` items like the real service, basic
    auth checked, and signed-URL-like blob downloads. ``broken`` names blobs that answer 403."""

    def __init__(self, username: str, key: str, page_cap: int = 3):
        self.auth = "Basic " + base64.b64encode(f"{username}:{key}".encode()).decode()
        self.page_cap = page_cap
        self.kernel_outputs: dict[tuple[str, str], dict[str, bytes]] = {}
        self.datasets: dict[tuple[str, str], dict[str, bytes]] = {}
        self.broken: set[str] = set()
        self.requests: list[tuple[str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
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
                files = (fake.kernel_outputs if kind == "kernel" else fake.datasets).get((owner, slug), {})
                if name not in files:
                    return self._send(404, {"code": 404, "message": "no such blob"})
                self._send(200, files[name], "application/octet-stream")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                method = self.path.rsplit("/", 1)[-1]
                fake.requests.append((method, body))
                if self.headers.get("Authorization") != fake.auth:
                    return self._send(401, {"code": 401, "message": "Unauthenticated"})
                handler = getattr(fake, f"_{method}", None)
                if handler is None:
                    return self._send(404, {"code": 404, "message": f"unknown method {method}"})
                status, reply, headers = handler(body)
                self._send(status, reply, headers=headers)

        self.start(Handler)

    def _page(self, names: list[str], body: dict) -> tuple[list[str], str]:
        size = min(int(body.get("pageSize") or self.page_cap), self.page_cap)
        start = int(body.get("pageToken") or 0)
        following = start + size
        return names[start:following], (str(following) if following < len(names) else "")

    def _ListKernelSessionOutput(self, body):
        key = (body["userName"], body["kernelSlug"])
        if key not in self.kernel_outputs:
            return 404, {"code": 404, "message": "Kernel not found"}, None
        names, token = self._page(sorted(self.kernel_outputs[key]), body)
        files = [{"fileName": n, "url": f"{self.endpoint}/blob/kernel/{key[0]}/{key[1]}/{n}"} for n in names]
        return 200, {"files": files, "log": "", "nextPageToken": token}, None

    def _ListDatasetFiles(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets:
            return 404, {"code": 404, "message": "Dataset not found"}, None
        names, token = self._page(sorted(self.datasets[key]), body)
        files = [{"name": n, "totalBytes": len(self.datasets[key][n]), "creationDate": "2026-11-01T00:00:00Z"} for n in names]
        return 200, {"datasetFiles": files, "nextPageToken": token}, None

    def _DownloadDataset(self, body):
        key = (body["ownerSlug"], body["datasetSlug"])
        if key not in self.datasets or body.get("fileName") not in self.datasets[key]:
            return 404, {"code": 404, "message": "Dataset file not found"}, None
        location = f"{self.endpoint}/blob/dataset/{key[0]}/{key[1]}/{body['fileName']}"
        return 302, b"", {"Location": location}


def kaggle_env(fake: FakeKaggle, username: str, key: str, config_dir: Path) -> dict:
    """Environment for a process that should talk to ``fake`` with the kaggle package."""
    return {**os.environ, "STREAMAPPROX_KAGGLE_ENDPOINT": fake.endpoint, "KAGGLE_USERNAME": username, "KAGGLE_KEY": key,
            "KAGGLE_CONFIG_DIR": str(config_dir)}
