"""``python -m jobs.index --run RUN --shards PATH [--index DIR|URL]``: a searchable index of a shard set.

Every video is embedded by the run's trained student (its ``best.pt``) and stored in a Qdrant index
with its teacher embedding and metadata; every sampled frame's CLIP embedding is stored with its
timestamp, so a query can land on a moment. An embedded index also gets the snapshot ``launch serve``
maps (``search.store.Snapshot``): retracted before the index changes, rewritten once it is complete.
The work is done and committed shard by shard: a rerun over an unchanged shard set does nothing, an
interrupted one picks up at the first shard not yet recorded, and a changed shard set re-indexes only
the shards that changed (and drops the ones that left). An index belongs to one student: another one
is refused rather than mixed in.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, ValidationError

from data_shards import ShardError, SplitTensors, check_shards, open_shards
from data_shards.files import DISK_ADVICE, disk_problem
from data_shards.manifest import sha256_file
from data_shards.reader import read_shard
from data_shards.sources import list_videos
from jobs import exit_job, now
from jobs.config import ConfigError, apply_override, format_validation_error
from jobs.contract import CheckReport, FileInput
from jobs.evaluate import load_student
from jobs.run_lock import RunInUse, RunLock
from jobs.rundir import RunDir, disk_cause, launched_by, shards_record
from jobs.embedding import embed_indices
from jobs.shard_checks import check_dims, shards_input, warn_random_init
from model.config import Strict
from search.store import STATE_FORMAT, SearchIndexError, VectorIndex, is_server, read_pointer, retract_snapshot, write_snapshot

log = logging.getLogger("streamapprox.index")


class IndexConfig(Strict):
    run: str = ""  # a run directory (its checkpoints/<checkpoint>.pt) or a checkpoint file
    checkpoint: str = "best"
    shards: str = ""
    index: str = ""  # a directory (embedded Qdrant) or http(s)://host:6333 (a Qdrant server); default RUN_DIR/index
    name: str = Field("streamapprox", pattern=r"^[A-Za-z0-9_-]+$")  # collection prefix (several indexes on one server)
    videos: str | None = None  # where the source videos are (thumbnails); default: the extraction's input, if here
    batch_size: int = Field(1024, ge=1)
    rebuild: bool = False  # drop an index built by another student or from other dims, then build this one


def checkpoint_path(cfg: IndexConfig) -> Path:
    path = Path(cfg.run)
    if path.is_dir():
        path = path / "checkpoints" / f"{cfg.checkpoint}.pt"
    if not path.is_file():
        raise ConfigError(f"{path}: no student checkpoint there; --run takes a run directory with checkpoints/{cfg.checkpoint}.pt "
                          "(a finished training run) or a checkpoint file")
    return path


def video_sources(cfg: IndexConfig, manifest) -> dict[str, str]:
    """video id -> absolute path of its source file, for thumbnails; {} when the videos are not here."""
    location = cfg.videos or (manifest.source.get("input") or {}).get("videos")
    if not location:
        return {}
    if not Path(location).exists():
        if cfg.videos:
            raise ConfigError(f"videos={location}: no such video directory or list")
        log.info("the extraction's videos (%s) are not on this machine: no thumbnails (pass --videos to add them)", location)
        return {}
    splits = (manifest.source.get("input") or {}).get("msrvtt_splits")
    return {e.video_id: str(Path(e.path).resolve()) for e in list_videos(location, splits if not cfg.videos else None)}


def student_identity(path: Path, state: dict, dims) -> dict:
    return {"checkpoint_sha256": sha256_file(path), "checkpoint": str(path), "kind": state["config"]["model"]["kind"],
            "epoch": state.get("epoch"), "dim": dims.teacher}


def opened_index(cfg: IndexConfig, student: dict, dims) -> tuple[VectorIndex, dict]:
    """The index, created if new; refused if another student or other dims built it (unless ``rebuild``)."""
    index = VectorIndex(cfg.index, cfg.name, create=True)
    state = index.state()
    if state is not None:
        theirs = state.get("student", {})
        problem = None
        if theirs.get("checkpoint_sha256") != student["checkpoint_sha256"]:
            problem = (f"it was built with another student ({theirs.get('checkpoint')}, sha256 {str(theirs.get('checkpoint_sha256'))[:12]}), "
                       f"not {student['checkpoint']} (sha256 {student['checkpoint_sha256'][:12]})")
        elif state.get("dims") != {"video": dims.teacher, "frame": dims.clip}:
            problem = f"its vectors have dims {state.get('dims')}, these shards {{'video': {dims.teacher}, 'frame': {dims.clip}}}"
        if problem and not cfg.rebuild:
            index.close()
            raise SearchIndexError(f"{cfg.index}: {problem}. Index into a new --index DIR, or add --rebuild to replace it")
        if problem:
            log.warning("%s: %s; rebuilding (--rebuild)", cfg.index, problem)
            index.drop()
            state = None
    if state is None:
        index.drop()  # collections without a state record hold nothing committed (a first run stopped early)
        index.create(dims.teacher, dims.clip)
        state = {"format": STATE_FORMAT, "student": student, "dims": {"video": dims.teacher, "frame": dims.clip},
                 "done": {}, "created_at": now()}
        index.save_state(state)
    return index, state


def index_shard(index: VectorIndex, shard_set, entry, student, sources: dict[str, str], batch_size: int) -> int:
    """Embed and store one shard's videos and frames; returns how many videos."""
    samples = read_shard(shard_set, entry)
    tensors = SplitTensors([s.key for s in samples], torch.from_numpy(np.stack([s.clip for s in samples])),
                           torch.from_numpy(np.stack([s.audio for s in samples])), torch.tensor([s.has_audio for s in samples]),
                           torch.from_numpy(np.stack([s.teacher for s in samples])))
    with torch.no_grad():
        embeddings = embed_indices(student, tensors, torch.arange(len(samples)), batch_size, torch.device("cpu")).numpy()
    rows, frame_rows, frame_vectors = [], [], []
    for s in samples:
        video_id = s.meta.get("video_id", s.key)
        rows.append({"video_id": video_id, "split": s.meta.get("split", entry.split), "has_audio": s.has_audio,
                     "duration_s": s.meta.get("duration_s"), "frame_times_s": s.meta.get("frame_times_s"),
                     "source": sources.get(video_id), "shard": entry.name})
        times = s.meta.get("frame_times_s") or [None] * len(s.clip)
        for frame, (t, vector) in enumerate(zip(times, s.clip)):
            frame_rows.append({"video_id": video_id, "frame": frame, "t": t, "shard": entry.name})
            frame_vectors.append(vector.astype(np.float32))
    index.upsert_videos(rows, embeddings, np.stack([s.teacher for s in samples]))
    index.upsert_frames(frame_rows, np.stack(frame_vectors))
    return len(rows)


