"""One run lifecycle for every backend: check -> bundle -> stage -> start -> follow -> pull -> summarize.

``launch BACKEND JOB`` comes here whatever the backend. The job's own ``--check`` runs here first, so a bad config
fails before anything is sent; the backend is asked to reach its compute, send code and inputs, and start *units*
(``launch.record``); one loop follows them all -- as many at once as the compute allows, each log printed as it
grows -- under one retry policy: trouble that passes (``Unreachable``) is retried with backoff for ``--patience``
seconds, after which the run goes on without us (exit 3). A unit that ends is pulled, settled, and -- when its run
came back incomplete and the backend allows it -- continued by a new unit. ``--resume RUN`` follows a run again, or
continues it: on the backend that made it, or on any other, since the run directory is the same everywhere.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from data_shards.files import disk_problem
from jobs import JOBS, new_run_id
from jobs.contract import read_run
from launch import bundle as code_bundle
from launch.accelerate import REPO_ROOT
from launch.backends import Backend, Job, Run, registry
from launch.backends.base import BackendOptions
from launch.errors import Busy, Incomplete, LaunchError, Unreachable
from launch.inputs import job_check
from launch.job_args import assignments, option_value, without_option
from launch.record import LaunchRecord, Unit
from launch.summary import summarize

LOG_TAIL_LINES = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every backend has (the driver's; ``BackendOptions`` holds them typed, with these defaults)."""
    defaults = BackendOptions()
    parser.add_argument("--runs-dir", default=defaults.runs_dir, help="where run directories are made and come back to (default: ./runs)")
    parser.add_argument("--detach", action="store_true",
                        help="start and return; then launch logs RUN --follow | launch status RUN | launch pull RUN")
    parser.add_argument("--poll-interval", type=float, default=defaults.poll_interval,
                        help="the most seconds between status polls while a unit runs (default: the backend's); the first "
                        "poll comes within a second, the wait grows to this, and to 6x while nothing happens")
    parser.add_argument("--patience", type=float, default=defaults.patience,
                        help="seconds of lost connection or failing API calls to retry before the run goes on without "
                        f"this launcher (exit 3; default {defaults.patience:g})")


def say(backend: str, message: str, error: bool = False) -> None:
    print(f"launch {backend}: {message}", file=sys.stderr if error else sys.stdout, flush=True)


def log_tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def part_status(run: Run, part: int) -> dict:
    """The run.json of a part's run directory as it came back ({} before anything did)."""
    try:
        return read_run(run.record.part_dir(run.dir, part))
    except (FileNotFoundError, ValueError):
        return {}


def unit_code(unit: Unit) -> int:
    """The exit code an ended unit stands for: 0 it succeeded, else its own 1/2/3 when it failed with one, else 1."""
    if unit.state == "succeeded":
        return 0
    return unit.exit_code if unit.exit_code in (1, 2, Incomplete.code) else 1


class Retry:
    """The one retry policy: ``Unreachable`` is retried, with backoff, for ``patience`` seconds in a row."""

    def __init__(self, backend: str, run_dir: Path, patience: float):
        self.backend, self.run_dir, self.patience = backend, run_dir, patience
        self.since: float | None = None

    def ok(self) -> None:
        if self.since is not None:
            say(self.backend, "reached again")
        self.since = None

    def failed(self, exc: Unreachable) -> None:
        if self.since is None:
            self.since = time.monotonic()
        if time.monotonic() - self.since > self.patience:
            raise Incomplete(f"{exc}; gave up after {self.patience:.0f} s. The run goes on without this launcher: launch status "
                             f"{self.run_dir} | launch logs {self.run_dir} --follow | launch pull {self.run_dir}") from None
        say(self.backend, f"{exc}; retrying (for up to {self.patience:.0f} s)", error=True)


