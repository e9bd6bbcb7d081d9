"""Real servers on loopback for the sync tests: moto's S3 server (a subprocess) and a forwarding
proxy that can slow or corrupt what passes through it. The Kaggle server is in kaggle_server.py."""
from __future__ import annotations

import socket
import shutil
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
    killed); ``corrupt`` (a key substring) flips a byte in matching GET bodies; ``drop_next = N`` closes the next N
    connections without an answer (the network between us and the server goes for a while). Records every request
    and counts the part uploads it forwards."""

    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.hold_parts_above: int | None = None
        self.corrupt: str | None = None
        self.part_uploads = 0
        self.drop_next = 0
        self.dropped = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) of everything forwarded
        self.stop_holding = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.drop_next > 0:
                    proxy.drop_next -= 1
                    proxy.dropped += 1
                    self.close_connection = True
                    return
                proxy.requests.append((self.command, self.path))
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


class SshServer:
    """A real OpenSSH ``sshd`` on 127.0.0.1 with throwaway host and user keys (made here, never tracked), key-only
    login for the current user, and an ssh_config naming it by ``aliases``. With ``hide`` (directories) it is a
    machine of its own: it runs in a mount namespace where each of them and /tmp is an empty tmpfs and this environment is its
    own Python, without the project (``separate_machine_mounts``). ``env``: variables every session there has, as a
    machine's own setup gives them (its S3 endpoint and credentials)."""

    def __init__(self, workdir: Path, aliases: tuple[str, ...] = ("node0", "node1"), hide: tuple[Path, ...] = (),
                 env: dict[str, str] | None = None):
        import getpass

        self.sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(self.sshd).is_file():
            raise RuntimeError("sshd not installed: `./setup.sh --dev` installs Debian's openssh-server")
        self.workdir, self.port, self.user, self.aliases, self.hide = workdir, free_port(), getpass.getuser(), aliases, hide
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)], check=True)
        (workdir / "authorized_keys").write_text((workdir / "user_key.pub").read_text())
        (workdir / "authorized_keys").chmod(0o600)
        self.config = workdir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {workdir / 'host_key'}",
            f"AuthorizedKeysFile {workdir / 'authorized_keys'}", f"PidFile {workdir / 'sshd.pid'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "PermitRootLogin prohibit-password", "ClientAliveInterval 5", "Subsystem sftp internal-sftp",
            # single-threaded math as in every test process (figures compare exactly), and what the machine itself is set up with
            " ".join(["SetEnv OMP_NUM_THREADS=1", *(f"{name}={value}" for name, value in (env or {}).items())]), ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
        known = f"[127.0.0.1]:{self.port} {(workdir / 'host_key.pub').read_text().split()[0]} " \
                f"{(workdir / 'host_key.pub').read_text().split()[1]}\n"
        (workdir / "known_hosts").write_text(known)
        self.client_config = workdir / "ssh_config"
        self.client_config.write_text(self.host_entries())
        self.listen()

    def host_entries(self) -> str:
        return "".join(f"Host {alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n  IdentityFile {self.workdir / 'user_key'}\n"
                       f"  IdentitiesOnly yes\n  UserKnownHostsFile {self.workdir / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
                       for alias in self.aliases)

    def listen(self) -> None:
        import shlex

        command = [self.sshd, "-D", "-e", "-f", str(self.config)]
        if self.hide:
            mounts = separate_machine_mounts(self.hide, keep=(self.workdir,))
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{mounts} && exec {shlex.join(command)}"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(self.workdir / "sshd.log", "ab"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(["ssh", "-F", str(self.client_config), "-o", "BatchMode=yes", self.aliases[0], "true"],
                                   capture_output=True, timeout=20)
            if probe.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"sshd did not accept a login within 20 s: {(self.workdir / 'sshd.log').read_text()[-2000:]}")

    def drop_connections(self) -> None:
        """Kill every per-connection sshd child (the listener stays): open sessions drop mid-command."""
        subprocess.run(["pkill", "-P", str(self.process.pid)], check=False)

    def outage(self, seconds: float) -> None:
        """The machine is gone from the network for ``seconds``: every session drops and new ones are refused; then
        it answers again (what it runs carries on meanwhile). Not for a server with ``hide``: its disk would go too."""
        assert not self.hide
        self.stop()
        time.sleep(seconds)
        self.listen()

    def stop(self) -> None:
        self.drop_connections()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def ssh_config(path: Path, *servers: SshServer) -> Path:
    """One ssh_config naming the hosts of several servers."""
    path.write_text("".join(server.host_entries() for server in servers))
    return path


# A Kaggle image or a cluster node has none of this checkout's code: processes that stand for them must not import
# the project through the dev environment's editable install, only from what they were sent.
NO_PROJECT_SITECUSTOMIZE = """import sys
sys.meta_path[:] = [finder for finder in sys.meta_path if not getattr(finder, "__module__", "").startswith("__editable__")]
"""


CHECKOUT = Path(__file__).resolve().parent.parent  # this checkout, wherever it was cloned


def editable_install() -> list[Path]:
    """The files by which this environment imports the project from the checkout: pip's ``__editable__*`` (a .pth and
    the finder it imports), and any other .pth naming the checkout (``setup.py develop``'s)."""
    import site

    found = []
    for folder in map(Path, site.getsitepackages()):
        found += [p for p in sorted(folder.glob("*")) if p.is_file() and (p.name.startswith("__editable__") or
                  (p.suffix == ".pth" and str(CHECKOUT) in p.read_text(errors="replace")))]
    return found


