"""Every command README.md and docs/**/*.md show, run exactly as written (tests/test_docs_*.py run the pages).

THE CONVENTION (also in docs/extending.md, "The docs are tested"):

- A ```bash block holds commands, one a line: a line ending in ``\\`` goes on on the next, a trailing ``# comment`` is
  not part of the command, a line that is only a comment is skipped.
- A ```console (or ```text) block whose lines start with ``$ `` is a transcript: ``$ CMD`` is a command (``\\``
  continues it too), the lines under it are what it printed. Each of those lines must match, in order, a line of its
  output (stdout and stderr together, as a terminal shows them) by its shape: numbers, dates, run ids and hex digests
  stand for any, a ``...`` inside a line for anything, a line that is only ``...`` for any lines, and an annotation
  after two spaces and ``#`` is not part of the line. A transcript command identical to a ```bash command above it on
  the page shows that same run's output: it is not run twice.
- Every other block is not commands (```text or ```console without ``$ ``, ```yaml, ```python, a bare ```), and a
  bare ``` block may not hold ``$ `` lines (mark a transcript ```console).
- A command's comment says what to expect of it: ``exit N`` (anywhere in it) -> exit code N, otherwise 0;
  ``needs ...`` (at its start: ``# needs 4 GPUs``) -> it cannot run here, so it is only parsed: by ``launch``'s own
  parser and the job's (and the job's typed config for training jobs), or, for another program, every option it
  shows must be in the program's ``--help``.
- ``<placeholders>`` are filled from what earlier commands of the same page made (``PLACEHOLDERS``); ``export NAME=V``
  sets the page's environment for the commands after it; the services in ``SERVICES`` (``launch serve``,
  ``tensorboard``) start in the background, serve the commands after them once their port answers, and are stopped
  (by pid) when the page ends.
- ``DELEGATED`` commands are checked another way, said there (the README's test command is what CI itself runs).

WHERE THEY RUN (``World``, ``Page``): each page in a fresh directory that looks like the checkout (links to its tracked
top-level entries, ``.venv`` and ``setup.sh`` among them; what the commands write stays there), with a home of its own,
the synthetic cache of the test session (``STREAMAPPROX_CACHE``: the default shards are generated once), and
``.venv/bin`` first on the PATH (as after ``source .venv/bin/activate``). Each command runs in a mount namespace of
its own where that home is the user's home (so ``ssh`` reads its ``~/.ssh/config``) and ``/etc/hosts`` also names
``head`` and ``minio`` as 127.0.0.1. What a user would have is there, on loopback, with the test servers' defaults:

- ``~/.ssh/config`` names ``gpu1``, ``gpu2`` and ``rented-box``: three real sshd (tests/servers.py) that share no disk
  with this machine or each other (their home, the checkout and /tmp are empty tmpfs there) and whose
  ``python3`` is this environment's (``./setup.sh`` on the node, without the project);
- a Kaggle account ``you`` (``KAGGLE_USERNAME``/``KAGGLE_KEY`` set, as a user sets them) on the loopback Kaggle
  (tests/kaggle_server.py), holding one finished kernel and one dataset (``KERNEL``, ``SLUG``; each a small shard set);
- S3 (moto) with every bucket a page names, reached through ``AWS_ENDPOINT_URL`` and the usual credential variables;
  for a page that names ``minio:9000`` it is there;
- a two-node Ray cluster (tests/servers.py ``RayNode``: the head, and a worker with a /tmp of its own) whose dashboard
  is ``http://head:8265``, for pages that use ``launch ray``;
- pip's index is the wheelhouse ``./setup.sh --dev`` filled (this machine has no other): ``PIP_*`` variables.

No option a page does not show is added to any command, and nothing of the launcher is sped up.

``python tests/docs_commands.py PAGE ...`` runs pages the same way outside pytest and prints every command's output:
what to paste into a transcript after changing it.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]
KAGGLE_USER = "you"
RAY_DASHBOARD = 8265  # Ray's default dashboard port: http://head:8265 in the docs
MINIO_PORT = 9000  # MinIO's default port: http://minio:9000 in docs/sync.md
HOSTS = ("gpu1", "gpu2", "rented-box")
COMMAND_TIMEOUT = 900
SERVICES = {"launch serve": 8000, "tensorboard": 6006}  # program -> the port it listens on unless --port says

PLACEHOLDERS = {
    "<run-id>": "the run directory the newest command of the page that made one made; after a prefix (runs/train_mlp-<id>) "
                "the newest of those",
    "<id>": "the same as <run-id>",
    "<sweep-id>": "the newest sweep run of the page (runs/sweep-*)",
    "<kernel>": "the Kaggle kernel of the newest run of the page: its run id with _ as -",
    "<your-key>": "the loopback Kaggle account's key",
    "OWNER": "(in kaggle:// and kaggle-dataset:// URLs) the Kaggle account: you",
    "KERNEL": "(in kaggle:// URLs) the kernel the account holds: you/features (its output: a small synthetic shard set)",
    "SLUG": "(in kaggle-dataset:// URLs) the dataset the account holds: you/msrvtt-small (a small synthetic shard set)",
}
SEEDED_KERNEL, SEEDED_DATASET = "features", "msrvtt-small"


def _ci_runs(command: str) -> str | None:
    ci = (REPO / ".ci" / "run").read_text()
    return None if command in ci.splitlines() else f".ci/run does not run `{command}`:\n{ci}"


def _gpu_check_smoke(command: str) -> str | None:
    test = (REPO / "tests" / "test_gpu_check.py").read_text()
    return None if '"gpu_check.sh"), "--smoke"' in test else "tests/test_gpu_check.py no longer runs bench/gpu_check.sh --smoke"


DELEGATED = {  # command -> (why it is not run here, the check that stands for it)
    "./setup.sh --dev && .venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest -q":
        ("the linter, the type checker and the test suite: CI runs exactly this (.ci/run)", _ci_runs),
    "bench/gpu_check.sh --smoke": ("tests/test_gpu_check.py runs it as written, checking every step's PASS", _gpu_check_smoke),
}


# ---------------------------------------------------------------------------------------------------------- extraction
@dataclass
class Command:
    page: str
    line: int  # 1-based line of the page where it starts
    text: str  # as written (continuations joined), without its comment
    comment: str = ""
    shown: list[str] | None = None  # a transcript's output lines
    code: int = 0
    parse_only: str = ""  # the reason (the comment's "needs ..."), when it cannot run here
    run_once_with: Command | None = None  # a transcript line repeating an earlier ```bash command: that run

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def split_comment(line: str) -> tuple[str, str]:
    """``command  # comment`` -> (command, comment); a ``#`` inside quotes or a word is the command's."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def _expectations(command: Command) -> Command:
    if match := re.search(r"\bexit (\d+)\b", command.comment):
        command.code = int(match.group(1))
    if command.comment.startswith("needs "):
        command.parse_only = command.comment
    return command


