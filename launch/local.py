"""The local backend (the embedded default): the job runs on this machine under ``accelerate launch``."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from jobs import JOBS, JobSpec, new_run_id

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ACCELERATE_CONFIG = REPO_ROOT / "accelerate_config.yaml"
NAMED_CONFIGS = Path(__file__).resolve().parent / "accelerate_configs"


class LaunchError(RuntimeError):
    """A problem found before the job starts; the message says what to change."""


def resolve_accelerate_config(choice: str | None) -> Path:
    """A path, or the name of a file in launch/accelerate_configs/ (e.g. ``cpu_ddp2``)."""
    if choice is None:
        return DEFAULT_ACCELERATE_CONFIG
    for candidate in (Path(choice), NAMED_CONFIGS / f"{choice}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    names = sorted(p.stem for p in NAMED_CONFIGS.glob("*.yaml"))
    raise LaunchError(f"--accelerate-config {choice!r}: no such file, and not one of the bundled configs {names}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accelerate-config", metavar="NAME_OR_PATH",
                        help=f"accelerate config file or bundled name ({', '.join(sorted(p.stem for p in NAMED_CONFIGS.glob('*.yaml')))}); "
                        "default: accelerate_config.yaml (one CPU process)")
    parser.add_argument("--num-processes", type=int, help="override the accelerate config's process count")
    parser.add_argument("--runs-dir", default="runs", help="where new run directories go (default: ./runs)")


def mixed_precision(requested: str, gpus: list[dict]) -> str:
    """``auto``: bf16 where every GPU has it (compute capability 8.0+), fp16 on older ones (T4, P100), none on CPU."""
    if requested != "auto":
        return requested
    if not gpus:
        return "no"
    return "bf16" if all(float(g["capability"]) >= 8.0 for g in gpus) else "fp16"


def option_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def job_command(spec: JobSpec, job_args: list[str], options: argparse.Namespace) -> list[str]:
    if not spec.distributed:
        return [sys.executable, "-m", spec.module, *job_args]
    command = [sys.executable, "-m", "launch.accelerate_run", "--config_file", str(resolve_accelerate_config(options.accelerate_config))]
    if options.num_processes:
        command += ["--num_processes", str(options.num_processes)]
    return [*command, "-m", spec.module, *job_args]


def summarize(run_dir: Path, backend: str = "local") -> str:
    """What a person wants to see when the job ends: where the run is, its state, its key figures."""
    from jobs.run_lock import liveness

    info_path = run_dir / "run.json"
    if not info_path.is_file():
        return f"run directory: {run_dir} (no run.json: the job stopped before training started)"
    info = json.loads(info_path.read_text())
    status, alive = info.get("status"), None
    if status == "running":
        alive, known = liveness(run_dir)
        if alive is False:  # nobody holds the run directory any more: its process is gone
            status = (f"died (pid {known.get('pid', '?')} on {known.get('host', '?')}; last heartbeat {known.get('heartbeat', 'unknown')}; "
                      "run.json still says running)")
        elif alive:
            status = f"running (pid {known.get('pid', '?')} on {known.get('host', '?')}; last heartbeat {known.get('heartbeat', 'unknown')})"
    lines = [f"run directory: {run_dir}", f"status: {status}"]
    if info.get("status") == "failed" and info.get("error"):
        lines.append(f"error: {info['error']}")
    best = info.get("best") or {}
    if best.get("value") is not None:
        lines.append(f"best validation {best['metric']}: {best['value']:.2f}")
    results = run_dir / "eval" / "results.json"
    if best.get("run"):  # a sweep: its best trial is a run directory of its own
        lines.append(f"best run: {run_dir / best['run']} {json.dumps((info.get('winner') or {}).get('params', {}))}")
        results = run_dir / best["run"] / "eval" / "results.json"
    if results.is_file():
        m = json.loads(results.read_text())["metrics"]
        lines.append(f"test ({int(m['n'])} videos): student->teacher R@1 {m['s2t_r1']:.2f}  R@5 {m['s2t_r5']:.2f}  "
                     f"R@10 {m['s2t_r10']:.2f}  MedR {m['s2t_medr']:.1f} | teacher->student R@1 {m['t2s_r1']:.2f}")
    index = info.get("index")
    if index:
        lines.append(f"index: {index['index']}: {index['videos']} videos, {index['frames']} frames ({index['shards_indexed']} shards "
                     f"indexed, {index['shards_unchanged']} unchanged); search it with: launch serve --index {index['index']}")
    spec = JOBS.get(info.get("job", ""))
    resumable = (run_dir / "checkpoints" / "last.pt").is_file() or info.get("job") == "sweep"
    if (info.get("status") in ("incomplete", "failed") or alive is False) and spec and spec.resumable and resumable \
            and "diverged" not in str(info.get("error")):
        lines.append(f"resume with: launch {backend} {info['job']} --resume {run_dir}")
    return "\n".join(lines)


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _die_with_parent() -> None:
    """In the child, before it runs: get SIGTERM when the launcher dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(command: list[str], env: dict) -> int:
    """Run ``command`` in its own process group and pass on every Ctrl-C, SIGTERM and SIGHUP the launcher gets, once;
    if the launcher itself is killed, the child gets SIGTERM. Nothing it started outlives it unasked."""
    process = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)

    def forward(signum, frame) -> None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    previous = {signum: signal.signal(signum, forward) for signum in SIGNALS}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(name: str, spec: JobSpec, job_args: list[str], options: argparse.Namespace) -> int:
    job_args = list(job_args)
    run_dir = option_value(job_args, "--resume") or option_value(job_args, "--run-dir")
    if spec.makes_run and run_dir is None:
        run_dir = str(Path(options.runs_dir) / new_run_id(name))
        job_args += ["--run-dir", run_dir]
    env = {**os.environ, "STREAMAPPROX_BACKEND": "local", "PYTHONUNBUFFERED": "1"}
    if spec.checkable:
        # Config, shard digests and dims are checked once, in one plain process, with the job's own
        # exit code -- before any worker starts.
        check = subprocess.run([sys.executable, "-m", spec.module, *job_args, "--check"], env=env)
        if check.returncode != 0:
            return check.returncode
    command = job_command(spec, job_args, options)
    print(f"launch local: {' '.join(command)}", flush=True)
    code = supervise(command, env)
    if spec.makes_run and run_dir:
        print(summarize(Path(run_dir)), flush=True)
    return code


def run_program(module: str, args: list[str]) -> int:
    """A program (report, serve) runs here in its own process: it loads models, which the launcher never imports."""
    return supervise([sys.executable, "-m", module, *args], {**os.environ, "PYTHONUNBUFFERED": "1"})
