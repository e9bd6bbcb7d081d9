"""Real servers on loopback for the sync tests: moto's S3 server (a subprocess) and a forwarding
proxy that can slow or corrupt what passes through it. The Kaggle server is in kaggle_server.py."""
from __future__ import annotations

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
