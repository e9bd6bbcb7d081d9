"""ImageBind's own input pipeline (``imagebind/data.py`` on its pinned pytorchvideo), without
pytorchvideo or decord: how a video and its audio are cut into clip windows, which frames of a window
are used, and the pixel and log-mel transforms. The arithmetic is the originals' (exact fractions
where they use them, the same float expressions elsewhere), so the teacher sees identical inputs.

Per video: 5 windows of 2 s -> 2 frames each -> 3 spatial crops = 15 vision views [15, 3, 2, 224, 224];
3 windows of 2 s of 16 kHz audio -> 3 log-mel clips [3, 1, 128, 204]. Per text: 77 BPE token ids.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch
import torch.nn.functional as F
import torchaudio
from torchaudio.compliance import kaldi

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138
AUDIO_SAMPLE_RATE = 16000
_MIN_AUDIO_SAMPLES = 400  # one 25 ms fbank frame at 16 kHz


def _clip_starts(duration_s: float, clip_duration: float, clips_per_video: int) -> list[Fraction]:
    """pytorchvideo's ``ConstantClipsPerVideoSampler`` (at the commit ImageBind pins) as data.py's
    ``get_clip_timepoints`` drives it: n starts evenly from 0 to duration - clip, so the first window
    opens the video and the last one closes it; they overlap when duration < n * clip. A video shorter
    than one clip gets the window (0, clip) n times (running past the end; decoders clamp)."""
    duration_s = float(duration_s)
    if not math.isfinite(duration_s) or duration_s < 0 or clips_per_video < 1 or clip_duration <= 0:
        raise ValueError(f"need duration >= 0, clip_duration > 0, clips_per_video >= 1; got "
                         f"{duration_s}, {clip_duration}, {clips_per_video}")
    clip = Fraction(clip_duration)
    last_start = Fraction(max(duration_s - clip, 0))  # float - Fraction is a float, as in pytorchvideo
    step = last_start / max(clips_per_video - 1, 1)
    return [step * i for i in range(clips_per_video)]


def clip_windows(duration_s: float, clip_duration: float = 2.0, clips_per_video: int = 5) -> list[tuple[float, float]]:
    """(start, end) seconds of each clip: 5 windows for vision, ImageBind uses 3 for audio."""
    clip = Fraction(clip_duration)
    return [(float(s), float(s + clip)) for s in _clip_starts(duration_s, clip_duration, clips_per_video)]


def clip_frame_indices(window: tuple[float, float], fps: float, num_frames: int, frames_per_clip: int = 2) -> list[int]:
    """Frame indices data.py uses in ``window`` (as returned by ``clip_windows``).

    pytorchvideo's decord backend (the one data.py uses) turns the window's times into indices with the stream's
    average rate, as if frame i were shown at i / fps, and decord then serves the i-th frame of the stream: the
    indices are frames in presentation order, never timestamps, so they must be decoded as such
    (``data_shards.video.decode_frames``) -- on a variable-rate file, or one that claims an odd rate, the frame at
    i / fps is another one. The window holds frames ceil(fps*start) <= i < ceil(fps*end), cut at the last frame; of
    these ``UniformTemporalSubsample`` keeps ``frames_per_clip`` evenly spaced ones, first and last
    included (repeats when the window has fewer). data.py passes clip_duration (2) as that count.
    """
    start, end = window
    first = math.ceil(fps * start)
    stop = min(math.ceil(fps * end), num_frames)
    count = stop - first
    if count <= 0:
        raise ValueError(f"window {window} holds no frame of a {num_frames}-frame video at {fps} fps")
    picks = torch.linspace(0, count - 1, frames_per_clip).clamp(0, count - 1).long()  # float32, as pytorchvideo
    return [first + int(i) for i in picks]


def video_frame_indices(num_frames: int, fps: float, clip_duration: float = 2.0, clips_per_video: int = 5,
                        frames_per_clip: int = 2) -> list[list[int]]:
    """Per clip window, the frames to decode; the duration is num_frames / fps as pytorchvideo's decord
    backend computes it (pass decord's numbers: the stream's average frame rate, and its packet count)."""
    if num_frames < 1 or not fps > 0:
        raise ValueError(f"need at least one frame and fps > 0; got {num_frames} frames at {fps} fps")
    duration = float(num_frames) / float(fps)
    return [clip_frame_indices(w, fps, num_frames, frames_per_clip)
            for w in clip_windows(duration, clip_duration, clips_per_video)]


def _short_side_scale(x: torch.Tensor, size: int) -> torch.Tensor:
    """pytorchvideo ``ShortSideScale``: bilinear, align_corners=False, no antialias (even when shrinking)."""
    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor((float(h) / w) * size)), size
    else:
        new_h, new_w = size, int(math.floor((float(w) / h) * size))
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def _three_crops(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """data.py ``SpatialCrop(num_crops=3)``: start, centre (offset rounded up), end along the long side;
    a square frame gives three identical crops."""
    h, w = x.shape[-2:]
    y, x0 = int(math.ceil((h - size) / 2)), int(math.ceil((w - size) / 2))
    if h > w:
        boxes = [(0, x0), (y, x0), (h - size, x0)]
    else:
        boxes = [(y, 0), (y, x0), (y, w - size)]
    return [x[..., top:top + size, left:left + size] for top, left in boxes]


def vision_views(clips: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[clips, T, H, W, 3] RGB (uint8, 0..255) -> [clips * 3, 3, T, size, size], clip-major (clip 0's
    three crops first): /255, short side to ``size``, ImageBind's mean/std, three crops."""
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"clips must be [clips, frames, H, W, 3] RGB, got shape {tuple(clips.shape)}")
    if min(clips.shape[2:4]) < 1:
        raise ValueError(f"empty frames: {tuple(clips.shape)}")
    mean = torch.tensor(IMAGE_MEAN, device=clips.device).view(3, 1, 1, 1)
    std = torch.tensor(IMAGE_STD, device=clips.device).view(3, 1, 1, 1)
    views: list[torch.Tensor] = []
    for clip in clips:  # one clip at a time, as data.py: bounds memory for large frames
        x = clip.to(torch.float32).permute(3, 0, 1, 2).contiguous() / 255.0  # [3, T, H, W]
        x = (_short_side_scale(x, size) - mean) / std
        views += _three_crops(x, size)
    return torch.stack(views)