def _joined(lines: list[tuple[int, str]], start: int) -> tuple[str, str, int]:
    """The command starting at ``lines[start]`` with its ``\\`` continuations: (text, comment, next index)."""
    parts, comments, i = [], [], start
    while True:
        text, comment = split_comment(lines[i][1])
        comments += [comment] if comment else []
        if text.endswith("\\") and i + 1 < len(lines):
            parts.append(text[:-1].strip())
            i += 1
            continue
        parts.append(text.strip())
        return " ".join(p for p in parts if p), "; ".join(comments), i + 1


def fenced_blocks(path: Path) -> list[tuple[str, int, list[tuple[int, str]]]]:
    """(info string, first line, [(line number, text)]) of every fenced block of a page."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip(), number, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append((number, line))
    assert current is None, f"{path}: a fenced block is not closed"
    return blocks


def page_commands(page: str) -> list[Command]:
    """Every command of a page in order (see the convention above); a convention broken is an AssertionError."""
    commands: list[Command] = []
    for info, start, lines in fenced_blocks(REPO / page):
        language = info.split()[0] if info else ""
        transcript = any(text.startswith("$ ") for _, text in lines)
        if language in ("bash", "sh", "shell"):
            i = 0
            while i < len(lines):
                if not lines[i][1].strip() or lines[i][1].strip().startswith("#"):
                    i += 1
                    continue
                number = lines[i][0]
                text, comment, i = _joined(lines, i)
                commands.append(_expectations(Command(page, number, text, comment)))
        elif language in ("console", "text") and transcript:
            i, current = 0, None
            while i < len(lines):
                number, text = lines[i]
                if text.startswith("$ "):
                    joined, comment, used = _joined([(n, t[2:] if k == 0 else t) for k, (n, t) in enumerate(lines[i:])], 0)
                    i += used
                    current = _expectations(Command(page, number, joined, comment, shown=[]))
                    earlier = [c for c in commands if c.text == joined and c.shown is None]
                    if earlier:
                        current.run_once_with = earlier[-1]
                    commands.append(current)
                    continue
                assert current is not None, f"{page}:{number}: a transcript line before any `$ ` command"
                assert current.shown is not None
                current.shown.append(text)
                i += 1
        else:
            assert not transcript, f"{page}:{start}: a ``` block with `$ ` lines: mark the transcript ```console"
    for command in commands:
        if command.shown is not None:
            while command.shown and not command.shown[-1].strip():
                command.shown.pop()
    return commands


# ------------------------------------------------------------------------------------------------------ output shapes
RUN_ID = re.compile(r"\d{8}[-_]\d{6}[-_][0-9a-f]{4}")
NUMBER = re.compile(r"[0-9a-f]*\d[0-9a-f]*(?:[.,:][0-9a-f]*\d[0-9a-f]*)*")  # 27.60, 1,000, 14:12:58,929, 093c5a36, 4f0c


def _shape(text: str) -> str:
    pattern, at = "", 0
    for match in re.finditer(f"{RUN_ID.pattern}|{NUMBER.pattern}|\\s+", text):
        pattern += re.escape(text[at:match.start()])
        token = match.group(0)
        if token.isspace():
            pattern += r"\s+"
        elif RUN_ID.fullmatch(token):
            pattern += RUN_ID.pattern
        else:
            pattern += r"[-+]?[0-9a-f]*\d[0-9a-f.,:]*"
        at = match.end()
    return pattern + re.escape(text[at:])


def shown_pattern(line: str) -> re.Pattern | None:
    """The regular expression a printed line must match for a shown one; None for a line that is only ``...``."""
    line = re.sub(r"\s{2,}#\s.*$", "", line).strip()
    if line == "...":
        return None
    return re.compile(".*".join(_shape(part) for part in line.split("...")))


def unmatched(shown: list[str], printed: str) -> list[str]:
    """The shown lines that no printed line matches in order (empty: the output is as the page shows it)."""
    lines = [line.strip() for line in printed.splitlines()]
    missing, at = [], 0
    for line in shown:
        pattern = shown_pattern(line)
        if pattern is None or not line.strip():
            continue
        for i in range(at, len(lines)):
            if pattern.fullmatch(lines[i]):
                at = i + 1
                break
        else:
            missing.append(line)
    return missing


# -------------------------------------------------------------------------------------------------------- the world
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, seconds: float, alive=lambda: True) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


class World:
    """The servers a user's commands reach, started when a page first needs them and stopped by ``stop`` (by pid)."""

    def __init__(self, root: Path, cache: Path, kaggle_parts: Callable[[], tuple[Path, str]]):
        """``kaggle_parts()``: the loopback Kaggle's kernel image and its package index URL (asked for when needed)."""
        self.root, self.cache, self.kaggle_parts = root, cache, kaggle_parts
        root.mkdir(parents=True, exist_ok=True)
        self.s3: dict[int | None, object] = {}
        self.ray: list | None = None
        self.hosts_file = root / "hosts"
        self.hosts_file.write_text(Path("/etc/hosts").read_text() + "\n127.0.0.1 head minio\n")

    def s3_endpoint(self, port: int | None) -> str:
        """A moto server: on ``port`` (MinIO's, for the page that names it) or on any free one."""
        if port not in self.s3:
            from servers import MotoServer

            if port is None:
                server = MotoServer()
            else:
                if wait_port(port, 0.1):
                    raise RuntimeError(f"port {port} is taken: the page needs its S3 server there")
                server = _moto_on(port)
            self.s3[port] = server
        return self.s3[port].endpoint  # type: ignore[attr-defined]

    def ray_cluster(self, env: dict) -> str:
        """A two-node Ray cluster: the head, whose dashboard listens on 127.0.0.1:8265 (``head`` in /etc/hosts), and a
        worker node with a /tmp of its own (tests/servers.py ``RayNode``); their Python is this environment's, as on
        nodes set up with ./setup.sh, their S3 the page's."""
        if self.ray is None:
            from servers import RayNode, alive_ray_nodes

            if wait_port(RAY_DASHBOARD, 0.1):
                raise RuntimeError(f"port {RAY_DASHBOARD} is taken: the Ray pages need the head's dashboard there")
            node_env = {**env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
            gcs, address = free_port(), f"http://127.0.0.1:{RAY_DASHBOARD}"
            self.ray = [RayNode(node_env, self.root / "ray-head.log", head_port=gcs, dashboard_port=RAY_DASHBOARD)]
            for count in (1, 2):
                deadline = time.monotonic() + 120
                while len(alive_ray_nodes(address, "")) < count:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the Ray cluster did not reach {count} nodes within 120 s: "
                                           + (self.root / "ray-head.log").read_text()[-2000:])
                    time.sleep(0.5)
                if count == 1:
                    self.ray.append(RayNode(node_env, self.root / "ray-worker.log", head_port=gcs, private_tmp=True))
        return f"http://127.0.0.1:{RAY_DASHBOARD}"

    def stop(self) -> None:
        for node in reversed(self.ray or []):
            node.stop()
        self.ray = None
        for server in self.s3.values():
            server.stop()  # type: ignore[attr-defined]
        self.s3.clear()