class Follower:
    """Starts a run's units as the compute lets it, follows them side by side, pulls and settles each one as it ends,
    and continues a part whose run came back incomplete while continuations are left."""

    def __init__(self, backend: Backend, run: Run, patience: float, resuming: bool = False, resume_args: list[str] | None = None):
        self.backend, self.run = backend, run
        self.interval = backend.options.poll_interval or backend.poll_interval
        self.resume_args = resume_args or []  # what the user gave with --resume: the units it starts now get it
        self.retry = Retry(backend.name, run.dir, patience)
        self.started = False  # a unit was started since the last wait: the next poll comes soon
        self.offsets: dict[tuple[int, int], int] = {}
        self.codes: dict[int, int] = {}  # part -> exit code, once settled
        self.next: dict[int, bool] = {}  # part -> its last unit came back incomplete: continue it
        self.busy_since: float | None = None
        record = run.record
        # units a part may have in all: those it has (at least one), the continuations the backend allows, and on an
        # explicit --resume one more
        self.allowed = {part: max(len(record.chain(part)), 1) + backend.continuations() + (1 if resuming and record.chain(part) else 0)
                        for part in range(record.parts)}

    def say(self, message: str, error: bool = False) -> None:
        say(self.backend.name, message, error)

    # -- starting ---------------------------------------------------------------------------------
    def waiting(self) -> list[int]:
        record = self.run.record
        return [part for part in range(record.parts) if part not in self.codes and (not record.chain(part) or self.next.get(part))]

    def active(self) -> list[Unit]:
        return [unit for unit in self.run.record.units if not unit.finished]

    def start_waiting(self) -> None:
        record = self.run.record
        for part in self.waiting():
            slots = self.backend.slots(self.run)
            if slots is not None and len(self.active()) >= slots:
                return
            chain = record.chain(part)
            resume = bool(chain) or record.continues
            unit = Unit(part=part, attempt=len(chain), resume=resume, args=self.resume_args if resume else [])
            try:
                self.backend.start(self.run, unit)
            except Busy as exc:
                self.busy(exc)
                return
            except Unreachable as exc:
                self.retry.failed(exc)
                return
            self.retry.ok()
            self.busy_since = None
            self.started = True
            self.next.pop(part, None)
            record.units.append(unit)
            self.run.save()
            what = "continuation" if unit.attempt else "resumed" if unit.resume else "started"
            self.say(f"{what} {unit.name}" + (f" (part {part + 1} of {record.parts})" if record.parts > 1 else ""))

    def busy(self, exc: Busy) -> None:
        if self.busy_since is None:
            self.busy_since = time.monotonic()
            self.say(f"{exc}; waiting for the compute to take it (up to {self.backend.busy_wait():.0f} s)")
        elif time.monotonic() - self.busy_since > self.backend.busy_wait() and not self.active():
            for part in self.waiting():
                self.codes[part] = Incomplete.code
            self.say(f"the compute took nothing more within {self.backend.busy_wait():.0f} s; continue later with: "
                     f"launch {self.backend.name} {self.run.record.job} --resume {self.run.dir}", error=True)

    # -- following --------------------------------------------------------------------------------
    def poll(self, unit: Unit) -> bool:
        """One poll of a running unit, its new log printed; True when something happened."""
        changed = unit.see(*self.backend.poll(self.run, unit))
        if changed:
            self.say(unit.standing)
        if not self.backend.echoes(unit):
            key = (unit.part, unit.attempt)
            text, self.offsets[key] = self.backend.log(self.run, unit, self.offsets.get(key, 0))
            if text:
                prefix = f"[part {unit.part}] " if self.run.record.parts > 1 else ""
                sys.stdout.write("".join(prefix + line for line in text.splitlines(keepends=True)))
                sys.stdout.flush()
                changed = True
        if unit.finished:
            from jobs import now

            unit.finished_at = now()
        self.run.save()
        return changed

    def settle(self, unit: Unit) -> None:
        """A unit ended: pull its run directory, let the backend account for it, then decide its part's fate."""
        record, part = self.run.record, unit.part
        target = record.part_dir(self.run.dir, part)
        try:
            moved = self.backend.pull(self.run, unit, target)
            if moved:
                self.say(moved)
            unit.pulled = True
        except Incomplete as exc:
            unit.pulled = False
            if unit.state == "succeeded":
                self.codes[part] = Incomplete.code
                self.say(f"{unit.name} finished, but {exc}. Bring it back with: launch pull {self.run.dir}", error=True)
                self.backend.settle(self.run, unit, target)
                return
            self.say(f"nothing came back from {unit.name}: {exc}", error=True)
        self.backend.settle(self.run, unit, target)
        self.run.save()
        if unit.state != "succeeded":
            self.failed(unit)
            return
        if not record.makes_run:
            self.codes[part] = 0
            return
        info = part_status(self.run, part)
        if info.get("status") != "incomplete":
            self.codes[part] = 0 if info.get("status") in ("complete", "stopped_early") else 1
            return
        chain = record.chain(part)
        unit.global_step = info.get("global_step", 0)
        self.run.save()
        again = f"launch {self.backend.name} {record.job} --resume {self.run.dir}"
        if len(chain) > 1 and unit.global_step <= (chain[-2].global_step or 0):
            self.codes[part] = Incomplete.code
            self.say(f"{unit.name} made no progress within its time budget (still at step {unit.global_step}); give the job a "
                     f"larger --time-budget, then: {again}", error=True)
        elif len(chain) >= self.allowed[part]:
            self.codes[part] = Incomplete.code
            used = len(chain) - 1
            self.say(f"the run is incomplete{f' after {used} continuations' if used else ''}; "
                     f"continue with: {again}", error=True)
        else:
            self.next[part] = True

    def failed(self, unit: Unit) -> None:
        """A unit that did not succeed: its part ends with the job's code, or incomplete (3) when the backend found the
        run can be continued from what was kept -- said in one line with the command that continues it."""
        code = self.codes[unit.part] = max(unit_code(unit), 1)
        if code == Incomplete.code:
            self.say(f"{unit.name} ended {unit.state}: {unit.detail}. Continue the run with: launch {self.backend.name} "
                     f"{self.run.record.job} --resume {self.run.dir}", error=True)
            return
        if self.backend.echoes(unit):
            return  # its own error line is on this terminal already
        try:
            text, _ = self.backend.log(self.run, unit, 0)
        except LaunchError:
            text = ""
        self.say(f"{unit.name} ended {unit.state}{': ' + unit.detail if unit.detail else ''}. Last lines of its log:\n"
                 f"{log_tail(text)}", error=True)

    def resume(self) -> None:
        """``--resume``: units the record still calls running are asked again, those that ended while nobody followed
        them are settled, and every part whose run is not complete gets a continuation."""
        record = self.run.record
        for unit in self.active():
            try:
                self.poll(unit)
            except Unreachable as exc:
                self.retry.failed(exc)
        for unit in record.units:
            if unit.finished and unit.pulled is not True and unit is record.chain(unit.part)[-1]:
                self.settle(unit)
        for part in range(record.parts):
            chain = record.chain(part)
            if chain and chain[-1].finished and chain[-1].pulled and part_status(self.run, part).get("status") != "complete":
                self.codes.pop(part, None)
                self.next[part] = True

    def follow(self) -> int:
        """Poll until every part has settled. The first poll after a start comes after ``first_poll`` seconds; the wait
        grows by half each time up to the poll interval while units run, and on to 6x it while nothing happens -- so a
        short job is seen to end at once and a long one is not asked after more than it needs."""
        first = min(self.backend.first_poll, self.interval)
        delay = first
        while True:
            self.start_waiting()
            if self.started:
                delay, self.started = first, False
            if not self.active() and not self.waiting():
                break
            changed = False
            for unit in self.active():
                try:
                    changed |= self.poll(unit)
                    self.retry.ok()
                except Unreachable as exc:
                    self.retry.failed(exc)
                    continue
                if unit.finished:
                    try:
                        self.settle(unit)
                    except Unreachable as exc:
                        unit.pulled = None
                        self.retry.failed(exc)
            if self.active() or self.busy_since is not None:
                self.backend.wait(self.run, self.active(), delay)
                delay = min(delay * 1.5, self.interval if changed else self.interval * 6)
        return self.finish()

    def finish(self) -> int:
        code = max(self.codes.values(), default=0)
        if code:
            return code
        record = self.run.record
        if record.parts > 1:
            merged = subprocess.run([sys.executable, "-m", JOBS[record.job].module, "--merge-slices", str(self.run.dir)])
            if merged.returncode != 0:
                return merged.returncode
        if record.makes_run:
            print(summarize(self.run.dir, self.backend.name), flush=True)
            self.backend.finished(self.run)
        return 0


