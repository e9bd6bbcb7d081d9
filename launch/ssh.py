"""``launch ssh JOB --host H [--host H ...]``: run a job on machines reached over SSH.

The system's ``ssh`` and ``rsync`` do the work, so host aliases, keys, agents and jump hosts come
from the user's SSH configuration (``--ssh-config FILE`` for another one). Per launch:
1. every host answers, has the Python asked for (or gets a venv made from the project's pinned
   requirements, reused while they are unchanged), and the job's own ``--check`` passes here;
2. the code bundle and the job's inputs (shards, videos) go to each host with ``rsync`` --
   incremental: an unchanged bundle or shard set moves nothing;
3. the job starts under ``accelerate launch``, detached from the SSH session (``setsid nohup``, pid,
   exit code and log files in the run directory): one launch per host with its machine rank, the
   first host as the main process; it survives a dropped connection;
4. the launcher follows the log, and pulls the run directory back through sync (``ssh://``).
``launch status/logs/pull RUN`` answer later from any shell, from ``RUN/launch.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from data_shards.files import cache_root
from jobs import JOBS, JobSpec, new_run_id, now
from launch import bundle as code_bundle
from launch.inputs import job_inputs, staged_form
from launch.local import REPO_ROOT, LaunchError, mixed_precision, option_value, summarize
from launch.runs import write_record
from sync.ssh import ssh_base


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", action="append", required=True, metavar="[USER@]HOST[:PORT]",
                        help="a machine (an alias from your SSH config works); repeat for more nodes, the first is the main one")
    parser.add_argument("--python", default="python3", help="the remote interpreter (default: python3 on the PATH)")
    parser.add_argument("--venv", action="store_true",
                        help="create (once) and use a venv on each host from the project's pinned requirements")
    parser.add_argument("--venv-system-site-packages", action="store_true",
                        help="let that venv see the --python interpreter's packages (images that ship torch)")
    parser.add_argument("--gpus-per-node", type=int, help="processes per node (default: the GPUs the node has; 1 on CPU)")
    parser.add_argument("--remote-dir", default="streamapprox", help="working directory on each host (relative to home)")
    parser.add_argument("--ssh-config", help="an ssh_config file to use instead of ~/.ssh/config")
    parser.add_argument("--main-address", help="address the other nodes reach the first host at (default: its HostName)")
    parser.add_argument("--main-port", type=int, default=29500, help="torch.distributed rendezvous port on the first host")
    parser.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                        help="auto: fp16 on GPUs without bf16, bf16 on newer ones, none on CPU")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between status polls")
    parser.add_argument("--detach", action="store_true", help="start and return; follow with launch status/logs/pull RUN")
    parser.add_argument("--max-bundle-mb", type=float, default=code_bundle.DEFAULT_MAX_MB, help="code bundle size guard")
    parser.add_argument("--runs-dir", default="runs", help="where run directories come back to (default: ./runs)")


class Host:
    """One machine: commands over ssh, files over rsync, both with the user's SSH configuration."""

    def __init__(self, name: str, config: str | None):
        self.name, self.config, self.base = name, config, ssh_base(name, config)

    def run(self, command: str, timeout: float = 120, what: str = "") -> str:
        try:
            result = subprocess.run([*self.base, command], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"{self.name}: no answer over ssh within {timeout:.0f} s{' (' + what + ')' if what else ''}") from None
        if result.returncode == 255:
            raise LaunchError(f"cannot reach {self.name} over ssh: {result.stderr.strip()[-400:]} "
                              "(check the host name, port, key and your SSH config; try `ssh " + self.name + "` by hand)")
        if result.returncode != 0:
            raise LaunchError(f"{self.name}: {what or command} failed (exit {result.returncode}): "
                              f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result.stdout

    def rsync(self, source: str, dest: str, *flags: str) -> None:
        target = self.base[-1]
        transport = " ".join(shlex.quote(a) for a in self.base[:-1])
        result = subprocess.run(["rsync", "-a", "--partial", "--mkpath", *flags, "-e", transport, source, f"{target}:{dest}"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise LaunchError(f"rsync to {self.name}:{dest} failed (exit {result.returncode}): {result.stderr.strip()[-600:]}")

    def address(self) -> str:
        """The HostName ssh resolves this host to (aliases included): where the other nodes find it."""
        result = subprocess.run([*self.base[:-1], "-G", self.base[-1]], capture_output=True, text=True)
        names = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("hostname ")]
        return names[0] if names else self.base[-1].rsplit("@", 1)[-1]


def requirements_digest(spec: JobSpec, inherit: bool, python: str) -> str:
    parts = [(REPO_ROOT / "pyproject.toml").read_bytes(), (REPO_ROOT / "constraints.txt").read_bytes(),
             repr((spec.extras, inherit, python)).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def prepare_python(host: Host, root: str, spec: JobSpec, options: argparse.Namespace) -> str:
    """The interpreter the job runs with on ``host``: --python as is, or the project's venv (made once)."""
    python = options.python
    found = host.run(f"command -v {shlex.quote(python)} || echo MISSING", what="looking for Python").strip()
    if found.endswith("MISSING"):
        raise LaunchError(f"{host.name}: no {python} there; pass --python PATH to an interpreter on that host (or --venv "
                          "with a python3 that can create one)")
    if options.venv:
        python = make_venv(host, root, spec, python, options.venv_system_site_packages)
    missing = host.run(f"{shlex.quote(python)} -c 'import importlib.util as u; "
                       "print(\" \".join(m for m in (\"torch\", \"accelerate\", \"webdataset\") if u.find_spec(m) is None))'",
                       what="checking the interpreter").strip()
    if missing:
        raise LaunchError(f"{host.name}: {python} lacks {missing}; pass --venv to make an environment from the project's "
                          "pinned requirements, or --python PATH to one that has them")
    return python


INHERIT = ("import pathlib, subprocess, sys, sysconfig; paths = subprocess.run([sys.argv[1], '-c', 'import site; "
           "print(chr(10).join(site.getsitepackages()))'], capture_output=True, text=True, check=True).stdout; "
           "pathlib.Path(sysconfig.get_paths()['purelib'], '_streamapprox_inherit.pth').write_text(paths)")


def make_venv(host: Host, root: str, spec: JobSpec, python: str, inherit: bool) -> str:
    """``<root>/envs/<digest>``: the project's pinned requirements (torch by constraints.txt) in a venv made
    once per requirements, interpreter and extras, and reused while they are unchanged. With ``inherit``
    the venv also sees ``python``'s packages (a .pth file; works when ``python`` is itself a venv), so an
    image's torch is used instead of downloaded again."""
    env = f"{root}/envs/{requirements_digest(spec, inherit, python)}"
    code, extras = f"{root}/code", ",".join(spec.extras)
    steps = [f"{shlex.quote(python)} -m venv {env}",
             *([f"{env}/bin/python -c {shlex.quote(INHERIT)} {shlex.quote(python)}"] if inherit else []),
             f"{env}/bin/pip install -q --disable-pip-version-check -c {code}/constraints.txt torch torchvision torchaudio",
             f"{env}/bin/pip install -q --disable-pip-version-check -c {code}/constraints.txt "
             f"'{code}{'[' + extras + ']' if extras else ''}'",
             f"touch {env}/.ready"]
    made = host.run(f"test -f {env}/.ready && echo reused || ( rm -rf {env} && {' && '.join(steps)} && echo made )",
                    timeout=3600, what="creating the venv").strip().splitlines()[-1]
    print(f"launch ssh: {host.name}: python environment {env} ({made})", flush=True)
    return f"{env}/bin/python"


def send_inputs(hosts: list[Host], root: str, inputs: dict) -> list[str]:
    """Each carried input to every host (rsync, incremental); returns the job arguments that point at them."""
    relocated = []
    for key, spec in inputs.items():
        if spec["regenerable"]:
            continue
        staged = staged_form(spec)
        name, value = staged.name, staged.target
        folder = cache_root() / "ssh" / name
        if not folder.is_dir():
            staging = folder.with_suffix(".partial")
            if staging.exists():
                subprocess.run(["rm", "-rf", str(staging)], check=True)
            staging.mkdir(parents=True)
            staged.link(staging)
            staging.rename(folder)
        for host in hosts:
            host.rsync(f"{folder}/", f"{root}/data/{name}/", "-L")
        relocated += [f"{key}={root}/data/{name}{'/' + value if value else ''}",
                      *(f"{k}={json.dumps(v)}" for k, v in spec.get("also_set", {}).items())]
    return ["--set", *relocated] if relocated else []


def accelerate_arguments(rank: int, nodes: int, per_node: int, gpus: list[dict], main: str, port: int, precision: str) -> list[str]:
    total = nodes * per_node
    arguments = ["--num_machines", str(nodes), "--machine_rank", str(rank), "--num_processes", str(total),
                 "--mixed_precision", mixed_precision(precision, gpus), "--dynamo_backend", "no"]
    if nodes > 1:
        arguments += ["--main_process_ip", main, "--main_process_port", str(port)]
    return arguments + (["--multi_gpu"] if total > 1 else [])


def start(host: Host, rank: int, remote_run: str, code: str, command: list[str], cpu: bool) -> None:
    """The job under ``setsid nohup``: it outlives this SSH session; its exit code lands in logs/exit-RANK."""
    logs = f"{remote_run}/logs"
    body = " ".join(shlex.quote(a) for a in command) + f"; echo $? > {logs}/exit-{rank}"
    env = f"STREAMAPPROX_BACKEND=ssh PYTHONPATH={code} PYTHONUNBUFFERED=1{' ACCELERATE_USE_CPU=1' if cpu else ''}"
    host.run(f"mkdir -p {logs} && cd {code} || exit 1; env {env} setsid nohup sh -c {shlex.quote(body)} > {logs}/node-{rank}.log "
             f"2>&1 < /dev/null & echo $! > {logs}/pid-{rank}", what="starting the job")


def node_states(record: dict) -> list[str]:
    """Per node: ``exit N``, ``running`` or ``lost`` (no exit code and no process)."""
    states = []
    for rank, name in enumerate(record["hosts"]):
        logs = f"{record['remote_run']}/logs"
        states.append(Host(name, record.get("ssh_config")).run(
            f"cat {logs}/exit-{rank} 2>/dev/null | sed 's/^/exit /' | grep . || "
            f"(kill -0 $(cat {logs}/pid-{rank} 2>/dev/null) 2>/dev/null && echo running || echo lost)", what="asking for status").strip())
    return states


def run(name: str, spec: JobSpec, job_args: list[str], options: argparse.Namespace) -> int:
    if option_value(job_args, "--run-dir") or option_value(job_args, "--resume"):
        raise LaunchError("launch ssh names the run itself; drop --run-dir/--resume (the run comes back to --runs-dir/<run-id>)")
    if options.ssh_config:
        if not Path(options.ssh_config).is_file():
            raise LaunchError(f"--ssh-config {options.ssh_config}: no such file")
        options.ssh_config = str(Path(options.ssh_config).resolve())
    hosts = [Host(h, options.ssh_config) for h in options.host]
    if len(hosts) > 1 and not spec.distributed:
        multi = ", ".join(n for n, s in JOBS.items() if s.distributed)
        raise LaunchError(f"{name} runs as one process; several --host work with: {multi}")
    roots = [h.run(f"mkdir -p {options.remote_dir} && cd {options.remote_dir} && pwd", what="making the remote directory").strip()
             for h in hosts]
    if len(set(roots)) > 1:
        raise LaunchError(f"--remote-dir {options.remote_dir} resolves to different paths {roots}; use an absolute path")
    root = roots[0]
    inputs = job_inputs(spec, job_args)
    bundle = code_bundle.collect(REPO_ROOT, options.max_bundle_mb)
    staged = bundle.write(cache_root() / "ssh" / "bundle")
    code = f"{root}/code"
    for host in hosts:
        host.rsync(f"{staged}/", f"{code}/", "--delete", "--checksum")
    pythons = [prepare_python(host, root, spec, options) for host in hosts]
    job_args = [*job_args, *send_inputs(hosts, root, inputs)]
    probe = json.loads(hosts[0].run(f"cd {code} && PYTHONPATH={code} {pythons[0]} -m jobs.hardware", what="probing the hardware")
                       .strip().splitlines()[-1])
    gpus = probe["gpus"]
    per_node = options.gpus_per_node or max(len(gpus), 1)
    run_id = new_run_id(name)
    remote_run = f"{root}/runs/{run_id}"
    job_args += ["--run-dir", remote_run] if spec.makes_run else []
    if spec.checkable:
        hosts[0].run(f"cd {code} && PYTHONPATH={code} {pythons[0]} -m {spec.module} {' '.join(map(shlex.quote, job_args))} --check",
                     timeout=600, what="the job's --check")
    run_dir = Path(options.runs_dir) / run_id
    run_dir.mkdir(parents=True)
    record = {"backend": "ssh", "run_id": run_id, "job": name, "hosts": options.host, "ssh_config": options.ssh_config,
              "remote_root": root, "remote_run": remote_run, "makes_run": spec.makes_run, "created_at": now(),
              "bundle": bundle.digest, "processes": per_node * len(hosts), "gpus_per_node": len(gpus)}
    write_record(run_dir, record)
    main = options.main_address or hosts[0].address()
    for rank, (host, python) in enumerate(zip(hosts, pythons)):
        command = [python, "-m", spec.module, *job_args]
        if spec.distributed:
            command = [python, "-m", "launch.accelerate_run",
                       *accelerate_arguments(rank, len(hosts), per_node, gpus, main, options.main_port, options.mixed_precision),
                       "-m", spec.module, *job_args]
        start(host, rank, remote_run, code, command, cpu=not gpus)
    print(f"launch ssh: started {run_id} on {', '.join(options.host)} ({per_node * len(hosts)} processes); "
          f"remote run directory {hosts[0].name}:{remote_run}", flush=True)
    if options.detach:
        print(f"launch ssh: detached; follow with: launch status {run_dir} | launch logs {run_dir} | launch pull {run_dir}")
        return 0
    return follow(record, run_dir, options.poll_interval)


def follow(record: dict, run_dir: Path, interval: float, patience: int = 12) -> int:
    """Print the main node's log as it grows until every node has exited, then pull. A dropped
    connection is retried (the job does not depend on it); only a long outage ends the wait."""
    host, offset, failures = Host(record["hosts"][0], record.get("ssh_config")), 0, 0
    log = f"{record['remote_run']}/logs/node-0.log"
    while True:
        try:
            text = host.run(f"tail -c +{offset + 1} {log} 2>/dev/null || true", what="reading the log")
            print(text, end="", flush=True)
            offset += len(text.encode())
            states = node_states(record)
            failures = 0
        except LaunchError as exc:
            failures += 1
            if failures > patience:
                print(f"launch ssh: {exc}\nthe job goes on without this connection: launch status {run_dir} | launch pull {run_dir}",
                      file=sys.stderr)
                return 3
            print(f"launch ssh: connection trouble ({exc}); retrying", file=sys.stderr, flush=True)
            time.sleep(interval)
            continue
        if all(state.startswith("exit") or state == "lost" for state in states):
            break
        time.sleep(interval)
    pulled = pull_run(record, run_dir)
    codes = [int(s.split()[1]) if s.startswith("exit") else 1 for s in states]
    return max(codes + [pulled])


def show_status(record: dict, run_dir: Path) -> int:
    for name, state in zip(record["hosts"], node_states(record)):
        print(f"node {name}: {state}")
    print(summarize(run_dir, "ssh") if (run_dir / "run.json").is_file() else "run directory not pulled yet: launch pull " + str(run_dir))
    return 0


def show_logs(record: dict, run_dir: Path) -> int:
    for rank, name in enumerate(record["hosts"]):
        print(f"==> {name}: node-{rank}.log <==")
        print(Host(name, record.get("ssh_config")).run(f"cat {record['remote_run']}/logs/node-{rank}.log 2>/dev/null || true"),
              end="", flush=True)
    return 0


def stop_run(record: dict, run_dir: Path) -> int:
    """SIGTERM to each node's process group (setsid made the job its leader)."""
    for rank, name in enumerate(record["hosts"]):
        pid = f"{record['remote_run']}/logs/pid-{rank}"
        state = Host(name, record.get("ssh_config")).run(f"kill -TERM -- -$(cat {pid}) 2>/dev/null && echo stopped || echo 'not running'")
        print(f"node {name}: {state.strip()}")
    return 0


def pull_run(record: dict, run_dir: Path) -> int:
    """The main node's run directory, through sync (every file sha256-checked; unchanged files stay)."""
    from sync import SyncError, sync

    host = record["hosts"][0]
    if record.get("ssh_config"):
        os.environ["STREAMAPPROX_SSH_CONFIG"] = record["ssh_config"]  # how the ssh:// store finds it
    try:
        report = sync(f"ssh://{host}{record['remote_run']}", str(run_dir))
    except SyncError as exc:
        raise LaunchError(f"pulling {host}:{record['remote_run']}: {exc}") from None
    print(f"launch ssh: {report.summary()}", flush=True)
    print(summarize(run_dir, "ssh"))
    return 0