def audio_too_short(num_samples: int, sample_rate: int) -> str | None:
    """Why ``audio_clips`` cannot take ``num_samples`` at ``sample_rate`` -- less than one 25 ms fbank frame once
    resampled to 16 kHz (counted as ``torchaudio.functional.resample`` counts: the rates over their gcd, then
    ceil) -- or None when it can. Official ImageBind's fbank fails there too (an assertion on the window size);
    any longer audio it embeds, even far less than one 2 s clip (the fbank is zero-padded to 204 frames), so this
    is the teacher's only length rule, whatever VGGish needs."""
    if sample_rate != AUDIO_SAMPLE_RATE:
        common = math.gcd(int(sample_rate), AUDIO_SAMPLE_RATE)
        orig, new = int(sample_rate) // common, AUDIO_SAMPLE_RATE // common
        num_samples = int(torch.ceil(torch.as_tensor(new * num_samples / orig)))
    if num_samples < _MIN_AUDIO_SAMPLES:
        return f"audio of {num_samples} samples at 16 kHz is shorter than one 25 ms fbank frame"
    return None


def _fit_length(fbank: torch.Tensor, target_length: int) -> torch.Tensor:
    frames = fbank.shape[1]
    if frames < target_length:
        return F.pad(fbank, (0, target_length - frames))
    return fbank[:, :target_length]


def audio_clips(waveform: torch.Tensor, sample_rate: int = AUDIO_SAMPLE_RATE, clip_duration: float = 2.0,
                clips_per_video: int = 3, num_mel_bins: int = 128, target_length: int = 204,
                mean: float = AUDIO_MEAN, std: float = AUDIO_STD) -> torch.Tensor:
    """Float waveform in [-1, 1], [samples] or [channels, samples] -> [clips, 1, num_mel_bins, target_length].

    data.py's ``load_and_transform_audio_data`` after decoding: resample to 16 kHz, clip windows over
    the audio's duration, per clip Kaldi fbank (hanning, 25/10 ms, HTK mel, no dither, no energy),
    zero-pad/crop to ``target_length`` frames, then (x - mean) / std. Two of its quirks are kept:
    each clip's mean is subtracted *in place* from the shared waveform, so where windows overlap
    (audio shorter than ~8 s) later clips see earlier subtractions; and with several channels the mean
    is over all of them but the fbank reads channel 0 only (pass a downmix yourself if you want one).
    """
    wav = waveform.unsqueeze(0) if waveform.ndim == 1 else waveform
    if wav.ndim != 2 or not wav.is_floating_point():
        raise ValueError(f"waveform must be float [samples] or [channels, samples], got {waveform.dtype} {tuple(waveform.shape)}")
    # float32 as torchaudio.load gives data.py; a copy, as clips are mean-subtracted in place below
    wav = wav.to(torch.float32, copy=True)
    if sample_rate != AUDIO_SAMPLE_RATE:
        wav = torchaudio.functional.resample(wav, orig_freq=sample_rate, new_freq=AUDIO_SAMPLE_RATE)
    too_short = audio_too_short(wav.shape[1], AUDIO_SAMPLE_RATE)
    if too_short:
        raise ValueError(too_short)
    duration = wav.shape[1] / AUDIO_SAMPLE_RATE
    clip = Fraction(clip_duration)
    shift = torch.tensor(mean, dtype=wav.dtype, device=wav.device)
    scale = torch.tensor(std, dtype=wav.dtype, device=wav.device)
    out = []
    for start in _clip_starts(duration, clip_duration, clips_per_video):
        segment = wav[:, int(start * AUDIO_SAMPLE_RATE):int((start + clip) * AUDIO_SAMPLE_RATE)]
        segment -= segment.mean()  # a view: mutates ``wav`` on purpose (see docstring)
        fbank = kaldi.fbank(
            segment, htk_compat=True, sample_frequency=AUDIO_SAMPLE_RATE, use_energy=False,
            window_type="hanning", num_mel_bins=num_mel_bins, dither=0.0, frame_length=25, frame_shift=10)
        out.append(((_fit_length(fbank.t(), target_length) - shift) / scale).unsqueeze(0))
    return torch.stack(out)


@functools.lru_cache(maxsize=2)
def _tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def text_tokens(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """ImageBind's text input [N, 77]: CLIP's BPE (the same ``bpe_simple_vocab_16e6`` vocabulary ImageBind
    ships), start/end-of-text tokens, zero padding; too long a text is cut and still ends in end-of-text.
    open_clip's tokenizer does exactly this (tests compare it with the official one)."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("text queries must be a non-empty list of non-empty strings")
    return _tokenizer(context_length)(texts, context_length=context_length)
