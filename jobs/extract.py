"""Feature extraction: videos -> a shard set of student inputs (CLIP frames, VGGish audio) and teacher
targets (ImageBind, or dense CLIP).

    python -m jobs.extract --videos DIR|LIST.csv|LIST.json [--msrvtt-splits DIR] --out SHARDS
        [--set student.sampling=uniform teacher.kind=dense_clip ...] [--random-init]
        [--num-shards N --shard-index I]      # this worker's share; also by rank under accelerate launch

Resumable anywhere: every planned shard is written atomically and then recorded in a ledger, so a
rerun of the same command skips finished shards and redoes the one a crash interrupted. Workers
writing into one directory need no coordination: the last to finish writes the manifest. A video
that cannot be used is recorded in the manifest's ``failures`` with its reason; a video without
usable audio gets ``has_audio: false``; nothing silently becomes zeros.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from data_shards.errors import ShardError
from data_shards.files import atomic_write_text
from data_shards.ledger import Ledger, Plan, PlannedShard
from data_shards.manifest import sha256_file
from data_shards.merge import merge_shard_sets
from data_shards.sampling import check_strategy
from data_shards.schema import Dims
from data_shards.sources import MSRVTT_TEST, MSRVTT_TRAIN, VideoEntry
from jobs import exit_job, new_run_id, now
from jobs.config import ConfigError, format_validation_error, layered
from jobs.contract import CheckReport, FolderInput, JobInput, LocatedFileInput, VideoFile, VideosInput
from jobs.extract_cost import table as cost_table
from jobs.extract_cost import work_estimate
from jobs.prepare import Prepared, VideoPreparer, prepared_stream
from jobs.video_sources import is_remote, listed_videos, located_input, video_sizes
from jobs.encoder_files import content_identity, declared_inputs, fetched, portable_name, provenance
from jobs.run_lock import RunInUse, RunLock
from jobs.rundir import RunDir, launched_by
from jobs.synthesize import parse_slice
from model.config import Strict
from model.encoders import ClipConfig, EncoderError, VGGishConfig, autocast, resolve_precision, vggish_examples
from model.teachers import TeacherConfig
from sync import SyncError
from sync.remote_file import FileLocation, LocalFile

if TYPE_CHECKING:
    from accelerate import PartialState

log = logging.getLogger("streamapprox.extract")


class InputConfig(Strict):
    videos: str = ""  # a directory of videos, a CSV/JSON list (id, path, split), or MSR-VTT's video directory
    msrvtt_splits: str | None = None  # the folder with MSRVTT_train.7k.csv and MSRVTT_JSFUSION_test.csv
    default_split: str = "train"  # for videos whose list or folder names no split


class AudioInputConfig(Strict):
    segment_s: float = Field(3.0, gt=0)  # the student's short audio segment: 3 VGGish examples (see vggish_examples)
    position: Literal["middle", "start"] = "middle"
    pooling: Literal["mean", "none"] = "mean"  # mean: audio.npy [128]; none: [vggish_examples(segment_s), 128]
    vggish: VGGishConfig = Field(default_factory=VGGishConfig)

    @field_validator("segment_s")
    @classmethod
    def _holds_an_example(cls, value: float) -> float:
        if vggish_examples(value) < 1:
            raise ValueError(f"{value} s holds no whole VGGish example (0.96 s plus the 15 ms STFT tail): use at least 0.975")
        return value


class StudentInputConfig(Strict):
    frames: int = Field(3, ge=1)
    sampling: str = "original"  # second, middle and second-to-last frame; see data_shards.sampling
    clip: ClipConfig = Field(default_factory=ClipConfig)
    audio: AudioInputConfig = Field(default_factory=AudioInputConfig)


class EncodersConfig(Strict):
    """The encoders and what they see: recorded in the manifest, so a report can measure the same pipelines."""

    student: StudentInputConfig = Field(default_factory=StudentInputConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    seed: int = 0  # frame sampling (weighted, dropout) and random-init weights
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp32 on CPU; bf16 on GPUs that have it, else fp16

    @model_validator(mode="after")
    def _strategies_fit(self) -> EncodersConfig:
        check_strategy(self.student.sampling, self.student.frames)
        if self.teacher.sampling != "imagebind":
            check_strategy(self.teacher.sampling, self.teacher.frames)
        return self


class ExtractConfig(EncodersConfig):
    input: InputConfig = Field(default_factory=InputConfig)
    samples_per_shard: int = Field(256, ge=1)
    random_init: bool = False  # tests and benchmarks only: recorded in the manifest, training on it warns

    @field_validator("input")
    @classmethod
    def _has_videos(cls, value: InputConfig) -> InputConfig:
        if not value.videos:
            raise ValueError("input.videos is required (--videos DIR|LIST)")
        return value

    def audio_examples(self) -> int | None:
        return None if self.student.audio.pooling == "mean" else vggish_examples(self.student.audio.segment_s)


class Extractor:
    """The encoders, built once per worker, and what a video becomes: ``preparer`` (decode and preprocess, CPU only,
    no model: a decode worker runs it) then ``encode`` (the models, on several videos at once)."""

    def __init__(self, cfg: ExtractConfig, device):
        from model.encoders import ClipImageEncoder, VGGishEncoder
        from model.teachers import build_teacher

        self.cfg = cfg
        self.clip = ClipImageEncoder(cfg.student.clip, cfg.random_init, device, cfg.seed)
        self.vggish = VGGishEncoder(cfg.student.audio.vggish, cfg.random_init, device, cfg.seed)
        self.teacher = build_teacher(cfg.teacher, self.clip, cfg.random_init, device, cfg.seed)
        self.dims = Dims(frames=cfg.student.frames, clip=self.clip.dim, audio=128, teacher=self.teacher.dim,
                         audio_examples=cfg.audio_examples())
        self.device, self.precision = torch.device(device), resolve_precision(cfg.precision, torch.device(device))
        self.preparer = VideoPreparer(cfg.student, cfg.seed, self.clip.pixels, self.teacher.inputs)
        self.encoding_s = 0.0  # time spent in the encoders (their share of the wall time says whether they wait)

    def encoders(self) -> dict:
        return {"clip": self.clip.describe(), "audio": self.vggish.describe(), "teacher": self.teacher.describe(),
                "random_init": self.cfg.random_init, "precision": self.precision}

    def autocast(self):
        """Encoders run in ``precision`` (autocast); outputs are stored as the schema says either way."""
        return autocast(self.device, self.precision)

    def audio_features(self, features: np.ndarray | None) -> np.ndarray:
        """audio.npy: the examples' mean, or the first ``audio_examples`` of them (zeros without usable audio)."""
        shape = (128,) if self.dims.audio_examples is None else (self.dims.audio_examples, 128)
        if features is None:
            return np.zeros(shape, np.float32)
        if self.dims.audio_examples is None:
            return features.mean(0)
        padded = np.zeros(shape, np.float32)
        padded[: min(len(features), shape[0])] = features[: shape[0]]
        return padded

    def encode(self, batch: list[Prepared]) -> list[dict]:
        """The encoders on several prepared videos at once (one call per model), as sample records in order. One video
        a call gives the bytes the sequential extractor always wrote; several may differ from them in the last bit."""
        from data_shards.writer import sample_record

        began = time.monotonic()
        with self.autocast():
            students = [p.student for p in batch if p.student is not None]
            if len(students) != len(batch):
                raise ValueError("encode() takes prepared videos, not failed ones")
            clip = self.clip.embed(torch.cat(students))
            heard = [(p, p.audio) for p in batch if p.audio is not None]
            sounds = dict(zip([id(p) for p, _ in heard], np.split(self.vggish.embed(torch.cat([a for _, a in heard])),
                                                                np.cumsum([len(a) for _, a in heard])[:-1]))) if heard else {}
            targets = self.teacher.embed_prepared([p.teacher for p in batch])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.encoding_s += time.monotonic() - began
        frames = np.split(clip, np.cumsum([len(x) for x in students])[:-1])
        return [sample_record(self.dims, p.entry.video_id, part, self.audio_features(sounds.get(id(p))), target, p.meta)
                for p, part, target in zip(batch, frames, targets)]


