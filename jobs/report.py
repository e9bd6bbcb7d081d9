"""``python -m jobs.report RUN [RUN ...]``: one readable report over runs from any backend.

For each run: its test metrics in both directions (``eval/results.json``; evaluated here first when
missing), what it was trained on, and plots of its embeddings (``eval/embeddings.npz``). Then the
costs, measured here and now, side by side: parameters, FLOPs (torch's flop counter, FLOPs = 2 x
MACs) and latency (warm-up, then the median of repeats, batch 1 and 256, CPU and a GPU when present)
of each run's head, the whole student pipeline and the teacher pipeline (``model.pipelines``).

Writes ``report.md`` (read top to bottom), ``comparison.csv``/``comparison.md``, ``costs.json`` and
the plots: into ``RUN/eval/`` for one run, into ``--out`` (default ``reports/report-<time>-<id>``)
for several.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from data_shards import ShardError
from data_shards.files import atomic_write_text
from jobs import exit_job, new_run_id, now
from jobs.config import ConfigError, layered
from jobs.evaluate import load_student
from jobs.report_text import METRIC_COLUMNS, cost_rows, data_text, markdown_table, metric_rows, ratio_lines, render
from jobs.report_runs import RunReport, load_run
from model.encoders import EncoderError
from model.pipelines import BATCHES, Cost, default_devices, head_pipeline, measure

log = logging.getLogger("streamapprox.report")


def needs_extract_extra(exc: ImportError) -> ConfigError:
    return ConfigError(f"measuring the encoders needs the extract extra ({exc}): pip install -e '.[extract]', or --no-costs")


def encoders_config(runs: list[RunReport], overrides: list[str]):
    """The encoders (``jobs.extract.EncodersConfig``) the first run's shards were extracted with
    (recorded in their manifest), or the architectures the synthetic shards stand in for; ``--set``
    changes either. Imported here: the extraction module needs the extract extra (PyAV)."""
    try:
        from jobs.extract import EncodersConfig
    except ImportError as exc:
        raise needs_extract_extra(exc) from None
    recorded = next((r.info["shards"]["encoders_config"] for r in runs if (r.info.get("shards") or {}).get("encoders_config")), None)
    source = "as recorded in the shards' manifest" if recorded else "the default extraction encoders (the synthetic shards imitate them)"
    if overrides:
        source += f", with --set {' '.join(overrides)}"
    try:
        return EncodersConfig.model_validate(layered(dict(recorded or {}), None, overrides)), source
    except ValueError as exc:
        raise ConfigError(f"encoders for the cost measurement: {exc}") from None


def measure_costs(runs: list[RunReport], cfg, devices: list[torch.device], batches: tuple[int, ...], repeats: int,
                  budget_s: float) -> list[Cost]:
    """Each run's head (in run order), then the whole student pipeline (with the first trained run's
    head) and the teacher pipeline, all in the extraction's precision."""
    from model.encoders import ClipImageEncoder, VGGishEncoder
    from model.pipelines import dense_clip_pipeline, imagebind_pipeline, student_pipeline
    from model.teachers import build_teacher

    def progress(line: str) -> None:
        log.info("cost: %s", line)

    cpu = torch.device("cpu")
    try:
        clip = ClipImageEncoder(cfg.student.clip, random_init=True, device=cpu, seed=cfg.seed)
        vggish = VGGishEncoder(cfg.student.audio.vggish, random_init=True, device=cpu, seed=cfg.seed)
    except ImportError as exc:
        raise needs_extract_extra(exc) from None
    heads = [load_student(run.path / "checkpoints" / "best.pt")[0] for run in runs]
    trained = next((i for i, r in enumerate(runs) if not r.is_floor), 0)
    run, head = runs[trained], heads[trained]
    if clip.dim != head.cfg.clip_dim:
        raise ConfigError(f"{run.path}: its head takes {head.cfg.clip_dim}-d CLIP features but CLIP {cfg.student.clip.model} "
                          f"gives {clip.dim}-d; measure the encoders its shards were made with (--set student.clip.model=...)")
    costs = [measure(head_pipeline(f"head: {r.label}", h), devices, batches, repeats, budget_s, cfg.precision, progress)
             for r, h in zip(runs, heads)]
    student = student_pipeline(f"student pipeline ({run.label} head)", clip, vggish, head, cfg.student.audio.segment_s)
    costs.append(measure(student, devices, batches, repeats, budget_s, cfg.precision, progress))
    teacher = build_teacher(cfg.teacher, clip, random_init=True, device=cpu, seed=cfg.seed)
    if cfg.teacher.kind == "imagebind":
        teacher_pipeline = imagebind_pipeline(f"teacher pipeline (ImageBind {Path(cfg.teacher.imagebind.architecture).stem})",
                                              teacher.model)
    else:
        teacher_pipeline = dense_clip_pipeline(f"teacher pipeline (dense CLIP x {cfg.teacher.frames})", teacher.encoder,
                                               cfg.teacher.frames)
    costs.append(measure(teacher_pipeline, devices, batches, repeats, budget_s, cfg.precision, progress))
    return costs


