"""Video and audio decoding with PyAV: seek to the frames a sampler asked for, never decode a whole
video for three frames; audio as the file holds it -- every channel, at its own rate -- so that each
encoder downmixes and resamples the way its own library does (ImageBind: ``torchaudio.functional.resample``
and the fbank of channel 0; VGGish: the channel mean and resampy).

A file that cannot be opened or decoded raises ``DecodeError`` with the reason; the extractor
records it as a failure and goes on. Frame *i* is the *i*-th frame of the video stream in presentation order --
the *i*-th frame a decoder gives -- as decord (official ImageBind's reader) indexes frames, and the frame count
is the video stream's packets, as decord counts them: never the container's duration, which in Matroska/WebM
covers a longer audio track too. An index is never turned into a time (i / fps): on a variable-frame-rate file,
or one whose stream claims an odd rate (a Matroska remux can claim 30000 fps), that time is another frame's.
"""
from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 16_000


class DecodeError(RuntimeError):
    """The file could not be opened or decoded; the message is the reason recorded in the manifest."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    duration_s: float
    fps: float
    frame_count: int
    width: int
    height: int
    has_audio_stream: bool
    # every video packet's timestamp (stream time base), sorted: frame i is the one presented at frame_pts[i]
    frame_pts: tuple[int, ...] = field(default=(), repr=False)


def _open(path: str | Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"cannot open: {exc}") from None


def _index_video_packets(container: av.container.InputContainer, stream) -> tuple[tuple[int, ...], float]:
    """(every video packet's timestamp in presentation order, the span they cover in seconds), from the packets
    (demuxed, not decoded). This is decord's frame index: its ``VideoReader`` demuxes the stream once, sorts the
    packets by pts, and its frame i and length are the i-th of them and their count -- whatever rate the stream
    claims and however unevenly the frames are spaced."""
    stamps, end = [], None
    try:
        for packet in container.demux(stream):
            if not packet.size:  # PyAV's demux ends with an empty packet that flushes the decoder: no frame
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                raise DecodeError("a video packet has no timestamp: its frames cannot be put in order")
            stamps.append(stamp)
            end = max(end if end is not None else stamp, stamp + (packet.duration or 0))
    except av.FFmpegError as exc:
        raise DecodeError(f"video demux failed: {exc}") from None
    stamps.sort()
    time_base = stream.time_base
    span = float((end - stamps[0]) * time_base) if end is not None and time_base is not None else 0.0
    return tuple(stamps), span


def probe(path: str | Path) -> VideoInfo:
    with _open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise DecodeError("video stream has no frame rate")
        has_audio = bool(container.streams.audio)
        frame_pts, span = _index_video_packets(container, stream)
        if not frame_pts:
            raise DecodeError("the video stream holds no frames")
        recorded, time_base = stream.duration, stream.time_base
        if stream.frames:  # a container that records the stream's duration (mp4): as before, the recorded one
            duration = float(recorded * time_base) if recorded is not None and time_base is not None else len(frame_pts) / fps
        else:  # Matroska, WebM: the video packets' own span, not the container's (a longer audio track)
            duration = span
        return VideoInfo(str(path), duration, fps, len(frame_pts), stream.width, stream.height, has_audio, frame_pts)


def _frame_index(frame_pts: tuple[int, ...], frame: av.VideoFrame, previous: int | None) -> int:
    """Which frame of the video (its presentation-order index) a decoded frame is: found by its timestamp; one
    without a timestamp is the one after the previous."""
    if frame.pts is None:
        return 0 if previous is None else previous + 1
    return max(bisect_right(frame_pts, frame.pts) - 1, 0)


def _decoder_at(container: av.container.InputContainer, stream, frame_pts: tuple[int, ...], target: int) -> Iterator[av.VideoFrame]:
    """Decoded frames from a keyframe at or before frame ``target`` on. A seek to the target's timestamp can land
    after it -- mp4 seeks by decode timestamp, and with B-frames a keyframe is decoded before frames shown ahead of
    it; MPEG-TS can find nothing at the first frame's timestamp -- so the seek backs off to ever earlier frames'
    timestamps, then to the file's start."""
    back = 0
    while True:
        earlier = max(target - back, 0)
        container.seek(frame_pts[earlier], stream=stream, backward=True)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is not None and _frame_index(frame_pts, first, None) <= target:
            return itertools.chain([first], frames)
        if earlier == 0:
            break
        back = max(2 * back, 1)
    container.seek(0, backward=True)
    return container.decode(stream)


def decode_frames(info: VideoInfo, indices: list[int], seek_gap: int | None = None, threads: int = 0) -> dict[int, np.ndarray]:
    """RGB uint8 [H, W, 3] for each wanted frame index -- frame i is the i-th frame in presentation order, decord's
    frame i (``info.frame_pts``) --; ``threads`` decoder threads (0: FFmpeg's choice; a decode worker among several
    takes 1 -- the frames are the same either way).

    Wanted frames are visited in order; the decoder seeks (to the keyframe before the wanted frame's timestamp)
    only when the next one is more than ``seek_gap`` frames ahead (default: about one second of frames), else it
    decodes forward. Each decoded frame is placed by its timestamp, so a seek that lands early, B-frames and uneven
    spacing cannot shift the count. An index past the real end gets the last frame.
    """
    if not info.frame_pts:
        raise DecodeError("no frame index: probe() the video first")
    wanted = sorted(set(indices))
    per_second = info.frame_count / info.duration_s if info.duration_s > 0 else info.fps
    gap = seek_gap if seek_gap is not None else max(int(min(per_second, info.fps)), 1)
    last = len(info.frame_pts) - 1
    found: dict[int, np.ndarray] = {}
    try:
        with _open(info.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if threads != 1 else "NONE"
            if threads:
                stream.codec_context.thread_count = threads
            frames, position, current = None, None, None  # decoder, index of ``current``, last decoded frame
            for target in wanted:
                if position is not None and current is not None and position >= min(target, last):
                    found[target] = current.to_ndarray(format="rgb24")
                    continue
                if frames is None or position is None or target - position > gap:
                    frames, position, current = _decoder_at(container, stream, info.frame_pts, min(target, last)), None, None
                for frame in frames:
                    position, current = _frame_index(info.frame_pts, frame, position), frame
                    if position >= target:
                        break
                if current is None:
                    raise DecodeError(f"no decodable frame at or after frame {target}")
                found[target] = current.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise DecodeError(f"video decode failed: {exc}") from None
    return found


@dataclass(frozen=True)
class Audio:
    """An audio stream as the file holds it."""

    samples: np.ndarray  # float32 [channels, samples] in [-1, 1], every channel
    rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / self.rate

    def segment(self, seconds: float, position: str) -> Audio:
        """``seconds`` of it from the start, or from the middle."""
        length = int(seconds * self.rate)
        start = 0 if position == "start" else max((self.samples.shape[1] - length) // 2, 0)
        return Audio(self.samples[:, start:start + length], self.rate)


def decode_audio(path: str | Path) -> Audio | None:
    """The first audio stream: every channel, at the stream's own rate, as float (what ``torchaudio.load`` returns:
    the same decoder); None when the file has no audio stream."""
    try:
        with _open(path) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            chunks: list[np.ndarray] = []
            planar, rate = None, stream.rate
            for frame in container.decode(stream):
                if planar is None:  # float planar, the frames' own layout and rate: only the sample format changes
                    rate = frame.sample_rate
                    planar = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate)
                chunks.extend(out.to_ndarray() for out in planar.resample(frame))
            if planar is not None:
                chunks.extend(out.to_ndarray() for out in planar.resample(None))
    except av.FFmpegError as exc:
        raise DecodeError(f"audio decode failed: {exc}") from None
    if not chunks:
        return Audio(np.zeros((1, 0), np.float32), rate or AUDIO_RATE)
    return Audio(np.concatenate(chunks, axis=1).astype(np.float32), rate)


def write_video(path: str | Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None, rate: int = AUDIO_RATE) -> None:
    """Encode RGB uint8 frames [T, H, W, 3] (H.264) and optional float audio -- [samples] mono or [channels, samples] --
    at ``rate`` (AAC) to ``path`` (the container by its suffix: .mp4, .mkv, ...)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"g": str(fps)})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        track = None  # (stream, planes, layout): added before the first packet is written
        if audio is not None:
            planes = np.atleast_2d(audio).astype(np.float32)
            layout = {1: "mono", 2: "stereo"}[planes.shape[0]]
            track = (container.add_stream("aac", rate=rate, layout=layout), planes, layout)
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        if track is not None:
            sound, planes, layout = track
            chunk = 1024
            for offset in range(0, planes.shape[1], chunk):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes[:, offset:offset + chunk]), format="fltp", layout=layout)
                frame.sample_rate, frame.pts = rate, offset
                container.mux(sound.encode(frame))
            container.mux(sound.encode())


def remux(source: str | Path, target: str | Path) -> None:
    """Copy every stream of ``source`` into a new container at ``target`` (its kind by suffix), re-encoding nothing."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux(*[s for s in inp.streams if s.index in streams]):
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