# -- launch BACKEND JOB -------------------------------------------------------------------------------
def run_directory(name: str, job_args: list[str], options: BackendOptions) -> tuple[list[str], Path, bool]:
    """The job's arguments less --run-dir/--resume, the run directory here, and whether it continues one."""
    resume, given = option_value(job_args, "--resume"), option_value(job_args, "--run-dir")
    args = without_option(without_option(job_args, "--resume"), "--run-dir")
    if resume and given:
        raise LaunchError("--resume RUN continues a run in its own directory; drop --run-dir")
    if resume:
        if "://" in resume:
            raise LaunchError(f"--resume {resume}: a run directory here; bring it over first: launch pull {resume}")
        path = Path(resume)
        if not path.is_dir():
            alternative = Path(options.runs_dir) / resume
            if alternative.is_dir():
                path = alternative
            elif not (JOBS[name].storage_arg and option_value(args, "--storage")):
                raise LaunchError(f"--resume {resume}: no such run directory (here or under {options.runs_dir}/)")
        return args, path, True
    path = Path(given) if given else Path(options.runs_dir) / new_run_id(name)
    if LaunchRecord.exists(path):
        held = LaunchRecord.read(path)
        status = read_run(path).get("status", "unknown") if (path / "run.json").is_file() else "not started"
        raise LaunchError(f"--run-dir {path}: already holds a {held.job} run (status {status}); continue it with --resume {path}, "
                          "or choose a new --run-dir")
    return args, path, False