def write_tables(out: Path, runs: list[RunReport], costs: list[Cost], machine: dict) -> None:
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["run", "preset", "job", "student", "loss", "data", *METRIC_COLUMNS, "n", "head_parameters", "head_flops_per_video"])
    heads: Sequence[Cost | None] = costs[:len(runs)] or [None] * len(runs)  # measure_costs puts the heads first, in run order
    for run, head in zip(runs, heads):
        metrics = run.results["metrics"]
        writer.writerow([run.run_id, run.preset, run.info.get("job"), run.student_text(), run.loss_text(), data_text(run.info),
                         *(metrics[c] for c in METRIC_COLUMNS), int(metrics["n"]),
                         head.parameters if head else "", head.flops_per_video if head else ""])
    atomic_write_text(out / "comparison.csv", table.getvalue())
    header, rows = metric_rows(runs)
    text = "## Retrieval (test split)\n\n" + markdown_table(header, rows)
    if costs:
        header, rows = cost_rows(costs)
        text += "\n## Costs (measured together, this machine)\n\n" + markdown_table(header, rows)
    atomic_write_text(out / "comparison.md", text)
    atomic_write_text(out / "costs.json", json.dumps({"measured_at": now(), "machine": machine,
                                                     "costs": [c.as_dict() for c in costs]}, indent=2) + "\n")


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"host": platform.node(), "cpu": cpu, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (from any backend, after `launch pull`/`sync`)")
    parser.add_argument("--out", help="where a report over several runs goes (default: reports/report-<time>-<id>)")
    parser.add_argument("--shards", help="shard set to evaluate runs that have no eval/ results yet (default: each run's own)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="encoders the costs are measured for, e.g. --set teacher.kind=dense_clip student.clip.model=ViT-L-14")
    parser.add_argument("--devices", default="auto", help="cpu, cuda or cpu,cuda (default: cpu, plus cuda when present)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help=f"batch sizes timed (default: {','.join(map(str, BATCHES))})")
    parser.add_argument("--repeats", type=positive, default=5, help="timed repeats per latency cell (after one warm-up)")
    parser.add_argument("--latency-budget", type=float, default=120.0, metavar="SECONDS",
                        help="a latency cell predicted to take longer than this is skipped and says so (ImageBind-huge at batch 256 on CPU)")
    parser.add_argument("--no-costs", action="store_true", help="metrics and plots only")
    return parser.parse_args(argv)


def resolve_devices(text: str) -> list[torch.device]:
    if text == "auto":
        return default_devices()
    try:
        devices = [torch.device(name.strip()) for name in text.split(",") if name.strip()]
    except RuntimeError:
        devices = []
    if not devices or any(d.type not in ("cpu", "cuda") for d in devices):
        raise ConfigError(f"--devices {text!r}: cpu, cuda or cpu,cuda")
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise ConfigError("--devices cuda: no GPU visible here")
    return devices


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(sorted({int(b) for b in text.split(",") if b.strip()}))
    except ValueError:
        batches = ()
    if not batches or batches[0] < 1:
        raise ConfigError(f"--batches {text!r}: positive batch sizes separated by commas, e.g. 1,256")
    return batches


def main(argv: list[str] | None = None) -> int:
    from jobs.report_plots import draw_all

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    paths = [Path(p) for p in args.runs]
    if len(set(map(os.path.realpath, paths))) != len(paths):
        print("error: a run is listed twice", file=sys.stderr)
        return 2
    try:
        devices, batches = resolve_devices(args.devices), parse_batches(args.batches)
        runs = [load_run(path, args.shards) for path in paths]
        costs, encoders_source = [], ""
        if not args.no_costs:
            cfg, encoders_source = encoders_config(runs, args.overrides)
            costs = measure_costs(runs, cfg, devices, batches, args.repeats, args.latency_budget)
    except (ConfigError, EncoderError, ShardError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = paths[0] / "eval" if len(paths) == 1 else Path(args.out or Path("reports") / new_run_id("report"))
    out.mkdir(parents=True, exist_ok=True)
    plots = draw_all(out, runs, costs)
    here = machine()
    write_tables(out, runs, costs, here)
    command = "launch report " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = out / "report.md"
    atomic_write_text(report, render(runs, costs, plots, encoders_source, command, here))
    print("\n".join(ratio_lines(costs)))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    exit_job(main())
