"""``python -m jobs.sweep --space NAME|FILE``: a Ray Tune sweep over the training job's config.

Trials run the training job's own code and see the train and validation splits only; the winner is
chosen on validation, exported to ``RUN/best`` as an ordinary run directory and evaluated on the test
split once. ``RUN`` holds run.json, the space, ``trials.csv``/``trials.json``, the plot, ``best/``
and Tune's experiment (``tune/``, what ``--resume`` continues from).
"""
from __future__ import annotations

import argparse
import functools
import logging
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from data_shards import ShardError, check_shards, open_shards
from jobs import exit_job, new_run_id, now
from jobs.config import ConfigError, parse_assignment
from jobs.hardware import HardwareError, check_gpus
from jobs.rundir import RunDir, git_state, launched_by, shards_record
from jobs.run_lock import RunInUse, RunLock
from jobs.shard_checks import check_fits

if TYPE_CHECKING:  # the tune modules import Ray and torch: only where a sweep runs
    from data_shards.shard_set import ShardSet
    from tune.runner import Experiment, SweepSettings
    from tune.space import SearchSpace
    from tune.storage import Mirror

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
    parser.add_argument("--storage", metavar="URL",
                        help="where the sweep persists (s3://... or a path every node mounts): Tune's experiment, written there by "
                        "every trial on every node, and a mirror of the sweep directory")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint for --storage")
    parser.add_argument("--run-dir", help="the sweep directory (default: runs/sweep-<time>-<id>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep; finished trials are not rerun")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop resumably before this much wall-clock time")
    parser.add_argument("--max-failures", type=int, default=2,
                        help="times a failed trial (its node died) restarts from its last checkpoint (default 2)")
    parser.add_argument("--allow-errored-trials", action="store_true",
                        help="pick the winner among the other trials when some errored (otherwise the sweep ends failed, no winner)")
    parser.add_argument("--epoch-budget", type=int, metavar="N",
                        help="every session (the first and each --resume) stops resumably after N trial-epochs were reported")
    parser.add_argument("--check", action="store_true", help="validate space, config, shards and dims, then exit")
    parser.add_argument("--check-report", metavar="FILE", help="with --check: the job's inputs as JSON, for remote launchers")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> SweepSettings:
    from tune.runner import SweepSettings

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples}: must be at least 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent {args.max_concurrent}: must be at least 1")
    if args.epoch_budget is not None and args.epoch_budget < 1:
        raise ConfigError(f"--epoch-budget {args.epoch_budget}: must be at least 1 trial-epoch")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures {args.max_failures}: must be 0 or more")
    return SweepSettings(num_samples=args.num_samples, scheduler=args.scheduler, max_concurrent=args.max_concurrent,
                         cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, grace_period=args.grace_period,
                         reduction_factor=args.reduction_factor, seed=args.seed, epoch_budget=args.epoch_budget,
                         max_failures=args.max_failures, allow_errored_trials=args.allow_errored_trials)


def overrides_dict(overrides: list[str]) -> dict:
    """The --set values as trials take them: a value naming a file or folder here by a relative path (a shard set, an
    architecture file) made absolute, since each trial runs in a directory of its own (Ray Tune's trial directory)."""
    return {key: absolute_if_local(value) for key, value in map(parse_assignment, overrides)}


def absolute_if_local(value: object) -> object:
    if isinstance(value, str) and "://" not in value and not Path(value).is_absolute() and Path(value).exists():
        return str(Path(value).resolve())
    return value


@dataclass
class Sweep:
    """A sweep as this session runs it."""

    space: SearchSpace
    settings: SweepSettings
    run: RunDir
    alias: str  # names the sweep's paths that must stay the same in every session (tune.runner.experiment_dir)
    overrides: dict
    storage: str | None  # the --storage URL
    mirror: Mirror | None  # of the sweep directory to storage
    experiment: Experiment  # where Tune keeps the experiment