def _moto_on(port: int):
    from servers import MotoServer

    class Moto(MotoServer):
        def __init__(self):  # MotoServer, on a given port
            self.port, self.endpoint = port, f"http://127.0.0.1:{port}"
            binary = Path(sys.executable).with_name("moto_server")
            self.process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
            if not wait_port(port, 30, lambda: self.process.poll() is None):
                self.stop()
                raise RuntimeError(f"moto_server did not start on port {port} within 30 s")

    return Moto()


def _ssh_nodes(root: Path, home: Path):
    """gpu1, gpu2, rented-box: an sshd each, a machine of its own (no disk shared with here or each other)."""
    from servers import SshServer

    hide = (Path(pwd.getpwuid(os.getuid()).pw_dir), REPO, root.parent)

    class Node(SshServer):
        def listen(self):  # the node's python3 is this environment's, as on a node set up with ./setup.sh
            lines = self.config.read_text().splitlines()
            path = f"PATH={VENV_BIN}:/usr/local/bin:/usr/bin:/bin"
            lines = [f"{line} {path}" if line.startswith("SetEnv ") else line for line in lines]
            if not any(line.startswith("SetEnv ") for line in lines):
                lines.append(f"SetEnv {path}")
            self.config.write_text("\n".join(lines) + "\n")
            super().listen()

    nodes = [Node(root / f"sshd-{host}", aliases=(host,), hide=hide) for host in HOSTS]
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (home / ".ssh" / "config").write_text("".join(node.host_entries() for node in nodes))
    return nodes


