"""The training job (``train_mlp`` and ``train_transformer`` are presets of it): arguments, config, checks, the run
directory it owns, then the loop (``jobs.trainer``). Model selection uses the validation split only; the test split
is read once, by ``jobs.evaluate``, after training ends.

Everything up to the loop imports no torch: ``--check``, which every launcher runs before it starts or sends a job,
costs a fraction of a second instead of a torch import.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from data_shards import ShardError, check_shards, open_shards
from jobs import exit_job, new_run_id
from jobs.config import ConfigError, JobConfig, apply_override, load_config, preset_names, validate_config
from jobs.contract import CheckReport
from jobs.hardware import HardwareError, check_gpus
from jobs.init_from import open_source
from jobs.run_lock import RunInUse, RunLock, liveness
from jobs.rundir import RunDir, disk_cause, disk_message, is_rank_zero
from jobs.shard_checks import check_fits, shards_input, warn_random_init
from jobs.trackers import TrackerError, check_trackers, tracker_extras

log = logging.getLogger("streamapprox.train")
# where and how long this session runs, not what it computes: free on --resume (a resumed run never reads train.init_from;
# a remote launcher passes the place the source was carried to, as it does for the shards)
SESSION_KEYS = ("data.shards", "train.session_steps", "train.init_from")
JOB_STARTED = time.monotonic()  # the time budget counts from here, imports and data loading included


def parse_args(argv: list[str] | None, preset: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m jobs.{preset}", description=__doc__)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set model.depth=3 loss.temperature=0.05")
    parser.add_argument("--preset", default=preset, choices=preset_names(job=preset),
                        help=f"the configuration to start from (default: {preset}); jobs/presets/ holds them")
    parser.add_argument("--config", help="a YAML file merged over the preset")
    parser.add_argument("--run-dir", help="where to write the run (default: runs/<job>-<time>-<id>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoints/last.pt")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        help="stop cleanly with a resumable checkpoint before this much wall-clock time has passed")
    parser.add_argument("--check", action="store_true",
                        help="only validate config, shards (digests) and dims, then exit: launchers run this before starting or pushing a job")
    parser.add_argument("--check-report", metavar="FILE",
                        help="with --check: write the job's inputs (config key -> location, manifest digest) as JSON, for remote launchers")
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[JobConfig, RunDir, dict | None]:
    """Config, run directory and (when resuming) the checkpoint to continue from. A run directory that already
    holds a run is continued only with --resume, and only by the job that made it."""
    if args.time_budget is not None and args.time_budget <= 0:
        raise ConfigError(f"--time-budget {args.time_budget:g}: must be a positive number of seconds")
    if args.resume:
        moved = [o for o in args.overrides if o.partition("=")[0].strip() in SESSION_KEYS]
        if args.config or len(moved) != len(args.overrides):
            raise ConfigError("--resume continues a run with its own saved config; drop --set/--config (only --set "
                              "data.shards=PATH, the same shards in a new place, train.session_steps=N|null and train.init_from, which a "
                              "resumed run does not read, may change)")
        run = RunDir(args.resume)
        if is_rank_zero():  # the other ranks share (or copy) the run directory rank 0 owns
            refuse_if_owned(run.path)
        made_by = run.read().get("job") if (run.path / "run.json").is_file() else None
        if made_by and made_by != job_of(args.preset):
            raise ConfigError(f"{run.path} is a {made_by} run; this is {job_of(args.preset)}: continue it with the job that made it "
                              f"(launch local {made_by} --resume {run.path})")
        last = run.checkpoints / "last.pt"
        if not last.is_file():
            raise ConfigError(f"{last}: nothing to resume (no last.pt); start a new run instead")
        import torch  # a resumed run's saved config is in its checkpoint

        state = torch.load(last, map_location="cpu", weights_only=False)
        config = state["config"]
        for assignment in moved:
            apply_override(config, assignment)
        return validate_config(config), run, state
    cfg = load_config(args.preset, args.config, args.overrides)
    run = RunDir(args.run_dir or Path("runs") / new_run_id(cfg.job))
    if (run.path / "run.json").is_file():
        info = run.read()
        raise ConfigError(f"--run-dir {run.path}: already holds a {info.get('job')} run (status {info.get('status')}); continue it with "
                          f"--resume {run.path}, or choose a new --run-dir")
    return cfg, run, None


def refuse_if_owned(path: Path) -> None:
    """Before anything starts: a run directory a live process owns is not touched (``RunLock`` guards the race)."""
    alive, known = liveness(path)
    if alive:
        raise ConfigError(f"{path}: in use by a {known.get('job', '?')} job, pid {known.get('pid', '?')} on {known.get('host', '?')} since "
                          f"{known.get('started_at', '?')}; wait for it, or stop that process first")


def job_of(preset: str) -> str:
    """The job a preset belongs to (``mlp_cosine`` -> ``train_mlp``)."""
    return load_config(preset, None, []).job


def main(argv: list[str] | None = None, preset: str = "train_mlp", on_epoch_end: Callable[[dict], None] | None = None) -> int:
    """The training job; ``on_epoch_end`` (every rank, after each epoch's last.pt) lets a launcher persist the run
    directory as it goes (Ray Train does)."""
    args = parse_args(argv, preset)
    owned = contextlib.ExitStack()  # rank 0 owns the run directory (jobs.run_lock) from here to the end
    try:
        cfg, run, resume = resolve(args)
        shards = (check_shards if args.check else open_shards)(cfg.data.shards)
        if resume and resume.get("shards_digest") != shards.digest():
            raise ConfigError(f"{shards.root}: not the shard set this run was trained on (manifest digest differs); "
                              "resume on the original shards, or start a new run")
        check_fits(cfg, shards)
        warn_random_init(shards)
        check_gpus()
        init = open_source(cfg) if cfg.train.init_from and not resume else None  # a resumed run continues from its own last.pt
        if args.check:
            if args.check_report:  # what a remote launcher carries: the shards, and the source checkpoint of a fine-tuned run
                inputs = {"data.shards": shards_input(cfg.data.shards, shards), **({"train.init_from": init.check_input()} if init else {})}
                CheckReport(job=cfg.job, inputs=inputs, extras=tracker_extras(cfg)).write(Path(args.check_report))
            print(f"check ok: {cfg.job} ({cfg.model.kind} student) on {shards.root} {shards.manifest.splits}"
                  + (f", starting from {init.record.path}" if init else ""))
            return 0
        check_trackers(cfg)  # on the machine that trains (a remote launcher runs --check on its own)
        if is_rank_zero():
            owned.enter_context(RunLock(run.path, cfg.job))
        from jobs.trainer import Diverged, Trainer, run_training  # torch, from here on

        trainer = Trainer(cfg, shards, run, resume, args.time_budget, on_epoch_end=on_epoch_end, init=init, started=JOB_STARTED)
    except (ConfigError, ShardError, HardwareError, RunInUse) as exc:
        owned.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the run directory cannot be written: read-only, full, not ours
        owned.close()
        print(f"error: {disk_message(exc, run)}", file=sys.stderr)
        return 2
    with owned:
        try:
            status = run_training(trainer, run, cfg, resume, **({} if resume else {"preset": args.preset}))
            if status == "incomplete":
                log.info("time budget (or train.session_steps) reached: resumable checkpoint saved; continue with --resume %s", run.path)
            elif trainer.is_main and cfg.train.evaluate_test:
                from jobs.evaluate import evaluate_run

                results = evaluate_run(run.path, checkpoint="best")
                log.info("test: s2t R@1 %.2f R@5 %.2f R@10 %.2f MedR %.1f | t2s R@1 %.2f", results["s2t_r1"], results["s2t_r5"],
                         results["s2t_r10"], results["s2t_medr"], results["t2s_r1"])
        except Diverged as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except TrackerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            cause = disk_cause(exc)
            if cause is None:
                raise
            print(f"error: {disk_message(cause, run)}", file=sys.stderr)
            return 2
    trainer.accelerator.end_training()
    return 0


if __name__ == "__main__":
    exit_job(main())