def resolve(args: argparse.Namespace) -> Sweep:
    """The space (base config included), settings, sweep directory, storage and experiment; from the saved
    sweep when resuming (only data.shards may move, e.g. to where a new machine mounted the shards)."""
    from tune.runner import Experiment, SweepSettings
    from tune.space import load_space
    from tune.storage import Mirror, ray_storage

    if args.resume:
        sweep = RunDir(args.resume)
        from jobs.train import refuse_if_owned

        refuse_if_owned(sweep.path)
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
        settings.allow_errored_trials = settings.allow_errored_trials or args.allow_errored_trials
        storage, overrides, alias = storage or info.get("storage"), saved["overrides"], saved.get("alias") or sweep.path.name
    else:
        if not args.space:
            raise ConfigError("--space NAME_OR_FILE is required (bundled: temperature_depth, transformer_full)")
        space = load_space(args.space, preset=args.preset)
        overrides = overrides_dict(args.overrides)
        space.apply(overrides)
        sweep = RunDir(args.run_dir or Path("runs") / new_run_id("sweep"))
        if (sweep.path / "run.json").is_file():
            raise ConfigError(f"--run-dir {sweep.path}: already holds a {sweep.read().get('job')} run; continue it with --resume "
                              f"{sweep.path}, or choose a new --run-dir")
        if args.time_budget is not None and args.time_budget <= 0:
            raise ConfigError(f"--time-budget {args.time_budget:g}: must be a positive number of seconds")
        settings, storage, alias = settings_from(args), args.storage, secrets.token_hex(8)
    ray_store = ray_storage(storage, args.endpoint_url) if storage else None
    return Sweep(space, settings, sweep, alias, overrides, storage, Mirror(sweep.path, storage, args.endpoint_url) if storage else None,
                 Experiment.of(sweep.path, alias, ray_store))


def start(sweep: Sweep, shards: ShardSet) -> None:
    space, path = sweep.space, sweep.run.path
    path.mkdir(parents=True, exist_ok=True)
    (path / "logs").mkdir(exist_ok=True)
    shutil.copyfile(space.source, path / SPACE_COPY)
    sweep.run.update(run_id=path.name, job="sweep", status="running", started_at=now(), git=git_state(Path(__file__).parent),
                     backend=launched_by(), storage=sweep.storage,
                     sweep={"space": space.source, "preset": space.preset, "metric": space.metric, "overrides": sweep.overrides,
                            "alias": sweep.alias, "params": {key: str(dist) for key, dist in space.params.items()},
                            "settings": asdict(sweep.settings)},
                     shards=shards_record(space.trial_config({}).data.shards, shards))


def setup_logging(sweep: RunDir) -> None:
    (sweep.path / "logs").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True,
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(sweep.path / "logs" / "sweep.log")])


def write_check_report(path: Path, space: SearchSpace, shards: ShardSet) -> None:
    from jobs.shard_checks import write_check_report as report_inputs

    report_inputs(path, "sweep", space.trial_config({}).data.shards, shards)


