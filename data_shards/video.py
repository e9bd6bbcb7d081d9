"""Video and audio decoding with PyAV: seek to the frames a sampler asked for, never decode a whole
video for three frames; audio resampled to 16 kHz mono.

A file that cannot be opened or decoded raises ``DecodeError`` with the reason; the extractor
records it as a failure and goes on. Frame indices assume a constant frame rate: index =
round((pts - stream start) * fps), which is what players and pytorchvideo assume too.
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


def probe(path: str | Path) -> VideoInfo:
    with _open(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if fps <= 0:
            raise DecodeError("video stream has no frame rate")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            raise DecodeError("unknown duration")
        frames = stream.frames or int(round(duration * fps))
        return VideoInfo(str(path), duration, fps, frames, stream.width, stream.height, bool(container.streams.audio))


def decode_frames(info: VideoInfo, indices: list[int], seek_gap: int | None = None) -> dict[int, np.ndarray]:
    """RGB uint8 [H, W, 3] for each wanted frame index.

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
            stream.thread_type = "AUTO"
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


def decode_audio(path: str | Path) -> np.ndarray | None:
    """The first audio stream as float32 mono at 16 kHz; None when the file has no audio stream."""
    try:
        with _open(path) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
            chunks = []
            for frame in container.decode(stream):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except av.FFmpegError as exc:
        raise DecodeError(f"audio decode failed: {exc}") from None
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def write_video(path: str | Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None) -> None:
    """Encode RGB uint8 frames [T, H, W, 3] (H.264) and optional mono float audio at 16 kHz (AAC) to ``path``."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"g": str(fps)})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio is not None else None
        for image in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            chunk = 1024
            for offset in range(0, len(audio), chunk):
                piece = audio[offset:offset + chunk].astype(np.float32)[None, :]
                frame = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                frame.sample_rate, frame.pts = AUDIO_RATE, offset
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
