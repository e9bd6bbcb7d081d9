"""Video and audio decoding with PyAV: seek to the frames a sampler asked for, never decode a whole
video for three frames; audio as the file holds it -- every channel, at its own rate -- so that each
encoder downmixes and resamples the way its own library does (ImageBind: ``torchaudio.functional.resample``
and the fbank of channel 0; VGGish: the channel mean and resampy).

A file that cannot be opened or decoded raises ``DecodeError`` with the reason; the extractor
records it as a failure and goes on. Frame indices assume a constant frame rate: index =
round((pts - stream start) * fps), which is what players and pytorchvideo assume too. The frame count is
the video stream's own (as decord counts it), never the container's duration, which in Matroska/WebM
covers a longer audio track too.
"""
from __future__ import annotations

from dataclasses import dataclass
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


def _open(path: str | Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise DecodeError(f"cannot open: {exc}") from None


def _count_video_packets(container: av.container.InputContainer, stream) -> tuple[int, float]:
    """Frames and duration of the video stream from its packets (demuxed, not decoded): what a container that records
    no frame count for its video stream (Matroska, WebM) holds."""
    count, start, end = 0, None, None
    try:
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                count += 1
                start = packet.pts if start is None else min(start, packet.pts)
                end = max(end or 0, packet.pts + (packet.duration or 0))
    except av.FFmpegError as exc:
        raise DecodeError(f"video demux failed: {exc}") from None
    duration = float((end - start) * stream.time_base) if count and stream.time_base is not None else 0.0
    return count, duration


def probe(path: str | Path) -> VideoInfo:
    with _open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise DecodeError("video stream has no frame rate")
        has_audio = bool(container.streams.audio)
        if stream.frames:
            frames = stream.frames
            duration = float(stream.duration * stream.time_base) if stream.duration is not None else frames / fps
        else:
            frames, duration = _count_video_packets(container, stream)
        if not frames:
            raise DecodeError("the video stream holds no frames")
        return VideoInfo(str(path), duration, fps, frames, stream.width, stream.height, has_audio)


def decode_frames(info: VideoInfo, indices: list[int], seek_gap: int | None = None, threads: int = 0) -> dict[int, np.ndarray]:
    """RGB uint8 [H, W, 3] for each wanted frame index; ``threads`` decoder threads (0: FFmpeg's choice; a decode
    worker among several takes 1 -- the frames are the same either way).

    Wanted frames are visited in order; the decoder seeks (to the keyframe before) only when the next
    one is more than ``seek_gap`` frames ahead (default: one second), else it decodes forward. An
    index past the real end (container metadata can overstate the count) gets the last frame.
    """
    wanted = sorted(set(indices))
    gap = seek_gap if seek_gap is not None else max(int(info.fps), 1)
    found: dict[int, np.ndarray] = {}
    try:
        with _open(info.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if threads != 1 else "NONE"
            if threads:
                stream.codec_context.thread_count = threads
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            frames, position, current = None, None, None  # decoder, index of ``current``, last decoded frame
            for target in wanted:
                if position is not None and position >= target:
                    found[target] = current.to_ndarray(format="rgb24")
                    continue
                if frames is None or target - position > gap:
                    offset = int((start + target / info.fps) / stream.time_base)
                    container.seek(offset, stream=stream, backward=True)
                    frames, position, current = container.decode(stream), None, None
                for frame in frames:
                    position, current = int(round((frame.time - start) * info.fps)), frame
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
            chunks, planar, rate = [], None, stream.rate
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
        planes = None if audio is None else np.atleast_2d(audio).astype(np.float32)
        layout = None if planes is None else {1: "mono", 2: "stereo"}[planes.shape[0]]
        sound = container.add_stream("aac", rate=rate, layout=layout) if planes is not None else None
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
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