def error_line(text: str | None) -> str:
    """The line of a trial's traceback that says what went wrong (its last exception line)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    said = [line for line in lines if ("Error" in line.split(":", 1)[0] or "Exception" in line.split(":", 1)[0]) and ":" in line]
    return (said or lines or ["(no error text)"])[-1][:300]


def conclude(sweep: Sweep) -> int:
    """Table, winner (validation only), plot, best/ export, then the one test evaluation. A sweep with errored
    trials ends failed, naming them, unless ``--allow-errored-trials``."""
    from jobs.evaluate import evaluate_run
    from tune.results import choose_winner, export_best, finished, load_experiment, trial_rows, write_plot, write_table
    from tune.runner import expected_trials

    space, settings, run = sweep.space, sweep.settings, sweep.run
    experiment = load_experiment(sweep.experiment)
    rows = trial_rows(experiment, space)
    write_table(run.path, rows)
    epochs = sum(row["epochs_run"] for row in rows)
    expected = expected_trials(space, settings)
    if not finished(rows, expected):
        run.update(status="incomplete", global_step=epochs, trials=len(rows))
        log.info("sweep incomplete (%d of %d trials finished); continue with --resume %s",
                 sum(row["status"] in ("TERMINATED", "ERROR") for row in rows), expected, run.path)
        return 0
    errors = {trial.trial_id: error_line(trial.get_error()) for trial in experiment.trials if trial.status == "ERROR"}
    errored = [{"trial_id": row["trial_id"], "params": {k: row[k] for k in space.params}, "error": errors[row["trial_id"]]}
               for row in rows if row["status"] == "ERROR"]
    for trial in errored:
        log.error("trial %s %s errored (after %d retries): %s", trial["trial_id"], trial["params"], settings.max_failures, trial["error"])
    if errored and not settings.allow_errored_trials:
        run.update(status="failed", global_step=epochs, trials=len(rows), errored_trials=errored, ended_at=now(),
                   error=f"{len(errored)} of {len(rows)} trials errored ({', '.join(t['trial_id'] for t in errored)}); no winner picked")
        print(f"error: {len(errored)} of {len(rows)} trials errored ({', '.join(t['trial_id'] + ': ' + t['error'] for t in errored)}); "
              f"no winner picked. Fix the cause and --resume {run.path} (errored trials restart from their last checkpoints), "
              "or pick among the others with --allow-errored-trials", file=sys.stderr)
        return 1
    metric = space.metric
    winner = choose_winner([row for row in rows if row["status"] != "ERROR"], metric)
    run.update(global_step=epochs, trials=len(rows), selected_at=now(), errored_trials=errored,
               winner={"trial_id": winner["trial_id"], "params": {k: winner[k] for k in space.params},
                       "metric": f"val_{metric}", "value": winner[f"val_{metric}"], "best_epoch": winner["best_epoch"]})
    log.info("winner on validation: trial %s, val %s %.2f, %s%s", winner["trial_id"], metric, winner[f"val_{metric}"],
             {k: winner[k] for k in space.params}, f" (chosen among {len(rows) - len(errored)}: {len(errored)} errored)" if errored else "")
    best = export_best(experiment, run.path, winner, metric)
    write_plot(run.path, rows, space, winner["trial_id"])
    test = evaluate_run(best, checkpoint="best")
    winner.update({f"test_{key}": test[key] for key in ("s2t_r1", "s2t_r5", "s2t_r10", "s2t_medr", "t2s_r1")})
    write_table(run.path, rows)
    run.update(status="complete", ended_at=now(), test={key: test[key] for key in ("s2t_r1", "s2t_r5", "s2t_r10", "s2t_medr", "t2s_r1")},
               best={"metric": metric, "value": winner[f"val_{metric}"], "run": "best"})
    log.info("winner on test (read once): s2t R@1 %.2f R@5 %.2f R@10 %.2f MedR %.1f | t2s R@1 %.2f", test["s2t_r1"], test["s2t_r5"],
             test["s2t_r10"], test["s2t_medr"], test["t2s_r1"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sweep = resolve(args)
        base = sweep.space.trial_config({})
        d = base.data
        # --check verifies every split (the winner's evaluation will read test); the sweep itself
        # opens train and validation only.
        shards = check_shards(d.shards) if args.check else open_shards(d.shards, splits=(d.train_split, d.val_split))
        sweep.space.validate(functools.partial(check_fits, shards=shards))  # at every edge of the space, as each trial gets it
        check_gpus()
        if args.check:
            if args.check_report:
                write_check_report(Path(args.check_report), sweep.space, shards)
            print(f"check ok: sweep of {len(sweep.space.params)} keys ({', '.join(sweep.space.params)}) over preset {sweep.space.preset} "
                  f"on {shards.root}")
            return 0
    except (ConfigError, ShardError, HardwareError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with RunLock(sweep.run.path, "sweep"):
            return run(args, sweep, shards)
    except RunInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, sweep: Sweep, shards: ShardSet) -> int:
    import ray

    from tune.results import finished, load_experiment, trial_rows
    from tune.runner import expected_trials, run_trials, trials_root

    if args.resume:
        sweep.run.update(status="running", error=None, resumed_at=[*sweep.run.read().get("resumed_at", []), now()],
                         sweep={**sweep.run.read()["sweep"], "settings": asdict(sweep.settings)},
                         **({"storage": sweep.storage} if sweep.storage else {}))
    else:
        start(sweep, shards)
    if sweep.mirror:  # what a resume needs (run.json, the space) is in storage before any trial runs
        sweep.mirror.push()
    setup_logging(sweep.run)
    try:
        # an errored trial is searched again on --resume, unless the winner may be picked among the others
        searched = args.resume and sweep.experiment.exists() and finished(
            [row for row in trial_rows(load_experiment(sweep.experiment), sweep.space)
             if row["status"] != "ERROR" or sweep.settings.allow_errored_trials],
            expected_trials(sweep.space, sweep.settings))
        if not searched:
            budget = max(1.0, args.time_budget - (time.monotonic() - STARTED) - CONCLUDE_RESERVE_S) if args.time_budget else None
            run_trials(sweep.run.path, sweep.alias, sweep.space, sweep.settings, resume=bool(args.resume), time_budget=budget,
                       experiment=sweep.experiment, callbacks=[sweep.mirror.callback()] if sweep.mirror else None)
        code = conclude(sweep)
    except (ConfigError, ShardError) as exc:
        sweep.run.update(status="failed", error=str(exc), ended_at=now())
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except BaseException as exc:
        sweep.run.update(status="failed", error=f"{type(exc).__name__}: {exc}", ended_at=now())
        raise
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(trials_root(sweep.alias), ignore_errors=True)
        if sweep.mirror:
            sweep.mirror.push()
    return code


if __name__ == "__main__":
    exit_job(main())