def check_arguments(job: Job, record: LaunchRecord | None) -> list[str]:
    """What the job's --check is given here: a new run's arguments and run directory, or a continuation's --resume with
    its inputs where they were first found (unless the user points at them anew)."""
    if not job.resume:
        return [*job.args, *(["--run-dir", str(job.run_dir)] if job.spec.makes_run else [])]
    given = assignments(job.args)
    kept = [f"{key}={spec.location}" for key, spec in (record.inputs if record else {}).items()
            if key not in given and not spec.regenerable]
    return ["--resume", str(job.run_dir), *job.args, *(["--set", *kept] if kept else [])]


def unsettled(record: LaunchRecord) -> bool:
    """Something of the run is still out there: a unit running, one not brought back, or a part never started."""
    return any(not chain or not chain[-1].finished or chain[-1].pulled is not True for chain in map(record.chain, range(record.parts)))


def still_elsewhere(record: LaunchRecord, run_dir: Path) -> None:
    """A run continued on another backend must have ended where it was and come back here first."""
    backend, run = reattach(run_dir)
    for unit in record.units:
        if not unit.finished:
            try:
                unit.see(*backend.poll(run, unit))
            except Unreachable as exc:
                raise LaunchError(f"{run_dir} ran on {record.backend}, which cannot be asked how {unit.name} stands ({exc}); "
                                  "try again when it answers") from None
        if not unit.finished:
            raise LaunchError(f"{run_dir} is still running on {record.backend} ({unit.name}); stop it (launch stop {run_dir}) or let "
                              f"it end, then continue it here")
    if unsettled(record):
        raise LaunchError(f"{run_dir}: what {record.backend} last ran has not come back here; bring it first: launch pull {run_dir}")