def build_index(cfg: IndexConfig) -> dict:
    path = checkpoint_path(cfg)
    student, job_cfg, checkpoint = load_student(path)
    shard_set = open_shards(cfg.shards)
    check_dims(job_cfg, shard_set.dims, str(shard_set.root))
    warn_random_init(shard_set)
    sources = video_sources(cfg, shard_set.manifest)
    index, state = opened_index(cfg, student_identity(path, checkpoint, shard_set.dims), shard_set.dims)
    started, indexed, unchanged = time.monotonic(), 0, 0
    with index:
        state["shards"] = shards_record(cfg.shards, shard_set)
        wanted = {entry.name: entry for entry in shard_set.manifest.shards}
        embedded = not is_server(cfg.index)
        changes = [n for n in state["done"] if n not in wanted] + [e.name for e in shard_set.manifest.shards
                                                                  if (state["done"].get(e.name) or {}).get("sha256") != e.sha256]
        if changes and embedded:
            retract_snapshot(cfg.index, cfg.name)  # no server starts on a snapshot the index no longer matches
        for name in [n for n in state["done"] if n not in wanted]:  # left the shard set
            index.delete_shard(name)
            del state["done"][name]
            log.info("removed shard %s (no longer in the shard set)", name)
        for number, entry in enumerate(shard_set.manifest.shards, 1):
            done = state["done"].get(entry.name)
            if done and done["sha256"] == entry.sha256:
                unchanged += 1
                continue
            if done:
                index.delete_shard(entry.name)
            videos = index_shard(index, shard_set, entry, student, sources, cfg.batch_size)
            state["done"][entry.name] = {"sha256": entry.sha256}
            index.save_state(state)  # the commit point: this shard is in
            indexed += 1
            log.info("indexed shard %s (%d/%d, %d videos)", entry.name, number, len(wanted), videos)
        counts = index.count()
        state.update(counts=counts, sources=bool(sources), updated_at=now())
        index.save_state(state)
        pointer = read_pointer(cfg.index, cfg.name) if embedded else None
        if embedded and (pointer is None or pointer.get("done") != state["done"]
                         or pointer.get("student") != state["student"]["checkpoint_sha256"]):
            write_snapshot(cfg.index, cfg.name, index.export())  # what `launch serve` maps: written only when the index changed
            log.info("wrote the search snapshot (%s)", Path(cfg.index) / "arrays" / cfg.name)
    seconds = time.monotonic() - started
    summary = {"index": cfg.index, "name": cfg.name, "shards_indexed": indexed, "shards_unchanged": unchanged, **counts,
               "seconds": round(seconds, 2), "student": state["student"], "thumbnails": bool(sources)}
    print(f"index {cfg.index}: {indexed} shards indexed, {unchanged} unchanged; {counts['videos']} videos, "
          f"{counts['frames']} frames ({seconds:.1f} s)", flush=True)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="the student: a run directory (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("--checkpoint", choices=["best", "last"], help="which checkpoint of the run (default best)")
    parser.add_argument("--shards", help="the shard set to index (path, s3://, synthetic://)")
    parser.add_argument("--index", help="index directory (embedded Qdrant) or a Qdrant server URL; default RUN_DIR/index")
    parser.add_argument("--name", help="collection name prefix (default streamapprox)")
    parser.add_argument("--videos", help="where the source videos are, for thumbnails (default: the extraction's input)")
    parser.add_argument("--rebuild", action="store_true", help="replace an index built by another student")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="any IndexConfig field, e.g. --set batch_size=256")
    parser.add_argument("--run-dir", help="where to record this job (run.json, logs); launchers pass it")
    parser.add_argument("--check", action="store_true", help="only validate the student, shards and index, then exit")
    parser.add_argument("--check-report", metavar="FILE", help="with --check: write the job's inputs as JSON, for remote launchers")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> IndexConfig:
    data = {key: value for key, value in vars(args).items()
            if key in IndexConfig.model_fields and value not in (None, False)}
    for assignment in args.overrides:
        apply_override(data, assignment)
    if not data.get("index") and args.run_dir:
        data["index"] = str(Path(args.run_dir) / "index")
    try:
        cfg = IndexConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, IndexConfig)) from None
    missing = [f"--{key}" for key in ("run", "shards", "index") if not getattr(cfg, key) and not (key == "index" and args.check)]
    if missing:
        raise ConfigError(f"index needs {', '.join(missing)} (e.g. --run runs/RUN --shards PATH --index DIR)")
    return cfg


