"""``python -m jobs.sweep --space NAME|FILE``: a Ray Tune sweep over the training job's config.

Trials run the training job's own code and see the train and validation splits only; the winner is
chosen on validation, exported to ``RUN/best`` as an ordinary run directory and evaluated on the test
split once. ``RUN`` holds run.json, the space, ``trials.csv``/``trials.json``, the plot, ``best/``
and Tune's experiment (``tune/``, what ``--resume`` continues from).
"""
from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import sys
import time
from pathlib import Path

from data_shards import ShardError, check_shards, open_shards
from jobs import new_run_id, now
from jobs.config import ConfigError, parse_assignment
from jobs.hardware import HardwareError, check_gpus
from jobs.rundir import RunDir, git_state, launched_by, shards_record

log = logging.getLogger("streamapprox.sweep")
SPACE_COPY = "space.yaml"
STARTED = time.monotonic()  # a --time-budget counts from here
CONCLUDE_RESERVE_S = 30.0  # kept from the budget for Tune's graceful stop, the export and the test evaluation


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__)
    parser.add_argument("--space", help="a bundled space name (tune/spaces: temperature_depth, transformer_full) or a YAML file")
    parser.add_argument("--preset", help="training preset the trials start from (default: the space file's)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="fixed config for every trial, e.g. --set train.epochs=4 data.shards=/data/msrvtt")
    parser.add_argument("--num-samples", type=int, default=8, help="samples drawn from the space (x the grid size for grid() keys)")
    parser.add_argument("--scheduler", choices=["asha", "none"], default="asha", help="asha stops weak trials early (default)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once (default: as many as resources allow)")
    parser.add_argument("--cpus-per-trial", type=float, help="default: the CPUs shared evenly by concurrent trials")
    parser.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU (default: GPUs shared evenly, at most 1)")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs every trial runs before it can be stopped")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep the top 1/F at each rung")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search (which configs are sampled)")
    parser.add_argument("--storage", metavar="URL", help="mirror the sweep directory here while it runs (s3://..., a path)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint for --storage")
    parser.add_argument("--run-dir", help="the sweep directory (default: runs/sweep-<time>-<id>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep; finished trials are not rerun")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop resumably before this much wall-clock time")
    parser.add_argument("--epoch-budget", type=int, metavar="N",
                        help="every session (the first and each --resume) stops resumably after N trial-epochs were reported")
    parser.add_argument("--check", action="store_true", help="validate space, config, shards and dims, then exit")
    parser.add_argument("--check-report", metavar="FILE", help="with --check: the job's inputs as JSON, for remote launchers")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace):
    from tune.runner import SweepSettings

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples}: must be at least 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent {args.max_concurrent}: must be at least 1")
    if args.epoch_budget is not None and args.epoch_budget < 1:
        raise ConfigError(f"--epoch-budget {args.epoch_budget}: must be at least 1 trial-epoch")
    return SweepSettings(num_samples=args.num_samples, scheduler=args.scheduler, max_concurrent=args.max_concurrent,
                         cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, grace_period=args.grace_period,
                         reduction_factor=args.reduction_factor, seed=args.seed, epoch_budget=args.epoch_budget)


def overrides_dict(overrides: list[str]) -> dict:
    return dict(parse_assignment(assignment) for assignment in overrides)


def resolve(args: argparse.Namespace):
    """The space (base config included), settings, sweep directory and storage mirror; from the saved
    sweep when resuming (only data.shards may move, e.g. to where a new machine mounted the shards)."""
    from tune.runner import SweepSettings
    from tune.space import load_space
    from tune.storage import Mirror

    if args.resume:
        sweep = RunDir(args.resume)
        storage = args.storage
        if storage and not (sweep.path / "run.json").is_file():
            Mirror(sweep.path, storage, args.endpoint_url).pull()
        if not (sweep.path / "run.json").is_file():
            raise ConfigError(f"{sweep.path}: no run.json; not a sweep directory (give --storage URL to fetch it from storage)")
        info = sweep.read()
        if info.get("job") != "sweep":
            raise ConfigError(f"{sweep.path}: a {info.get('job')} run, not a sweep")
        moved = overrides_dict(args.overrides)
        if set(moved) - {"data.shards"} or args.space or args.preset:
            raise ConfigError("--resume continues a sweep with its own space and settings; only --set data.shards=PATH may change")
        saved = info["sweep"]
        space = load_space(str(sweep.path / SPACE_COPY), preset=saved["preset"])
        space.apply({**saved["overrides"], **moved})
        settings = SweepSettings(**saved["settings"])
        storage = storage or info.get("storage")
        return space, settings, sweep, (Mirror(sweep.path, storage, args.endpoint_url) if storage else None), saved["overrides"]
    if not args.space:
        raise ConfigError("--space NAME_OR_FILE is required (bundled: temperature_depth, transformer_full)")
    space = load_space(args.space, preset=args.preset)
    overrides = overrides_dict(args.overrides)
    space.apply(overrides)
    sweep = RunDir(args.run_dir or Path("runs") / new_run_id("sweep"))
    mirror = Mirror(sweep.path, args.storage, args.endpoint_url) if args.storage else None
    return space, settings_from(args), sweep, mirror, overrides


