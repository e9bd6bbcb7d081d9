"""What a video becomes before the encoders -- probe, sample, decode, preprocess -- and the decode workers that do it
ahead of them.

``VideoPreparer`` holds configuration and the encoders' preprocessing, never a model, so it pickles in a few kB and
the decode workers start as fresh interpreters (``spawn``), not as forks of the job. A fork copies the job's memory
but only the thread that forked: a lock that another thread (PyTorch's pool, an FFmpeg decoder's, an importer, a
test's server) held at that instant stays held in the worker, and the worker that needs it waits forever while the
job waits for the worker. Python 3.12 warns on such forks; 3.14 no longer forks by default.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from data_shards.sampling import TooShort, sample_frames, video_rng
from data_shards.sources import VideoEntry
from data_shards.video import Audio, DecodeError, decode_audio, decode_frames, probe
from jobs.video_sources import fetch_video, is_remote
from model.encoders import ClipPixels, vggish_log_mel
from model.teachers import TeacherInputs

if TYPE_CHECKING:
    from jobs.extract import StudentInputConfig


def mean_image(frames: dict[int, np.ndarray], group: list[int]) -> np.ndarray:
    if len(group) == 1:
        return frames[group[0]]
    return np.mean([frames[i] for i in group], axis=0).round().astype(np.uint8)


@dataclass
class Prepared:
    """One video decoded and made ready for the encoders -- all the CPU work, done in a decode worker ahead of them --
    or the reason it cannot become a sample."""

    entry: VideoEntry
    meta: dict = field(default_factory=dict)
    student: torch.Tensor | None = None  # CLIP's input pixels of the student frames
    teacher: Any = None  # the teacher's prepared inputs
    audio: torch.Tensor | None = None  # VGGish examples; None without usable audio
    failure: str | None = None

    def pin_memory(self) -> Prepared:
        """Page-locked tensors, so the copies to the GPU overlap the encoders (the DataLoader calls this)."""
        pin = lambda x: x.pin_memory() if isinstance(x, torch.Tensor) else x  # noqa: E731
        self.student, self.audio = pin(self.student), pin(self.audio)
        self.teacher = {k: pin(v) for k, v in self.teacher.items()} if isinstance(self.teacher, dict) else pin(self.teacher)
        return self


@dataclass(frozen=True)
class VideoPreparer:
    """The student's and the teacher's inputs of one video, without their models."""

    student: StudentInputConfig
    seed: int
    pixels: ClipPixels  # the student's CLIP preprocessing
    teacher: TeacherInputs

    def prepare(self, entry: VideoEntry, threads: int = 0) -> Prepared:
        """Probe, sample, decode, preprocess. ``threads``: decoder threads (a worker among several takes 1). Frame i is
        the i-th frame of the stream (decord's index), for the student and the teacher alike; the student's audio is
        what VGGish can use, the teacher's what it can (``audio_status``)."""
        if is_remote(entry.path):
            with tempfile.TemporaryDirectory(prefix="streamapprox-video-") as scratch:
                try:
                    here = fetch_video(entry, Path(scratch))
                except FileNotFoundError as exc:
                    return Prepared(entry, failure=str(exc))
                return self.prepare_file(entry, here, threads)
        if not Path(entry.path).is_file():
            return Prepared(entry, failure=f"file not found: {entry.path}")
        return self.prepare_file(entry, Path(entry.path), threads)

    def prepare_file(self, entry: VideoEntry, path: Path, threads: int) -> Prepared:
        try:
            info = probe(str(path))
            rng = video_rng(self.seed, entry.video_id)
            student = sample_frames(self.student.sampling, info.frame_count, self.student.frames, rng)
            teacher = self.teacher.frame_groups(info, rng)
            frames = decode_frames(info, [i for group in student + teacher for i in group], threads=threads)
            audio = decode_audio(str(path))
            examples, audio_status = self.student_audio(audio)
            teacher_audio_status = self.teacher.audio_status(audio)
            teacher_inputs = self.teacher.prepare([mean_image(frames, group) for group in teacher],
                                                  audio if teacher_audio_status == "ok" else None)
        except (DecodeError, ValueError) as exc:  # ValueError: a window or strategy that this video cannot fill
            return Prepared(entry, failure=f"too short: {exc}" if isinstance(exc, TooShort) else str(exc))
        meta = {"video_id": entry.video_id, "split": entry.split, "has_audio": examples is not None,
                "audio_status": audio_status, "duration_s": round(info.duration_s, 4),
                "frame_times_s": [round(float(np.mean(group)) / info.fps, 4) for group in student],
                "sampling": self.student.sampling, "teacher_sampling": self.teacher.config.sampling}
        if teacher_audio_status is not None and teacher_audio_status != audio_status:
            meta["teacher_audio_status"] = teacher_audio_status  # "ok": the teacher heard audio the student has none of
        return Prepared(entry, meta, self.pixels([mean_image(frames, group) for group in student]), teacher_inputs, examples)

    def student_audio(self, audio: Audio | None) -> tuple[torch.Tensor | None, str]:
        """(VGGish's examples of the student's segment, or None, and why not): what ``has_audio`` and ``audio_status``
        record. The teacher decides for itself (``teacher.audio_status``)."""
        if audio is None:
            return None, "no audio stream"
        if not np.any(audio.samples):
            return None, "silent: every sample is zero"
        try:
            return vggish_log_mel(audio.segment(self.student.audio.segment_s, self.student.audio.position)), "ok"
        except ValueError as exc:
            return None, f"audio too short: {exc}"


class PreparedVideos(torch.utils.data.Dataset):
    """The videos to do, in plan order, as a decode worker prepares them."""

    def __init__(self, preparer: VideoPreparer, entries: list[VideoEntry], threads: int):
        self.preparer, self.entries, self.threads = preparer, entries, threads

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Prepared:
        return self.preparer.prepare(self.entries[index], self.threads)


def as_is(item):
    return item


def prepared_stream(preparer: VideoPreparer, entries: list[VideoEntry], workers: int, batch: int, pin_memory: bool = False):
    """Prepared videos in plan order, in lists of up to ``batch``; ``workers`` fresh processes decode ahead of the
    encoders (0: decode here, one video after the other); ``pin_memory`` for copies to a GPU."""
    loader = torch.utils.data.DataLoader(PreparedVideos(preparer, entries, 1 if workers > 1 else 0), batch_size=None,
                                         num_workers=workers, collate_fn=as_is, pin_memory=pin_memory,
                                         multiprocessing_context="spawn" if workers else None,
                                         prefetch_factor=max(2, 2 * batch // workers) if workers else None)
    pending: list[Prepared] = []
    for prepared in loader:
        pending.append(prepared)
        if len(pending) == batch:
            yield pending
            pending = []
    if pending:
        yield pending
