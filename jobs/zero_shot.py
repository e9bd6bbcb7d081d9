"""``python -m jobs.zero_shot``: the floor every student must beat, as an ordinary run directory.

The middle sampled CLIP frame through a fixed random projection into the teacher's space (preset
``zero_shot``). Nothing is trained: the run records the resolved config and a ``best.pt`` holding
the projection, then evaluates it on the test split, so ``evaluate`` and ``report`` treat it like
any trained run.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from data_shards import ShardError, check_shards, open_shards
from jobs import exit_job, new_run_id, now
from jobs.config import ConfigError, load_config
from jobs.evaluate import evaluate_run
from jobs.run_lock import RunInUse, RunLock
from jobs.rundir import RunDir, launched_by, new_run_record, save_atomic
from jobs.shard_checks import check_dims, warn_random_init, write_check_report
from model import build_student

PRESET = "zero_shot"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.zero_shot", description=__doc__)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set data.shards=PATH model.seed=1")
    parser.add_argument("--config", help="a YAML file merged over the preset")
    parser.add_argument("--run-dir", help="where to write the run (default: runs/zero_shot-<time>-<id>)")
    parser.add_argument("--check", action="store_true", help="only validate config and shards, then exit")
    parser.add_argument("--check-report", metavar="FILE", help="with --check: write the job's inputs as JSON, for remote launchers")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        cfg = load_config(PRESET, args.config, args.overrides)
        if cfg.model.kind != "zero_shot":
            raise ConfigError(f"model.kind={cfg.model.kind}: the zero_shot job builds only the zero_shot floor (train it with train_mlp)")
        shards = (check_shards if args.check else open_shards)(cfg.data.shards)
        check_dims(cfg, shards.dims, str(shards.root))
        warn_random_init(shards)
        if args.check:
            if args.check_report:
                write_check_report(Path(args.check_report), cfg.job, cfg.data.shards, shards)
            print(f"check ok: zero_shot floor on {shards.root} {shards.manifest.splits}")
            return 0
    except (ConfigError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = RunDir(args.run_dir or Path("runs") / new_run_id(cfg.job))
    if (run.path / "run.json").is_file():
        print(f"error: --run-dir {run.path}: already holds a {run.read().get('job')} run; choose a new --run-dir", file=sys.stderr)
        return 2
    try:
        with RunLock(run.path, cfg.job):
            return make_floor(run.create(), cfg, shards)
    except RunInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def make_floor(run: RunDir, cfg, shards) -> int:
    logging.getLogger("streamapprox.zero_shot").info("run directory %s", run.path)
    student = build_student(cfg.model)
    run.update(**new_run_record(run, cfg, shards), preset=PRESET, student_parameters=0, backend=launched_by(), status="running")
    state = {"model": {f"student.{key}": value for key, value in student.state_dict().items()}, "config": cfg.model_dump(mode="json"),
             "epoch": None, "shards_digest": shards.digest()}
    try:
        save_atomic(state, run.checkpoints / "best.pt")
        metrics = evaluate_run(run.path, checkpoint="best")
    except BaseException as exc:
        run.update(status="failed", error=f"{type(exc).__name__}: {exc}", ended_at=now())
        raise
    run.update(status="complete", ended_at=now())
    print(f"zero-shot floor on test ({int(metrics['n'])} videos): s2t R@1 {metrics['s2t_r1']:.2f}, t2s R@1 {metrics['t2s_r1']:.2f}")
    return 0


if __name__ == "__main__":
    exit_job(main())
