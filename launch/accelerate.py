"""The one place the command that starts a distributed job is built, for every backend: from the job, the devices
it gets, the nodes it spans and the precision asked for -> ``accelerate launch`` (through ``launch.compute.
accelerate_run``) with its environment. Standard library only: a Kaggle kernel builds its command with it before
the job's dependencies are installed."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ACCELERATE_CONFIG = REPO_ROOT / "accelerate_config.yaml"
NAMED_CONFIGS = Path(__file__).resolve().parent / "accelerate_configs"
PRECISIONS = ("auto", "no", "fp16", "bf16")


class UnknownConfig(ValueError):
    """An --accelerate-config that is neither a file nor a bundled name."""


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in NAMED_CONFIGS.glob("*.yaml"))


def resolve_config(choice: str | None) -> Path:
    """A path, or the name of a file in launch/accelerate_configs/ (e.g. ``cpu_ddp2``); None: the embedded default."""
    if choice is None:
        return DEFAULT_ACCELERATE_CONFIG
    for candidate in (Path(choice), NAMED_CONFIGS / f"{choice}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise UnknownConfig(f"--accelerate-config {choice!r}: no such file, and not one of the bundled configs {bundled_configs()}")


def mixed_precision(requested: str, gpus: list[dict]) -> str:
    """``auto``: bf16 where every GPU has it (compute capability 8.0+), fp16 on older ones (T4, P100), none on CPU."""
    if requested != "auto":
        return requested
    if not gpus:
        return "no"
    return "bf16" if all(float(g["capability"]) >= 8.0 for g in gpus) else "fp16"


@dataclass(frozen=True)
class Devices:
    """What a job gets: the GPUs of one node as ``jobs.hardware`` probes them ([] on CPU), processes per node (default:
    one per GPU, one on CPU), how many nodes and which one this is, and where rank 0 listens."""

    gpus: list[dict] = field(default_factory=list)
    per_node: int | None = None
    nodes: int = 1
    rank: int = 0
    main_address: str | None = None
    main_port: int = 29500

    @property
    def processes(self) -> int:
        return self.nodes * (self.per_node or max(len(self.gpus), 1))


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]


def job_command(python: str, module: str, job_args: list[str], distributed: bool, devices: Devices | None = None,
                precision: str = "auto", config_file: Path | None = None) -> Command:
    """The command that runs ``module``: one plain process, or -- for a distributed job -- ``accelerate launch`` over
    ``devices`` (or as ``config_file`` says, with ``devices.per_node`` overriding its process count)."""
    if not distributed:
        return Command([python, "-m", module, *job_args], {})
    accelerate = [python, "-m", "launch.compute.accelerate_run"]
    if config_file is not None:
        count = ["--num_processes", str(devices.per_node)] if devices and devices.per_node else []
        return Command([*accelerate, "--config_file", str(config_file), *count, "-m", module, *job_args], {})
    devices = devices or Devices()
    arguments = ["--num_machines", str(devices.nodes), "--machine_rank", str(devices.rank), "--num_processes", str(devices.processes),
                 "--mixed_precision", mixed_precision(precision, devices.gpus), "--dynamo_backend", "no"]
    if devices.nodes > 1:
        arguments += ["--main_process_ip", devices.main_address or "127.0.0.1", "--main_process_port", str(devices.main_port)]
    env = {}
    if devices.processes > 1:
        arguments.append("--multi_gpu")  # torch's launcher; on CPU its processes use gloo
        if not devices.gpus:
            env["ACCELERATE_USE_CPU"] = "true"  # what a config's use_cpu says; --cpu would mean one process
    elif not devices.gpus:
        arguments.append("--cpu")
    return Command([*accelerate, *arguments, "-m", module, *job_args], env)