def check(cfg: IndexConfig, report: str | None, run_dir: str | None) -> None:
    path = checkpoint_path(cfg)
    _, job_cfg, _ = load_student(path)
    shard_set = check_shards(cfg.shards)
    check_dims(job_cfg, shard_set.dims, str(shard_set.root))
    if cfg.index and not is_server(cfg.index) and Path(cfg.index).exists() and not Path(cfg.index).is_dir():
        raise ConfigError(f"--index {cfg.index}: a file is there, not an index directory")
    if report:
        inside = not cfg.index or (run_dir and Path(cfg.index).resolve().is_relative_to(Path(run_dir).resolve()))
        CheckReport(job="index", inputs={"shards": shards_input(cfg.shards, shard_set),
                                         "run": FileInput(location=cfg.run, path=str(path), sha256=sha256_file(path))},
                    outputs={} if is_server(cfg.index) or inside else {"--index": cfg.index}).write(Path(report))
    print(f"check ok: student {path} on {shard_set.root} ({sum(shard_set.manifest.splits.values())} videos) -> "
          f"{cfg.index or 'RUN_DIR/index'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("streamapprox").setLevel(logging.INFO)  # ours; open_clip logs chatter at INFO on the root logger
    run = RunDir(args.run_dir) if args.run_dir else None
    cfg: IndexConfig | None = None
    try:
        cfg = resolve_config(args)
        if args.check:
            check(cfg, args.check_report, args.run_dir)
            return 0
        with RunLock(run.path, "index") if run is not None else contextlib.nullcontext():
            if run is not None:
                run.create()
                run.update(run_id=run.path.name, job="index", config=cfg.model_dump(mode="json"), started_at=now(),
                           backend=launched_by(), status="running")
            summary = build_index(cfg)
            if run is not None:
                run.update(status="complete", index=summary, ended_at=now())
    except RunInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, ShardError, SearchIndexError) as exc:
        if run is not None and (run.path / "run.json").is_file():
            run.update(status="failed", error=str(exc), ended_at=now())
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        cause = disk_cause(exc)
        if cause is None or cause.errno not in DISK_ADVICE:  # a disk that refused a write; anything else is a bug to see
            raise
        message = disk_message(cause, cfg)
        with contextlib.suppress(OSError):  # run.json may sit on the same full disk
            if run is not None and (run.path / "run.json").is_file():
                run.update(status="failed", error=message, ended_at=now())
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def disk_message(error: OSError, cfg: IndexConfig | None) -> str:
    """A disk that refused a write (the search snapshot, the index, the run directory): which file, what to do, and what
    ``launch serve`` reads meanwhile -- the snapshot that was current before (a failed export never replaces it), or none."""
    line = disk_problem(error, cfg.index if cfg else ".") + ", then rerun the same index command: the shards already indexed are kept"
    if cfg is not None and not is_server(cfg.index):
        line += ("; `launch serve` reads the previous snapshot until then" if read_pointer(cfg.index, cfg.name) is not None
                 else "; no search snapshot is current until then")
    return line


if __name__ == "__main__":
    exit_job(main())