# --------------------------------------------------------------------------------------------------------- a page
@dataclass
class Result:
    command: Command
    ran: str  # the command as run (placeholders filled)
    code: int | None
    output: str
    seconds: float
    problems: list[str] = field(default_factory=list)


class Page:
    """One page's commands, in order, in a workspace of their own (see the module docstring)."""

    def __init__(self, page: str, world: World, workdir: Path):
        self.page, self.world = page, world
        self.commands = page_commands(page)
        self.workdir = workdir
        self.cwd, self.home = workdir / "checkout", workdir / "home"
        self.cwd.mkdir(parents=True)
        self.home.mkdir()
        for name in {p.split("/")[0] for p in subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                                               check=True).stdout.split()} | {".venv"}:
            (self.cwd / name).symlink_to(REPO / name)
        self.runs: list[str] = []  # run directory names, in the order the page's commands made them
        self.services: list[subprocess.Popen] = []
        self.nodes: list = []
        self.kaggle = None
        self.parser = Parser()
        text = " ".join(c.text for c in self.commands)
        self.env = {
            "PATH": f"{self.cwd / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.home), "USER": pwd.getpwuid(os.getuid()).pw_name, "LANG": "C.UTF-8", "TERM": "dumb",
            "PYTHONUNBUFFERED": "1",  # lines in the order a terminal shows them
            "OMP_NUM_THREADS": "1",  # the suite's two workers share two cores: single-threaded math, as in every test (conftest)
            "STREAMAPPROX_CACHE": str(world.cache),
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        }
        runnable = [c for c in self.commands if not c.parse_only and c.text not in DELEGATED]
        words = " ".join(c.text for c in runnable)
        if "s3://" in words or "minio" in words or "launch ray" in words:
            port = MINIO_PORT if "minio:" in text else None
            self.env["AWS_ENDPOINT_URL"] = self.world.s3_endpoint(port)
            self._buckets(set(re.findall(r"s3://([a-z0-9.-]+)", text)))
        if "launch ray" in words:
            self.world.ray_cluster(self.env)
        if "launch ssh" in words or "ssh://" in words:
            self.nodes = _ssh_nodes(workdir, self.home)
        if "kaggle" in words:
            self._kaggle()

    def _buckets(self, names: set[str]) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for name in names - existing:
            client.create_bucket(Bucket=name)

    def _kaggle(self) -> None:
        from kaggle_server import FakeKaggle

        image, index_url = self.world.kaggle_parts()
        self.kaggle_key = "kgl-" + secrets.token_hex(12)
        self.kaggle = FakeKaggle(KAGGLE_USER, self.kaggle_key, workdir=self.workdir / "kaggle", image=image, index_url=index_url)
        shards = small_shard_files(self.world.cache)
        self.kaggle.kernel_outputs[(KAGGLE_USER, SEEDED_KERNEL)] = shards
        self.kaggle.datasets[(KAGGLE_USER, SEEDED_DATASET)] = shards
        self.env.update({"STREAMAPPROX_KAGGLE_ENDPOINT": self.kaggle.endpoint, "KAGGLE_USERNAME": KAGGLE_USER,
                         "KAGGLE_KEY": self.kaggle_key, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
                         "PIP_FIND_LINKS": index_url})

    # -- placeholders ------------------------------------------------------------------------------------------
    def fill(self, text: str) -> str:
        def newest(prefix: str, what: str) -> str:
            made = [name for name in self.runs if name.startswith(prefix)]
            assert made, f"{what}: no earlier command of {self.page} made a run directory{' ' + prefix + '*' if prefix else ''}"
            return made[-1]

        text = re.sub(r"([\w.-]*?)<(run-id|id)>", lambda m: newest(m.group(1), m.group(0)), text)
        text = text.replace("<sweep-id>", newest("sweep-", "<sweep-id>")) if "<sweep-id>" in text else text
        if "<kernel>" in text:
            text = text.replace("<kernel>", newest("", "<kernel>").replace("_", "-"))
        if "<your-key>" in text:
            text = text.replace("<your-key>", self.kaggle_key)
        text = re.sub(r"kaggle://OWNER/KERNEL", f"kaggle://{KAGGLE_USER}/{SEEDED_KERNEL}", text)
        text = re.sub(r"kaggle-dataset://OWNER/SLUG", f"kaggle-dataset://{KAGGLE_USER}/{SEEDED_DATASET}", text)
        left = re.findall(r"<[a-z][\w-]*>", text)
        assert not left, f"{self.page}: placeholders with no rule in PLACEHOLDERS: {left}"
        return text

    # -- running ------------------------------------------------------------------------------------------------
    def _namespace(self, command: str) -> list[str]:
        """``command`` in a mount namespace where the page's home is the user's home -- what lives under the real one
        and this environment needs (a pyenv interpreter, the checkout) bound back at its path -- and /etc/hosts
        names head and minio."""
        home = Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()
        q = lambda path: shlex.quote(str(path))  # noqa: E731
        keep = sorted({p for p in (Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), REPO) if p.is_relative_to(home)})
        steps = ["mount -t tmpfs tmpfs /mnt"]
        steps += [f"mkdir /mnt/{i} && mount --bind {q(path)} /mnt/{i}" for i, path in enumerate(keep)]
        steps += [f"mount --bind {q(self.home)} {q(home)}"]
        steps += [f"mkdir -p {q(path)} && mount --bind /mnt/{i} {q(path)}" for i, path in enumerate(keep)]
        steps += ["umount -l /mnt", f"mount --bind {q(self.world.hosts_file)} /etc/hosts", 'exec bash -c "$0"']
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps), command]

    def _runs_now(self) -> list[str]:
        runs = self.cwd / "runs"
        return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []

    def run(self, command: Command, timeout: float = COMMAND_TIMEOUT) -> Result:
        if command.text in DELEGATED:
            why, check = DELEGATED[command.text]
            problem = check(command.text)
            return Result(command, f"(not run: {why})", None, "", 0.0, [problem] if problem else [])
        ran = self.fill(command.text)
        if command.parse_only:
            started = time.monotonic()
            problem = parse_check(ran, self.cwd, self.env, self.parser)
            return Result(command, ran, None, "", time.monotonic() - started, [problem] if problem else [])
        if ran.startswith("export "):
            for assignment in shlex.split(ran)[1:]:
                name, _, value = assignment.partition("=")
                self.env[name] = value
            return Result(command, ran, 0, "", 0.0)
        before = set(self._runs_now())
        started = time.monotonic()
        service = next((port for program, port in SERVICES.items() if re.match(rf"(\S*/)?{program}\b", ran)), None)
        log = self.workdir / f"command-{command.line}.log"  # a file, not a pipe: a service's output never blocks it
        with open(log, "w") as out:
            process = subprocess.Popen(self._namespace(ran), cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        if service is not None:
            port = int(m.group(1)) if (m := re.search(r"--port[= ](\d+)", ran)) else service
            if wait_port(port, 120, lambda: process.poll() is None):
                self.services.append(process)
                return Result(command, ran, None, "(serving in the background)", time.monotonic() - started)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            return Result(command, ran, None, log.read_text(errors="replace"), time.monotonic() - started,
                          [f"still running after {timeout:.0f} s: stopped"])
        output = log.read_text(errors="replace")
        made = sorted(set(self._runs_now()) - before - set(self.runs))
        self.runs += made
        result = Result(command, ran, process.returncode, output, time.monotonic() - started)
        if process.returncode != command.code:
            result.problems.append(f"exit {process.returncode}, the page says {command.code}")
        elif process.returncode == 0 and "--detach" not in ran:  # exit 0: complete, says the exit code table
            for name in made:
                record = self.cwd / "runs" / name / "run.json"
                status = json.loads(record.read_text()).get("status") if record.is_file() else "(no run.json)"
                if status != "complete":
                    result.problems.append(f"exit 0, but runs/{name}/run.json says status {status}")
        return result

    def check_output(self, command: Command, result: Result) -> None:
        if command.shown:
            missing = unmatched(command.shown, result.output)
            if missing:
                result.problems.append("printed no line shaped like these the page shows:\n    " + "\n    ".join(missing))

    def run_all(self, report=print) -> list[Result]:
        results: list[Result] = []
        try:
            for command in self.commands:
                if command.run_once_with is not None:
                    result = next(r for r in results if r.command is command.run_once_with)
                else:
                    result = self.run(command)
                    results.append(result)
                self.check_output(command, result)
                report(result)
        finally:
            self.stop()
        return results

    def stop(self) -> None:
        self.parser.stop()
        for process in self.services:
            _stop(process)
        self.services.clear()
        for node in self.nodes:
            node.stop()
        self.nodes = []
        if self.kaggle is not None:
            self.kaggle.stop()
            self.kaggle = None


def _stop(process: subprocess.Popen) -> None:
    """SIGINT to the process group it leads (Ctrl-C), SIGKILL 20 s later if it is still there."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def small_shard_files(cache: Path) -> dict[str, bytes]:
    """The files of the small synthetic shard set (generated once into the session cache)."""
    os.environ.setdefault("STREAMAPPROX_CACHE", str(cache))
    from data_shards.synthetic import ensure_synthetic

    folder = ensure_synthetic("synthetic://msrvtt?train=600&val=120&test=200&samples_per_shard=128")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ parse-only checks
class Parser:
    """A process that parses commands through ``launch``'s and the jobs' own parsers, one after another: a page's commands
    pay the imports (torch among them, about 2 s) once, not once each. Each command is parsed in its own directory and
    environment, as it would run."""

    TIMEOUT = 120

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def check(self, argv: list[str], cwd: Path, env: dict) -> str | None:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen([sys.executable, __file__, "--parse-server"], cwd=cwd, env=env, text=True,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "env": env}) + "\n")
        self.process.stdin.flush()
        if not select.select([self.process.stdout], [], [], self.TIMEOUT)[0]:
            self.stop()
            return f"the parser did not answer in {self.TIMEOUT} s"
        line = self.process.stdout.readline()
        if not line:
            return f"the parser ended (exit {self.process.wait()})"
        answer = json.loads(line)
        return None if answer["code"] == 0 else answer["output"].strip()[-2000:]

    def stop(self) -> None:
        """Its input closed, it ends; one that does not answer is killed (by pid)."""
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None


def parse_check(command: str, cwd: Path, env: dict, parser: Parser | None = None) -> str | None:
    """None when a command that cannot run here still parses (see the convention); else what is wrong."""
    argv = shlex.split(command)
    program = Path(argv[0]).name
    python = program.startswith("python")
    if program == "launch" or (python and argv[1] == "-m"):
        if parser is not None:
            return parser.check(argv, cwd, env)
        once = Parser()
        try:
            return once.check(argv, cwd, env)
        finally:
            once.stop()
    shown = re.findall(r"(?<!\S)(--[\w-]+)", command)
    helped = subprocess.run([*argv[:2], "--help"] if python else [argv[0], "--help"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    if helped.returncode != 0:
        return f"{argv[0]} --help exited {helped.returncode}: {helped.stdout[-1000:]}{helped.stderr[-1000:]}"
    absent = [option for option in shown if option not in helped.stdout + helped.stderr]
    return f"{argv[0]} --help lists no {absent}" if absent else None


def _parse_server() -> None:
    """``Parser``'s other end: a JSON request a line in, a JSON answer (exit code, what parsing printed) a line out."""
    import contextlib
    import io
    import traceback

    sys.path.insert(0, str(REPO))
    answers = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        printed, code = io.StringIO(), 0
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                _parse_here(request["argv"])
            except SystemExit as ended:
                code = ended.code if isinstance(ended.code, int) else int(ended.code is not None)
                if isinstance(ended.code, str):
                    print(ended.code)
            except Exception:
                traceback.print_exc()
                code = 1
        answers.write(json.dumps({"code": code, "output": printed.getvalue()}) + "\n")
        answers.flush()


def _parse_here(argv: list[str]) -> None:
    """``launch ...`` or ``python -m jobs.X ...`` through their own parsers (exit 2 with argparse's message if not)."""
    import importlib

    if Path(argv[0]).name == "launch":
        from jobs import JOBS
        from launch.cli import PROGRAMS, build_parser

        if argv[1] in PROGRAMS:
            module, job_args, job = PROGRAMS[argv[1]][0], argv[2:], None
        else:
            args, job_args = build_parser().parse_known_args(argv[1:])
            if getattr(args, "job", None) is None:
                assert not job_args, f"unrecognized arguments: {job_args}"
                return
            job, module = args.job, JOBS[args.job].module
    else:
        assert argv[1] == "-m", argv
        module, job_args = argv[2], argv[3:]
        job = module.rsplit(".", 1)[-1]
    loaded = importlib.import_module(module)
    if module in ("jobs.train_mlp", "jobs.train_transformer"):
        from jobs import train
        from jobs.config import load_config

        parsed = train.parse_args(job_args, job)
        load_config(parsed.preset, parsed.config, parsed.overrides)  # every key and value typed
    elif hasattr(loaded, "parse_args"):
        loaded.parse_args(job_args)
    else:
        raise SystemExit(f"{module} has no parse_args to check {job_args} with")


# ---------------------------------------------------------------------------------------------------- for pytest
FILES = {  # which test file runs which page: balanced over the suite's two workers (measured times in the docstrings)
    "test_docs_local.py": ["README.md", "docs/backends/local.md", "docs/jobs/train.md", "docs/jobs/report.md", "docs/jobs/sweep.md",
                           "docs/jobs/extract.md", "docs/data-formats.md", "docs/benchmarks.md"],
    "test_docs_kaggle.py": ["docs/backends/kaggle.md", "docs/jobs/synthesize.md", "docs/sync.md"],
    "test_docs_remote.py": ["docs/backends/README.md", "docs/backends/ssh.md", "docs/backends/ray.md", "docs/search.md"],
}


def pages_of(test_file: str) -> list[str]:
    return FILES[Path(test_file).name]


def world_fixture(request, tmp_path_factory, shard_cache):
    """A module's ``World`` (pytest fixture body): the loopback Kaggle's image and wheelhouse are asked for only when a
    page needs them."""

    world = World(tmp_path_factory.mktemp("docs-world"), shard_cache,
                  lambda: (request.getfixturevalue("kaggle_image"), request.getfixturevalue("wheel_server").url))
    yield world
    world.stop()


def check_page(page: str, world: World, workdir: Path) -> None:
    """Run every command of ``page``; fail naming each command that did not do what the page says, with its output."""
    results = Page(page, world, workdir).run_all(report=lambda result: None)
    print(f"\n{page}:\n" + "\n".join(report_line(r) for r in results))  # the time of each command (pytest -s, or a failure)
    failed = [r for r in results if r.problems]
    assert not failed, "\n\n".join(
        f"{r.command}\n  ran: {r.ran}\n  " + "\n  ".join(r.problems) + "\n  its output, last lines:\n    "
        + "\n    ".join(r.output.rstrip().splitlines()[-60:]) for r in failed)


def report_line(result: Result) -> str:
    state = ("parsed" if result.command.parse_only else "delegated" if result.ran.startswith("(not run") else
             "serving" if result.code is None and not result.problems else f"exit {result.code}")
    return f"[{result.seconds:6.1f} s] {state:>9}  {result.ran}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--parse-server"]:
        _parse_server()
        sys.exit(0)
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from kaggle_image import WheelServer, build_image

    scratch = Path(tempfile.mkdtemp(prefix="docs-"))
    cache = Path(os.environ.get("STREAMAPPROX_CACHE", scratch / "cache"))
    wheels = WheelServer()
    import functools

    world = World(scratch / "world", cache, functools.cache(lambda: (build_image(scratch / "kaggle-image").parent.parent, wheels.url)))
    failed = 0
    try:
        for number, name in enumerate(sys.argv[1:]):
            def show(result: Result) -> None:
                print(f"\n{report_line(result)}", flush=True)
                if result.output:
                    print(result.output.rstrip())
                for problem in result.problems:
                    print(f"  PROBLEM: {problem}")

            results = Page(name, world, scratch / f"page{number}").run_all(show)
            failed += sum(bool(r.problems) for r in results)
    finally:
        world.stop()
        wheels.stop()
    print(f"\n{failed} command(s) with problems; workspaces in {scratch}")
    sys.exit(1 if failed else 0)
