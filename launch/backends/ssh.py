"""``launch ssh JOB --host H [--host H ...]``: machines reached over SSH, one ``accelerate launch`` per node.

The system's ``ssh`` and ``rsync`` do the work (``launch.transports.ssh``), so host aliases, keys, agents and jump
hosts come from the user's SSH configuration. Nodes share no disk: each gets the code bundle, the job's inputs and --
to continue a run -- its run directory, by ``rsync`` (incremental: what is there already moves nothing). A unit is
one ``launch.compute.unit`` per node, detached from the SSH session (``setsid nohup``), its log, pid and exit code in
the node's run directory; the first host is the main process. The pull brings node 0's run directory and every other
node's own files (``*-rank<k>.*``: its logs and audit) through sync (``ssh://``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from data_shards.files import cache_root
from jobs import JOBS
from jobs.contract import rank_owner
from launch.accelerate import PRECISIONS, Devices, job_command
from launch.backends.base import Backend, BackendOptions, Handle, Job, Plan, Run, unit_arguments
from launch.bundle import Bundle
from launch.backends.local import unit_files
from launch.errors import Incomplete, LaunchError, Unreachable
from launch.inputs import rsync_excludes, staged_form
from launch.record import Unit
from launch.transports.ssh import Host, find_python, prepare_python

ENDED_CHECK_S = 0.5  # while the launcher waits between polls, how often the main node checks whether the job ended


@dataclass
class SshOptions(BackendOptions):
    host: list[str] = field(default_factory=list)
    python: str = "python3"
    venv: bool = False
    venv_system_site_packages: bool = False
    gpus_per_node: int | None = None  # None: the GPUs the node has (1 on CPU)
    remote_dir: str = "streamapprox"
    ssh_config: str | None = None
    main_address: str | None = None  # None: the first host's HostName
    main_port: int = 29500
    mixed_precision: str = "auto"


class SshPlan(Plan):
    hosts: list[str]
    ssh_config: str | None = None
    root: str  # the remote directory, resolved on the hosts
    code: str
    pythons: list[str]  # each host's interpreter (a venv's, with --venv)
    remote_run: str
    gpus: list[dict[str, Any]]  # the first host's, as jobs.hardware reports them
    per_node: int
    precision: str
    main: str
    main_port: int
    bundle: str


class SshHandle(Handle):
    pids: list[int]  # each node's unit runner
    files: list[str]  # each node's log/exit/pid prefix


def on_the_host(key: str, location: str, hosts: list[Host]) -> str:
    """``ssh://HOST/ABS/PATH`` given to a job that runs on HOST alone: its path there, read in place (nothing sent)."""
    parsed = urlparse(location)
    if len(hosts) != 1 or parsed.netloc != hosts[0].name or not parsed.path.startswith("/"):
        raise LaunchError(f"{key}={location}: an ssh:// input is read in place by a job that runs on that host alone (--host "
                          f"{parsed.netloc or 'HOST'}); for other hosts give a path here (copied once to each)")
    return parsed.path