def separate_machine_mounts(hide: tuple[Path, ...], keep: tuple[Path, ...] = (), own_python: bool = True) -> str:
    """Shell (for a fresh private mount namespace) that makes this machine look like another one: an empty tmpfs over
    /tmp (a machine's own: what a process here keeps in /tmp -- a sweep's alias, Ray's session -- is not there) and
    each of ``hide`` (this checkout, pytest's basetemp: whatever a node of its own would not have), ``keep`` (what
    the node's own processes need, such as sshd's keys) and this environment (``sys.prefix``) back at their paths even
    where they lie under a hidden one, the environment read-only and with the project's editable install masked by an
    empty file: the node's own Python, with the project's dependencies but not the project, as a GPU box has after
    ``pip install`` of the requirements. Bind mounts, not a copy: instant, nothing to clean up, and read-only, where a
    hardlinked copy would take seconds and let a write through it change this environment's files (shared inodes).
    What is kept is parked under a tmpfs on /mnt (this namespace's) while the tmpfs go on, then that is unmounted.
    ``own_python=False``: this environment is hidden like the rest (a Kaggle kernel brings its own image)."""
    import shlex

    q = lambda path: shlex.quote(str(path))  # noqa: E731
    kept = [*([Path(sys.prefix).resolve()] if own_python else []), *(Path(p).resolve() for p in keep)]
    hidden = sorted({Path("/tmp"), *(Path(p).resolve() for p in hide)})
    base = Path(sys.base_prefix).resolve()  # the interpreter a venv runs, should a hidden folder hold it too
    if any(base.is_relative_to(path) for path in hidden):
        kept.append(base)
    steps = ["mount -t tmpfs tmpfs /mnt", ": > /mnt/empty"]
    steps += [f"mkdir /mnt/{i} && mount --bind {q(path)} /mnt/{i}" for i, path in enumerate(kept)]
    steps += [f"mkdir -p {q(path)} && mount -t tmpfs tmpfs {q(path)}" for path in hidden]
    steps += [f"mkdir -p {q(path)} && mount --bind /mnt/{i} {q(path)}" for i, path in enumerate(kept)]
    if own_python:
        steps.append(f"mount -o remount,bind,ro {q(kept[0])}")
        steps += [f"mount --bind /mnt/empty {q(path)}" for path in editable_install()]
    steps.append("umount -l /mnt")
    return " && ".join(steps)


def private_tmp_mount() -> str:
    """Shell that puts an empty tmpfs over /tmp -- keeping this environment (sys.prefix) in place when it lives under
    /tmp itself (a checkout cloned there), since a node of a real cluster has its own copy of the environment."""
    env = Path(sys.prefix).resolve()
    if not env.is_relative_to("/tmp"):
        return "mount -t tmpfs tmpfs /tmp"
    return f"mount --bind {env} /mnt && mount -t tmpfs tmpfs /tmp && mkdir -p {env} && mount --bind /mnt {env}"  # /mnt: this namespace's


class RayNode:
    """One real Ray node on 127.0.0.1 (``ray start --block``): the head, or a worker joining ``head_port``. With
    ``private_tmp`` the node runs in its own mount namespace with a tmpfs on /tmp, so it shares no files with the
    head or the tests (only the read-only environment under /work): a separate machine, as far as files go. Every
    port is chosen apart (two clusters may run side by side); ``stop`` kills what it started, by pid."""

    def __init__(self, env: dict, log: Path, *, head_port: int, dashboard_port: int | None = None, private_tmp: bool = False,
                 num_cpus: int = 2):
        import shlex
        import tempfile

        ray = str(Path(sys.executable).with_name("ray"))
        self.head = dashboard_port is not None
        temp = "/tmp/rayw" if private_tmp else tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's sockets live under it
        self.temp = None if private_tmp else temp
        args = [ray, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--disable-usage-stats",
                "--temp-dir", temp, "--dashboard-agent-listen-port", str(free_port())]
        if self.head:
            args += ["--head", "--port", str(head_port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                     "--include-dashboard", "true", "--ray-client-server-port", str(free_port())]
        else:
            args += ["--address", f"127.0.0.1:{head_port}"]
        site = "/tmp/site" if private_tmp else tempfile.mkdtemp(prefix="raysite", dir="/tmp")
        setup = f"mkdir -p {site} && printf %s {shlex.quote(NO_PROJECT_SITECUSTOMIZE)} > {site}/sitecustomize.py"
        if private_tmp:
            setup = f"{private_tmp_mount()} && mkdir -p {temp} && {setup}"
        command = ["sh", "-c", f"{setup} && exec {shlex.join(args)}"]
        if private_tmp:
            command = ["unshare", "--mount", "--propagation", "private", *command]
        self.site = None if private_tmp else site
        self.log = open(log, "wb")
        self.process = subprocess.Popen(command, env={**env, "PYTHONPATH": site}, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def processes(self):
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def raylet(self):
        return next(p for p in self.processes() if p.name() == "raylet")

    def stop(self) -> None:
        import psutil
        import shutil

        processes = self.processes()
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=30)
        self.log.close()
        for path in (self.temp, self.site):
            if path:
                shutil.rmtree(path, ignore_errors=True)


def alive_ray_nodes(dashboard: str, token: str) -> list[dict]:
    """The cluster's alive nodes, from its dashboard's state API (token auth as Ray's own clients use it)."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{dashboard}/api/v0/nodes?limit=100", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            nodes = json.loads(response.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return []
    return [node for node in nodes if node["state"] == "ALIVE"]