def start(sweep: RunDir, space, settings, overrides: dict, storage: str | None, shards) -> None:
    from dataclasses import asdict

    sweep.path.mkdir(parents=True, exist_ok=True)
    (sweep.path / "logs").mkdir(exist_ok=True)
    shutil.copyfile(space.source, sweep.path / SPACE_COPY)
    sweep.update(run_id=sweep.path.name, job="sweep", status="running", started_at=now(), git=git_state(Path(__file__).parent),
                 backend=launched_by(), storage=storage,
                 sweep={"space": space.source, "preset": space.preset, "metric": space.metric, "overrides": overrides,
                        "alias": secrets.token_hex(8),
                        "params": {key: str(dist) for key, dist in space.params.items()}, "settings": asdict(settings)},
                 shards=shards_record(space.trial_config({}).data.shards, shards))


def setup_logging(sweep: RunDir) -> None:
    (sweep.path / "logs").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True,
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(sweep.path / "logs" / "sweep.log")])


def write_check_report(path: Path, space, shards) -> None:
    from jobs.train import write_check_report as report_inputs

    report_inputs(path, "sweep", space.trial_config({}).data.shards, shards)


def conclude(sweep: RunDir, space, settings) -> int:
    """Table, winner (validation only), plot, best/ export, then the one test evaluation."""
    from jobs.evaluate import evaluate_run
    from tune.results import choose_winner, export_best, finished, load_experiment, trial_rows, write_plot, write_table
    from tune.runner import expected_trials

    experiment = load_experiment(sweep.path)
    rows = trial_rows(experiment, space)
    write_table(sweep.path, rows)
    epochs = sum(row["epochs_run"] for row in rows)
    if not finished(rows, expected_trials(space, settings)):
        sweep.update(status="incomplete", global_step=epochs, trials=len(rows))
        log.info("sweep incomplete (%d of %d trials finished); continue with --resume %s",
                 sum(row["status"] in ("TERMINATED", "ERROR") for row in rows), expected_trials(space, settings), sweep.path)
        return 0
    metric = space.metric
    winner = choose_winner(rows, metric)
    sweep.update(global_step=epochs, trials=len(rows), selected_at=now(),
                 winner={"trial_id": winner["trial_id"], "params": {k: winner[k] for k in space.params},
                         "metric": f"val_{metric}", "value": winner[f"val_{metric}"], "best_epoch": winner["best_epoch"]})
    log.info("winner on validation: trial %s, val %s %.2f, %s", winner["trial_id"], metric, winner[f"val_{metric}"],
             {k: winner[k] for k in space.params})
    best = export_best(experiment, sweep.path, winner, metric)
    write_plot(sweep.path, rows, space, winner["trial_id"])
    test = evaluate_run(best, checkpoint="best")
    winner.update({f"test_{key}": test[key] for key in ("s2t_r1", "s2t_r5", "s2t_r10", "s2t_medr", "t2s_r1")})
    write_table(sweep.path, rows)
    sweep.update(status="complete", ended_at=now(), test={key: test[key] for key in ("s2t_r1", "s2t_r5", "s2t_r10", "s2t_medr", "t2s_r1")},
                 best={"metric": metric, "value": winner[f"val_{metric}"], "run": "best"})
    log.info("winner on test (read once): s2t R@1 %.2f R@5 %.2f R@10 %.2f MedR %.1f | t2s R@1 %.2f", test["s2t_r1"], test["s2t_r5"],
             test["s2t_r10"], test["s2t_medr"], test["t2s_r1"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        space, settings, sweep, mirror, overrides = resolve(args)
        base = space.trial_config({})
        d = base.data
        # --check verifies every split (the winner's evaluation will read test); the sweep itself
        # opens train and validation only.
        shards = check_shards(d.shards) if args.check else open_shards(d.shards, splits=(d.train_split, d.val_split))
        from jobs.train import check_dims

        check_dims(base, shards.dims, str(shards.root))
        check_gpus()
        if args.check:
            if args.check_report:
                write_check_report(Path(args.check_report), space, shards)
            print(f"check ok: sweep of {len(space.params)} keys ({', '.join(space.params)}) over preset {space.preset} on {shards.root}")
            return 0
    except (ConfigError, ShardError, HardwareError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(args, space, settings, sweep, mirror, overrides, shards)


def run(args, space, settings, sweep: RunDir, mirror, overrides: dict, shards) -> int:
    import ray

    from tune.results import finished, load_experiment, trial_rows
    from tune.runner import EXPERIMENT, expected_trials, run_trials

    if args.resume:
        sweep.update(status="running", error=None, resumed_at=[*sweep.read().get("resumed_at", []), now()],
                     **({"storage": mirror.url} if mirror else {}))
    else:
        start(sweep, space, settings, overrides, args.storage, shards)
    setup_logging(sweep)
    try:
        searched = args.resume and (sweep.path / EXPERIMENT).is_dir() and finished(trial_rows(load_experiment(sweep.path), space), expected_trials(space, settings))
        if not searched:
            budget = max(1.0, args.time_budget - (time.monotonic() - STARTED) - CONCLUDE_RESERVE_S) if args.time_budget else None
            run_trials(sweep.path, space, settings, resume=bool(args.resume), time_budget=budget,
                       callbacks=[mirror.callback()] if mirror else None)
        code = conclude(sweep, space, settings)
    except (ConfigError, ShardError) as exc:
        sweep.update(status="failed", error=str(exc), ended_at=now())
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except BaseException as exc:
        sweep.update(status="failed", error=f"{type(exc).__name__}: {exc}", ended_at=now())
        raise
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(sweep.path / "trials", ignore_errors=True)
        if mirror:
            mirror.push()
    return code


if __name__ == "__main__":
    sys.exit(main())