def launch(backend_name: str, name: str, job_args: list[str], namespace: argparse.Namespace) -> int:
    backend_class = registry()[backend_name]
    backend = backend_class(backend_class.Options.from_namespace(namespace))
    options = backend.options
    spec = JOBS[name]
    if not spec.makes_run and (code := backend.run_here(name, job_args)) is not None:
        return code
    if backend.sends_code and not spec.remote:
        raise LaunchError(f"launch {backend_name} {name}: {name} reads run directories and indexes by path, and no launcher carries "
                          f"them to a remote compute yet; run it here (launch local {name} ...) on runs you pulled")
    args, run_dir, resume = run_directory(name, job_args, options)
    previous = LaunchRecord.read(run_dir) if resume and LaunchRecord.exists(run_dir) else None
    if previous and previous.job != name:
        raise LaunchError(f"{run_dir} is a {previous.job} run; this is {name}: continue it with the job that made it "
                          f"(launch {previous.backend} {previous.job} --resume {run_dir})")
    same_backend = previous is not None and previous.backend == backend_name
    if previous is not None and same_backend and backend.sends_code and unsettled(previous):  # it runs there: follow it again
        say(backend_name, f"following {run_dir} again")
        return follow(backend, Run(run_dir, previous), resuming=spec.resumable, resume_args=args)
    if resume and not spec.resumable:
        raise LaunchError(f"--resume: {name} does not continue runs; jobs that do: {', '.join(n for n, s in JOBS.items() if s.resumable)}")
    job = Job(name, args, run_dir, resume=resume, carry_run=resume and run_dir.is_dir() and not same_backend and backend.sends_code)
    try:
        if previous is not None and not same_backend:
            still_elsewhere(previous, run_dir)
        if not same_backend:
            backend.prepare(job)
        if spec.checkable and (not backend.sends_code or not same_backend):
            report = job_check(spec, check_arguments(job, previous))
            for option, path in report.outputs.items() if backend.sends_code else ():
                raise LaunchError(f"{option} {path}: on a remote backend a job writes only into its run directory, which comes back "
                                  f"here; drop {option}")
            job.inputs, job.work, job.config_extras = report.inputs, report.work, tuple(report.extras)
        if previous is not None and same_backend:
            record = previous
        else:
            bundle = code_bundle.collect(REPO_ROOT, options.max_bundle_mb) if backend.sends_code else None
            plan = backend.stage(job, bundle)
            if plan is None:
                return 0
            plan.job_args = plan.job_args or job.args
            record = LaunchRecord(backend=backend_name, run_id=run_dir.name, job=name, makes_run=spec.makes_run,
                                  parts=backend.parts(job), continues=resume, inputs=previous.inputs if previous else job.inputs,
                                  plan=plan.model_dump(), history=[*previous.history, previous.model_dump(exclude={"history"})] if previous else [])
    except Unreachable as exc:
        raise LaunchError(f"{exc}; nothing was started") from None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write(run_dir)
    except OSError as exc:
        raise LaunchError(f"{disk_problem(exc, run_dir)}, then start the run again") from None
    run = Run(run_dir, record)
    if not same_backend:
        say(backend_name, f"run {run_dir} on {backend.where(run)}")
    return follow(backend, run, resuming=resume, resume_args=args if resume else None)


def follow(backend: Backend, run: Run, resuming: bool = False, resume_args: list[str] | None = None) -> int:
    follower = Follower(backend, run, backend.options.patience, resuming, resume_args)
    try:
        if resuming:
            follower.resume()
        if backend.options.detach:
            follower.start_waiting()
            running = len(follower.active())
            say(backend.name, f"detached with {running} unit(s) running; follow with: launch logs {run.dir} --follow | "
                              f"launch status {run.dir} | launch pull {run.dir}"
                + (f"; start the rest with: launch {backend.name} {run.record.job} --resume {run.dir}" if follower.waiting() else ""))
            return 0
        return follower.follow()
    except Incomplete:
        raise
    except LaunchError as exc:  # the run was started: it may well go on without this launcher
        if exc.said:
            raise
        raise Incomplete(f"{exc}. The run may go on: launch status {run.dir} | launch logs {run.dir} --follow | "
                         f"launch pull {run.dir}") from None
    except KeyboardInterrupt:
        say(backend.name, f"interrupted; the run goes on: launch logs {run.dir} --follow | launch status {run.dir} | "
                          f"launch pull {run.dir}", error=True)
        return 130


def reattach(run_dir: Path) -> tuple[Backend, Run]:
    record = LaunchRecord.read(run_dir)
    backends = registry()
    if record.backend not in backends:
        raise LaunchError(f"{run_dir / 'launch.json'}: made by backend {record.backend!r}, which this checkout does not have "
                          f"({', '.join(backends)})")
    return backends[record.backend].reattach(record), Run(run_dir, record)