class Progress:
    """videos/s and ETA: a tqdm bar on a terminal, a log line every ``interval_s`` otherwise."""

    def __init__(self, total: int, label: str, interval_s: float = 10.0):
        self.total, self.label, self.interval_s = total, label, interval_s
        self.done, self.failed, self.started, self.last = 0, 0, time.monotonic(), time.monotonic()
        self.bar = tqdm(total=total, unit="video", desc=label) if sys.stderr.isatty() else None

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.failed)
        elif time.monotonic() - self.last >= self.interval_s or self.done == self.total:
            self.last = time.monotonic()
            rate = self.done / max(self.last - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            log.info("%s: %d/%d videos, %.2f videos/s, ETA %s, %d failed", self.label, self.done, self.total, rate,
                     time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?", self.failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def validate_extract_config(data: dict) -> ExtractConfig:
    try:
        return ExtractConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, ExtractConfig)) from None


def build_plan(cfg: ExtractConfig, entries: list[VideoEntry], encoders: dict, files: dict[str, LocalFile]) -> Plan:
    """Everything that changes the bytes is in the plan; where the videos and weights happen to be is not (a file
    the config names is there by its sha256)."""
    config = content_identity(cfg.model_dump(mode="json", exclude={"input"}), files)
    settings = {"config": config, "encoders": named_by(encoders, {file.location: f"sha256:{file.sha256}" for file in files.values()})}
    return Plan.build(entries, cfg.samples_per_shard, settings)