class Ssh(Backend):
    name = "ssh"
    help = "machines over SSH (--host, repeat for more nodes; they need share no disk), one accelerate launch per node"
    Options = SshOptions
    options: SshOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        defaults = SshOptions()
        parser.add_argument("--host", action="append", default=[], metavar="[USER@]HOST[:PORT]",
                            help="a machine (an alias from your SSH config works); repeat for more nodes, the first is the main one "
                            "(--resume of a run made over ssh: the hosts it ran on)")
        parser.add_argument("--python", default=defaults.python, help="the remote interpreter (default: python3 on the PATH)")
        parser.add_argument("--venv", action="store_true",
                            help="create (once) and use a venv on each host from the project's pinned requirements")
        parser.add_argument("--venv-system-site-packages", action="store_true",
                            help="let that venv see the --python interpreter's packages (images that ship torch)")
        parser.add_argument("--gpus-per-node", type=int, help="processes per node (default: the GPUs the node has; 1 on CPU)")
        parser.add_argument("--remote-dir", default=defaults.remote_dir, help="working directory on each host (relative to home)")
        parser.add_argument("--ssh-config", help="an ssh_config file to use instead of ~/.ssh/config")
        parser.add_argument("--main-address", help="address the other nodes reach the first host at (default: its HostName)")
        parser.add_argument("--main-port", type=int, default=defaults.main_port, help="torch.distributed rendezvous port on the first host")
        parser.add_argument("--mixed-precision", choices=PRECISIONS, default=defaults.mixed_precision,
                            help="auto: fp16 on GPUs without bf16, bf16 on newer ones, none on CPU")

    def hosts(self, plan: SshPlan) -> list[Host]:
        if plan.ssh_config:
            os.environ["STREAMAPPROX_SSH_CONFIG"] = plan.ssh_config  # how sync's ssh:// store finds it
        return [Host(name, plan.ssh_config) for name in plan.hosts]

    # -- before anything is sent ------------------------------------------------------------------
    def prepare(self, job: Job) -> None:
        options = self.options
        if not options.host:
            raise LaunchError("--host HOST names the machine to run on (repeat it for more nodes)")
        if options.ssh_config:
            if not Path(options.ssh_config).is_file():
                raise LaunchError(f"--ssh-config {options.ssh_config}: no such file")
            options.ssh_config = str(Path(options.ssh_config).resolve())
            os.environ["STREAMAPPROX_SSH_CONFIG"] = options.ssh_config  # the job's check here lists ssh:// inputs with it
        if len(options.host) > 1 and not job.spec.distributed:
            multi = ", ".join(n for n, s in JOBS.items() if s.distributed)
            raise LaunchError(f"{job.name} runs as one process; several --host work with: {multi}")
        hosts = [Host(name, options.ssh_config) for name in options.host]
        roots = [h.run(f"mkdir -p {options.remote_dir} && cd {options.remote_dir} && pwd", what="making the remote directory").strip()
                 for h in hosts]
        if len(set(roots)) > 1:
            raise LaunchError(f"--remote-dir {options.remote_dir} resolves to different paths {roots}; use an absolute path")
        for host in hosts:
            find_python(host, options.python)
        self.root = roots[0]

    # -- sending ----------------------------------------------------------------------------------
    def stage(self, job: Job, bundle: Bundle | None) -> SshPlan:
        assert bundle is not None  # sends_code
        options, root = self.options, self.root
        hosts = [Host(name, options.ssh_config) for name in options.host]
        in_place = {key: on_the_host(key, spec.location, hosts) for key, spec in job.inputs.items() if spec.location.startswith("ssh://")}
        for key in in_place:
            print(f"launch ssh: {hosts[0].name}: {key} is there already ({job.inputs[key].location}): nothing sent", flush=True)
        staged = bundle.write(cache_root() / "ssh" / "bundle")
        code = f"{root}/code"
        for host in hosts:
            host.rsync(f"{staged}/", f"{code}/", "--delete", "--checksum")
        pythons = [prepare_python(host, root, job.extras, options.python, options.venv, options.venv_system_site_packages)
                   for host in hosts]
        relocated = [f"{key}={path}" for key, path in in_place.items()] + self.send_inputs(hosts, root, job)
        remote_run = f"{root}/runs/{job.run_dir.name}"
        if job.carry_run:
            self.send_run(hosts, job.run_dir, remote_run)
        probe = hosts[0].run(f"cd {code} && PYTHONPATH={code} {pythons[0]} -m jobs.hardware", what="probing the hardware")
        gpus = json.loads(probe.strip().splitlines()[-1])["gpus"]
        plan = SshPlan(hosts=options.host, ssh_config=options.ssh_config, root=root, code=code, pythons=pythons, remote_run=remote_run,
                       gpus=gpus, per_node=options.gpus_per_node or max(len(gpus), 1), precision=options.mixed_precision,
                       main=options.main_address or hosts[0].address(), main_port=options.main_port, bundle=bundle.digest,
                       relocated=relocated, job_args=job.args)
        if job.spec.checkable:  # the job's own check where it will run: its inputs as they arrived there
            args = unit_arguments(job.spec, plan, 1, Unit(resume=job.resume), remote_run)
            hosts[0].run(f"cd {code} && PYTHONPATH={code} {pythons[0]} -m {job.spec.module} {' '.join(map(shlex.quote, args))} --check",
                         timeout=600, what="the job's --check")
        return plan

    @staticmethod
    def send_inputs(hosts: list[Host], root: str, job: Job) -> list[str]:
        """Each carried input to every host (rsync, incremental); returns the --set values that point the job at them."""
        relocated = []
        for key, spec in job.inputs.items():
            if spec.regenerable:
                continue
            staged = staged_form(spec)
            folder = cache_root() / "ssh" / staged.name
            staged.link(folder)
            for host in hosts:
                sent = host.rsync(f"{folder}/", f"{root}/data/{staged.name}/", "-L")
                cost = "sent (rsync gave no byte count)" if sent is None else f"{sent:,} bytes sent" if sent else "there already, 0 bytes sent"
                print(f"launch ssh: {host.name}: {key} as {staged.name}: {cost}", flush=True)
            relocated += staged.assignments(key, f"{root}/data/{staged.name}")
        return relocated

    @staticmethod
    def send_run(hosts: list[Host], run_dir: Path, remote_run: str) -> None:
        """The run directory here to every node (each resumes from its own copy: nodes share no disk)."""
        for host in hosts:
            host.rsync(f"{run_dir}/", f"{remote_run}/", "--checksum", *rsync_excludes())

    # -- a unit -----------------------------------------------------------------------------------
    def start(self, run: Run, unit: Unit) -> None:
        plan = SshPlan.of(run)
        hosts = self.hosts(plan)
        if unit.resume and unit.attempt:  # a continuation: every node gets the run as it came back here
            self.send_run(hosts, run.dir, plan.remote_run)
        spec, args = run.spec, run.arguments(unit, plan.remote_run)
        pids, files = [], []
        for node, (host, python) in enumerate(zip(hosts, plan.pythons)):
            devices = Devices(plan.gpus, plan.per_node, len(hosts), node, plan.main, plan.main_port)
            command = job_command(python, spec.module, args, spec.distributed, devices, plan.precision)
            prefix = unit_files(plan.remote_run, unit, node * plan.per_node)  # named by its first rank
            env = {"STREAMAPPROX_BACKEND": "ssh", "PYTHONPATH": plan.code, "PYTHONUNBUFFERED": "1", **command.env}
            runner = [python, "-m", "launch.compute.unit", "--files", prefix, "--", *command.argv]
            pid = host.run(f"mkdir -p {plan.remote_run}/logs && cd {plan.code} || exit 1; "
                           f"env {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())} setsid nohup "
                           f"{' '.join(map(shlex.quote, runner))} > /dev/null 2>&1 < /dev/null & echo $!", what="starting the job")
            pids.append(int(pid.strip().splitlines()[-1]))
            files.append(prefix)
        unit.name = f"{'+'.join(plan.hosts)}:{plan.remote_run} (attempt {unit.attempt})"
        SshHandle(pids=pids, files=files).store(unit)

    def poll(self, run: Run, unit: Unit) -> tuple[str, str]:
        states = []
        handle = SshHandle.of(unit)
        for host, pid, prefix in zip(self.hosts(SshPlan.of(run)), handle.pids, handle.files):
            states.append(host.run(f"cat {prefix}.exit 2>/dev/null | sed 's/^/exit /' | grep . || "
                                   f"(kill -0 {pid} 2>/dev/null && echo running || echo lost)", what="asking for status").strip())
        if "running" in states:
            return "running", ""
        if "lost" in states:
            return "lost", ", ".join(f"node {rank}: {state}" for rank, state in enumerate(states))
        codes = [int(state.split()[1]) for state in states]
        unit.exit_code = next((code for code in codes if code), 0)
        return ("succeeded", "") if not unit.exit_code else ("failed", ", ".join(f"node {r}: exit {c}" for r, c in enumerate(codes)))

    def wait(self, run: Run, units: list[Unit], seconds: float) -> None:
        """Until the next poll, or until the main node's process of one of ``units`` ends: one call that waits there,
        checking every ``ENDED_CHECK_S``, so a job that ended is seen at once, not at the end of a poll interval grown
        long while it ran. Where the host does not answer, the time passes here and the poll says what went wrong."""
        if not units:
            return super().wait(run, units, seconds)
        deadline = time.monotonic() + seconds
        handles = [SshHandle.of(unit) for unit in units]
        ended = " || ".join(f"test -e {shlex.quote(handle.files[0] + '.exit')} || ! kill -0 {handle.pids[0]} 2>/dev/null"
                            for handle in handles)
        checks = max(1, math.ceil(seconds / ENDED_CHECK_S))
        script = f"i=0; until {ended} || [ $i -ge {checks} ]; do sleep {ENDED_CHECK_S}; i=$((i + 1)); done"
        try:
            self.hosts(SshPlan.of(run))[0].run(script, timeout=seconds + 60, what="waiting for the job")
        except (Unreachable, LaunchError):
            time.sleep(max(0.0, deadline - time.monotonic()))

    def log(self, run: Run, unit: Unit, offset: int) -> tuple[str, int]:
        host = self.hosts(SshPlan.of(run))[0]
        text = host.run(f"tail -c +{offset + 1} {SshHandle.of(unit).files[0]}.log 2>/dev/null || true", what="reading the log")
        return text, offset + len(text.encode())

    def pull(self, run: Run, unit: Unit, target: Path) -> str:
        """From each node the files its ranks wrote (node 0: the run directory), through sync (sha256-checked, incremental).
        Node k runs ranks k * per_node ... (k + 1) * per_node - 1."""
        from sync import SyncError, sync

        reports = []
        plan = SshPlan.of(run)
        self.hosts(plan)
        for node, name in enumerate(plan.hosts):
            def select(entries: dict, node: int = node) -> dict:  # what this node's processes wrote themselves
                return {rel: entry for rel, entry in entries.items() if rank_owner(rel) // plan.per_node == node}

            try:
                reports.append(sync(f"ssh://{name}{plan.remote_run}", str(target), select=select).summary())
            except SyncError as exc:
                raise Incomplete(f"pulling {name}:{plan.remote_run}: {exc}") from None
        return "\n".join(reports)

    def stop(self, run: Run, unit: Unit) -> str:
        """SIGTERM to each node's unit runner (setsid makes it a group leader); it passes it on to the job. Only a
        process whose command line names the unit's files is signalled (the runner, or what execs into it): a pid the
        unit left behind may belong to another process by now. A stop that comes right after the start may find the
        runner not yet its own group (the pid is known from the fork, before ``setsid``): then the process itself is
        signalled, and ends before it starts the job."""
        said = []
        handle = SshHandle.of(unit)
        for host, pid, prefix in zip(self.hosts(SshPlan.of(run)), handle.pids, handle.files):
            ours = f"tr '\\0' ' ' < /proc/{pid}/cmdline | grep -qF -- {shlex.quote(prefix)}"
            said.append(f"{host.name}: " + host.run(f"{{ {ours} && {{ kill -TERM -- -{pid} || kill -TERM {pid}; }}; }} 2>/dev/null "
                                                    "&& echo 'stop requested' || echo 'not running'").strip())
        return "; ".join(said)

    def where(self, run: Run) -> str:
        plan = SshPlan.of(run)
        return f"{', '.join(plan.hosts)} ({len(plan.hosts) * plan.per_node} processes; run directory {plan.remote_run})"