def named_by(value: Any, names: dict[str, str]) -> Any:
    """``value`` (nested dicts and lists) with every string found in ``names`` replaced by its name there."""
    if isinstance(value, dict):
        return {key: named_by(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [named_by(item, names) for item in value]
    return names.get(value, value) if isinstance(value, str) else value


def worker_share(args: argparse.Namespace) -> tuple[int, int, PartialState | None]:
    """(index, count, accelerate state). The share comes from --slice or --num-shards/--shard-index
    (one per kernel or node), split further by rank under ``accelerate launch`` (one per GPU): rank r
    of R in slice i of N is worker i + N*r of N*R, so the ranks of a slice together do exactly it."""
    index, count = args.slice or (args.shard_index, args.num_shards) if (args.slice or args.num_shards) else (0, 1)
    if args.num_shards and (args.shard_index is None or not 0 <= args.shard_index < args.num_shards):
        raise ConfigError(f"--num-shards {args.num_shards} needs --shard-index I with 0 <= I < {args.num_shards}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True Accelerate sees one process on a CPU-only host
        return index + count * state.process_index, count * state.num_processes, state
    return index, count, None


def default_workers(device: torch.device) -> int:
    """Decode workers: enough to keep a GPU fed (one per core, up to 8). None on a CPU: the encoders' threads already
    use every core there, so a worker only takes cores from them and costs its start (bench/extract_throughput.py)."""
    if device.type != "cuda":
        return 0
    cores = max(len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)  # this rank's share
    return min(cores, 8)


def default_batch(device: torch.device) -> int:
    """Videos per encoder call: on a GPU as many as its memory comfortably holds (about one per 2 GiB, up to 16); on
    a CPU one -- batching buys nothing there, and one video a call writes the sequential extractor's exact bytes."""
    if device.type != "cuda":
        return 1
    return max(1, min(16, torch.cuda.get_device_properties(device).total_memory // 2**31))


def run_worker(cfg: ExtractConfig, out: Path, index: int, count: int, state, time_budget: float | None, workers: int | None = None,
               batch: int | None = None) -> tuple[dict, bool]:
    """Extract this worker's shards of the plan into ``out``; returns (summary, finished)."""
    started = time.monotonic()
    device = state.device if state is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    entries = listed_videos(cfg.input.videos, cfg.input.msrvtt_splits, cfg.input.default_split)
    local, files = fetched(cfg, cfg.random_init)
    extractor = Extractor(ExtractConfig.model_validate(local), device)
    encoders = named_by(extractor.encoders(), {str(file.path): portable_name(file) for file in files.values()})
    if cfg.random_init:
        log.warning("RANDOM-INIT encoders: these features are for tests and benchmarks only, not for training a real student")
    plan = build_plan(cfg, entries, encoders, files)
    ledger = Ledger(out, plan)
    mine = plan.for_worker(index, count)
    todo = [shard for shard in mine if ledger.record(shard) is None]
    workers = default_workers(extractor.device) if workers is None else workers
    batch = default_batch(extractor.device) if batch is None else batch
    log.info("worker %d/%d: %d of its %d shards to do (%d videos), %d done before; %d decode workers, %d videos per encoder call",
             index, count, len(todo), len(mine), sum(len(s.videos) for s in todo), len(mine) - len(todo), workers, batch)
    progress = Progress(sum(len(s.videos) for s in todo), f"extract {index}/{count}")
    finished, began = write_shards(ledger, todo, extractor, progress, workers, batch, time_budget, started)
    progress.close()
    if state is not None:
        state.wait_for_everyone()
    source = {"kind": "videos", "input": cfg.input.model_dump(mode="json"), "videos": len(entries),
              "encoders_config": cfg.model_dump(mode="json", include=set(EncodersConfig.model_fields)), "files": provenance(files)}
    manifest = None
    if state is None or state.is_main_process:
        manifest = ledger.finish(extractor.dims, encoders, source)
    wall = time.monotonic() - began
    log.info("worker %d/%d: %d videos in %.1f s (%.2f videos/s); encoders busy %.0f %% of that time", index, count, progress.done,
             wall, progress.done / wall if wall > 0 else 0.0, 100 * extractor.encoding_s / wall if wall > 0 else 0.0)
    return {"manifest": manifest, "out": str(out), "seconds": round(time.monotonic() - started, 1), "videos": progress.done,
            "extract_s": wall, "encoders_busy": extractor.encoding_s / wall if wall > 0 else None}, finished


def write_shards(ledger: Ledger, todo: list[PlannedShard], extractor: Extractor, progress: Progress, workers: int, batch: int,
                 time_budget: float | None, started: float) -> tuple[bool, float]:
    """Each shard written (atomically, then recorded) as soon as its last video is encoded; no new shard is begun past
    the time budget. Returns (finished, when the work began)."""
    shards = iter(todo)
    current = next(shards, None)
    samples, failures, slowest, shard_began = [], [], 0.0, time.monotonic()
    began = time.monotonic()
    stream = prepared_stream(extractor.preparer, [entry for shard in todo for entry in shard.videos], workers, batch,
                             pin_memory=extractor.device.type == "cuda")
    try:
        for prepared in stream:
            ready = [p for p in prepared if not p.failure]
            encoded = dict(zip(map(id, ready), extractor.encode(ready))) if ready else {}
            for item in prepared:
                if item.failure:
                    failures.append({"video_id": item.entry.video_id, "split": item.entry.split, "file": Path(item.entry.path).name,
                                     "reason": item.failure})
                    log.warning("%s: %s", item.entry.video_id, item.failure)
                else:
                    samples.append(encoded[id(item)])
                progress.update(failed=bool(item.failure))
                if current is not None and len(samples) + len(failures) == len(current.videos):
                    ledger.write(current, samples, failures)
                    slowest = max(slowest, time.monotonic() - shard_began)
                    samples, failures, shard_began = [], [], time.monotonic()
                    current = next(shards, None)
                    if current is not None and time_budget is not None and time.monotonic() - started + slowest > time_budget:
                        return False, began
    finally:
        stream.close()  # its decode workers end with it
    return True, began


def report(manifest) -> str:
    source = manifest.source
    done = sum(manifest.splits.values())
    lines = [f"extracted {done} of {source['plan']['videos']} planned videos into {len(manifest.shards)} shards "
             f"({'complete' if source['complete'] else 'this worker done, other shards pending'}): {manifest.splits}",
             f"  {source['silent']} without audio the student can use (has_audio: false; a teacher that heard some anyway says "
             "so in meta.json's teacher_audio_status)"]
    if source["failures"]:
        lines.append(f"  {len(source['failures'])} failed (listed in manifest.json 'failures'):")
        lines += [f"    {f['video_id']} ({f['file']}): {f['reason']}" for f in source["failures"][:20]]
    if manifest.encoders.get("random_init"):
        lines.append("  RANDOM-INIT encoders: synthetic features for tests/benchmarks, not for training")
    return "\n".join(lines)


def splits_input(location: str) -> JobInput:
    """MSR-VTT's split files for videos read where they live: a folder here travels (two small files, by content); one
    elsewhere is read there (Kaggle mounts a ``kaggle://datasets/...`` folder on its kernels)."""
    if is_remote(location):
        return LocatedFileInput(location=location, needs_internet=FileLocation.parse(location).needs_internet, folder=True)
    return FolderInput(location=location, path=str(Path(location).resolve()), reads_urls=True,
                       files={name: sha256_file(Path(location) / name) for name in (MSRVTT_TRAIN, MSRVTT_TEST)})


def write_check_report(path: Path, cfg: ExtractConfig, entries: list[VideoEntry]) -> None:
    """The videos as one flat listing a remote launcher can upload and the kernel can find again."""
    sizes = video_sizes(cfg.input.videos, entries)
    if is_remote(cfg.input.videos):
        videos: JobInput = located_input(cfg.input.videos, entries, sizes)
    else:
        listing = [VideoFile(id=e.video_id, path=e.path if is_remote(e.path) else f"{e.video_id}{Path(e.path).suffix}", split=e.split,
                             source="" if is_remote(e.path) else e.path) for e in entries]
        missing = [e.path for e in entries if not is_remote(e.path) and not Path(e.path).is_file()]
        if missing:
            raise ShardError(f"{len(missing)} listed videos are missing here (e.g. {missing[0]}); remote kernels only get what exists "
                             "locally (or what a URL in the list names)")
        videos = VideosInput(location=cfg.input.videos, listing=listing, also_set={"input.msrvtt_splits": None})
    splits = {"input.msrvtt_splits": splits_input(cfg.input.msrvtt_splits)} if is_remote(cfg.input.videos) and cfg.input.msrvtt_splits else {}
    CheckReport(job="extract", inputs={"input.videos": videos, **splits, **declared_inputs(cfg, cfg.random_init)},
                work=work_estimate(cfg, entries, sizes)).write(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", help="shortcut for --set input.videos=...")
    parser.add_argument("--msrvtt-splits", help="shortcut for --set input.msrvtt_splits=...")
    parser.add_argument("--out", help="the shard set directory to write (or resume)")
    parser.add_argument("--run-dir", help="a run directory: shards go to RUN/shards, RUN/run.json records the job")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--config", help="a YAML file of extract config sections")
    parser.add_argument("--random-init", action="store_true", help="seeded random weights: tests and benchmarks only (recorded)")
    parser.add_argument("--num-shards", type=int, help="split the work over N workers ...")
    parser.add_argument("--shard-index", type=int, help="... and do share I")
    parser.add_argument("--slice", type=parse_slice, metavar="I/N", help="the launchers' spelling of --shard-index I --num-shards N")
    parser.add_argument("--merge-slices", metavar="RUN", help="join RUN/slices/*/shards into RUN/shards, then exit")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run with its recorded config (the same as rerunning it)")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS", help="start no new shard after this much time; resumable")
    parser.add_argument("--decode-workers", type=int, metavar="N",
                        help="processes that decode and preprocess videos ahead of the encoders (0: in turn, here); "
                        "default: one per core up to 8 on a GPU, none on a CPU. The shards are the same either way")
    parser.add_argument("--encode-batch", type=int, metavar="V",
                        help="videos per encoder call (default: 1 on a CPU, by GPU memory up to 16 on a GPU); more than one "
                        "may change the features' last bit")
    parser.add_argument("--costs", action="store_true", help="print the FLOPs a video of each encoder the config names, then exit")
    parser.add_argument("--check", action="store_true", help="validate config and inputs, then exit")
    parser.add_argument("--check-report", metavar="FILE", help="with --check: write the inputs for remote launchers")
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[ExtractConfig, Path, Path | None]:
    """(config, shard directory, run directory or None)."""
    if args.resume:
        run = Path(args.resume)
        recorded = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else None
        if not recorded or recorded.get("job") != "extract":
            raise ConfigError(f"{run}: not an extract run (no run.json of job extract)")
        data = recorded["config"]
        for key, value in (("videos", args.videos), ("msrvtt_splits", args.msrvtt_splits)):
            if value:
                data["input"][key] = value
        return validate_extract_config(layered(data, None, args.overrides)), run / "shards", run
    shortcuts = [f"input.videos={args.videos}"] if args.videos else []
    shortcuts += [f"input.msrvtt_splits={args.msrvtt_splits}"] if args.msrvtt_splits else []
    shortcuts += ["random_init=true"] if args.random_init else []
    cfg = validate_extract_config(layered({}, args.config, shortcuts + args.overrides))  # an explicit --set wins (launchers relocate inputs so)
    if args.out and args.run_dir:
        raise ConfigError("give --out (a shard directory) or --run-dir (a run directory), not both")
    if args.out:
        return cfg, Path(args.out), None
    run = Path(args.run_dir or Path("runs") / new_run_id("extract"))
    return cfg, run / "shards", run


def record_run(run: Path | None, cfg: ExtractConfig, **fields) -> None:
    if run is None:
        return
    first = {} if (run / "run.json").is_file() else {"run_id": run.name, "job": "extract", "started_at": now()}
    RunDir(run).update(**first, config=cfg.model_dump(mode="json"), backend=launched_by(), **fields)


def merge_slices(run: Path) -> int:
    parts = sorted(p / "shards" for p in (run / "slices").iterdir() if (p / "shards").is_dir())
    manifest = merge_shard_sets(parts, run / "shards")
    slices = json.loads((run / "slices" / parts[0].parent.name / "run.json").read_text())
    atomic_write_text(run / "run.json", json.dumps({**slices, "run_id": run.name, "status": "complete", "slice": None,
                                                    "slices": len(parts), "splits": manifest.splits, "ended_at": now(),
                                                    "manifest_digest": manifest.digest()}, indent=2, sort_keys=True) + "\n")
    print(report(manifest))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    owned = contextlib.ExitStack()  # the main process owns a run directory (jobs.run_lock) while it extracts
    try:
        if args.merge_slices:
            return merge_slices(Path(args.merge_slices))
        if args.costs:
            print(cost_table(validate_extract_config(layered({"input": {"videos": "-"}}, args.config, args.overrides))))
            return 0
        cfg, out, run = resolve(args)
        if args.check:
            entries = listed_videos(cfg.input.videos, cfg.input.msrvtt_splits, cfg.input.default_split)
            if args.check_report:
                write_check_report(Path(args.check_report), cfg, entries)
            print(f"check ok: {len(entries)} videos, {cfg.teacher.kind} teacher, student sampling {cfg.student.sampling}")
            return 0
        if args.decode_workers is not None and args.decode_workers < 0 or args.encode_batch is not None and args.encode_batch < 1:
            raise ConfigError("--decode-workers takes N >= 0 and --encode-batch V >= 1")
        index, count, state = worker_share(args)
        if run is not None and (state is None or state.is_main_process):
            owned.enter_context(RunLock(run, "extract"))
            out.mkdir(parents=True, exist_ok=True)
            record_run(run, cfg, status="running", slice="{}/{}".format(*args.slice) if args.slice else None)
    except (ConfigError, ShardError, EncoderError, SyncError, ValueError, RunInUse) as exc:
        owned.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with owned:
        return extract_and_record(args, cfg, out, run, index, count, state)


def extract_and_record(args, cfg: ExtractConfig, out: Path, run: Path | None, index: int, count: int, state) -> int:
    try:
        summary, finished = run_worker(cfg, out, index, count, state, args.time_budget, args.decode_workers, args.encode_batch)
    except BaseException as exc:
        if state is None or state.is_main_process:
            record_run(run, cfg, status="failed", error=f"{type(exc).__name__}: {exc}", ended_at=now())
        if isinstance(exc, (ShardError, EncoderError, SyncError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    manifest = summary["manifest"]
    if manifest is not None:
        print(report(manifest))
        status = "complete" if finished else "incomplete"
        record_run(run, cfg, status=status, ended_at=now(), splits=manifest.splits, manifest_digest=manifest.digest(),
                   failures=len(manifest.source["failures"]), seconds=summary["seconds"])
        if not finished:
            print(f"time budget reached: finished shards are kept; continue with the same command{f' or --resume {run}' if run else ''}")
    return 0


if __name__ == "__main__":
    exit_job(main())
