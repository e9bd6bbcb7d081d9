"""ImageBind teacher: our towers and input pipeline against fixtures recorded from the official code
(``tests/fixtures/make_imagebind_reference.py`` regenerates them; see its docstring), and the teacher's inputs for
real files -- which frames, what audio -- against real decord and data.py's algorithm."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import multiprocessing
import sys
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from model.imagebind import (ImageBind, ImageBindCheckpointError, ImageBindConfig, TowerConfig,
                             load_imagebind_checkpoint)
from model.imagebind_inputs import (IMAGE_MEAN, IMAGE_STD, audio_clips, clip_frame_indices, clip_windows, text_tokens,
                                    video_frame_indices, vision_views)

FIXTURES = Path(__file__).parent / "fixtures"
BUILT = ("vision", "text", "audio")
OTHER_MODALITIES = ("depth", "thermal", "imu")


def _load_reference_tools():
    """The fixture script's shared helpers (synthetic media, summaries); it imports no official code."""
    spec = importlib.util.spec_from_file_location("make_imagebind_reference", FIXTURES / "make_imagebind_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tools = _load_reference_tools()
HUGE_KEYS: dict[str, list[int]] = json.loads((FIXTURES / "imagebind_huge_keys.json").read_text())["keys"]
SAMPLING = json.loads((FIXTURES / "imagebind_sampling.json").read_text())


@pytest.fixture(scope="module")
def small():
    return torch.load(FIXTURES / "imagebind_reference_small.pt", weights_only=True)


@pytest.fixture(scope="module")
def preprocessing():
    return torch.load(FIXTURES / "imagebind_preprocessing.pt", weights_only=True)


def modality_of(key: str) -> str:
    return key.split(".")[1]


def official_checkpoint(small, path: Path, **edits) -> Path:
    """The small model's official state dict (token embeddings rebuilt from the rows the fixture keeps) plus
    every key of the huge model's other three modalities (placeholders: they must be dropped unread),
    saved the way imagebind_huge.pth is."""
    state = dict(small["state_dict"])
    rows = small["text_embedding_rows"]
    embedding = torch.zeros(rows["shape"])
    embedding[rows["ids"]] = rows["rows"]
    state["modality_preprocessors.text.token_embedding.weight"] = embedding
    state.update({k: torch.zeros(1) for k in HUGE_KEYS if modality_of(k) in OTHER_MODALITIES})
    for key, value in edits.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    torch.save(state, path)
    return path


def assert_close_to(ours: torch.Tensor, official: torch.Tensor, rel: float = 1e-5) -> None:
    torch.testing.assert_close(ours, official, rtol=0, atol=rel * max(1.0, official.abs().max().item()))


# ---------------------------------------------------------------- architecture and checkpoint


def test_huge_keys_and_shapes_equal_official():
    assert {modality_of(k) for k in HUGE_KEYS} == {*BUILT, *OTHER_MODALITIES}
    with torch.device("meta"):
        model = ImageBind(ImageBindConfig.huge())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: s for k, s in HUGE_KEYS.items() if modality_of(k) in BUILT}
    with torch.device("meta"):
        vision_only = ImageBind(ImageBindConfig.huge(), modalities=("vision",))
    assert {modality_of(k) for k in vision_only.state_dict()} == {"vision"}


def test_small_model_matches_official_outputs(small, tmp_path):
    model = ImageBind(ImageBindConfig.model_validate(small["config"])).eval()
    load_imagebind_checkpoint(model, official_checkpoint(small, tmp_path / "imagebind.pth"))
    vision, audio = tools.vision_input(small["vision_pixels"]), small["audio_mels"].to(torch.float32)
    assert vision.shape == (2, 2, 3, 2, 224, 224) and audio.shape == (2, 2, 1, 128, 204)
    with torch.no_grad():
        both = model({"vision": vision, "audio": audio})
        ours = {
            "vision": both["vision"],  # views averaged after L2 normalisation
            "audio": both["audio"],  # clips averaged after normalisation x the checkpoint's logit scale
            "vision_one_view": model({"vision": vision[:, 0]})["vision"],  # [B, 3, 2, 224, 224]
            "vision_image": model({"vision": vision[:, 0, :, 0]})["vision"],  # images: frame repeated
            "audio_one_clip": model({"audio": audio[:, 0]})["audio"],
            "text": model({"text": text_tokens(small["texts"])})["text"],  # our tokenizer, the official tokens
        }
    for name, official in small["outputs"].items():
        assert_close_to(ours[name], official)
    scale = small["state_dict"]["modality_postprocessors.text.1.log_logit_scale"].exp()
    torch.testing.assert_close(ours["text"].norm(dim=-1), scale.expand(len(small["texts"])))  # the checkpoint's learned scale
    torch.testing.assert_close(ours["audio_one_clip"].norm(dim=-1), torch.full((2,), tools.SMALL_AUDIO_LOGIT_SCALE))
    assert not torch.allclose(ours["vision"][0], ours["vision"][1], atol=1e-3)  # batch items stay apart


def test_vision_only_model_drops_audio_keys_and_refuses_audio(small, tmp_path):
    model = ImageBind(ImageBindConfig.model_validate(small["config"]), modalities=("vision",)).eval()
    load_imagebind_checkpoint(model, official_checkpoint(small, tmp_path / "imagebind.pth"))
    with torch.no_grad():
        out = model({"vision": tools.vision_input(small["vision_pixels"])})
    assert_close_to(out["vision"], small["outputs"]["vision"])
    with pytest.raises(ValueError, match="not 'audio'"):
        model({"audio": small["audio_mels"].to(torch.float32)})


def test_meta_model_receives_checkpoint_tensors(small, tmp_path):
    with torch.device("meta"):
        model = ImageBind(ImageBindConfig.model_validate(small["config"]), modalities=("audio",))
    load_imagebind_checkpoint(model, official_checkpoint(small, tmp_path / "imagebind.pth"))
    assert not any(t.is_meta for t in model.state_dict().values())
    with torch.no_grad():
        out = model.eval()({"audio": small["audio_mels"].to(torch.float32)})
    assert_close_to(out["audio"], small["outputs"]["audio"])


@pytest.mark.parametrize("edit, message", [
    ({"modality_trunks.audio.blocks.1.attn.bias_k": None}, "1 missing keys: modality_trunks.audio.blocks.1.attn.bias_k"),
    ({"modality_heads.vision.2.weight": torch.zeros(24, 40)},
     r"1 shape mismatches: modality_heads.vision.2.weight \(file \(24, 40\), model \(24, 48\)\)"),
    ({"modality_trunks.vision.blocks.2.norm_1.weight": torch.zeros(48)},  # a deeper checkpoint than the model
     "1 unexpected keys: modality_trunks.vision.blocks.2.norm_1.weight"),
    ({"model.logit_scale": torch.zeros(1)}, "1 unexpected keys: model.logit_scale"),
])
def test_checkpoint_mismatch_is_a_clear_error(small, tmp_path, edit, message):
    model = ImageBind(ImageBindConfig.model_validate(small["config"]))
    path = official_checkpoint(small, tmp_path / "bad.pth", **edit)
    with pytest.raises(ImageBindCheckpointError, match=message) as error:
        load_imagebind_checkpoint(model, path)
    assert str(path) in str(error.value) and "imagebind_huge.pth" in str(error.value)


def test_unreadable_checkpoints_are_clear_errors(small, tmp_path):
    model = ImageBind(ImageBindConfig.model_validate(small["config"]), modalities=("audio",))
    with pytest.raises(ImageBindCheckpointError, match="no such file; download imagebind_huge.pth"):
        load_imagebind_checkpoint(model, tmp_path / "absent.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ImageBindCheckpointError, match="expected a plain state dict"):
        load_imagebind_checkpoint(model, tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ImageBindCheckpointError, match="not a readable torch state dict"):
        load_imagebind_checkpoint(model, tmp_path / "garbage.pth")


def test_inputs_of_the_wrong_rank_or_size_are_refused(small):
    model = ImageBind(ImageBindConfig.model_validate(small["config"])).eval()
    with pytest.raises(ValueError, match="vision input must have 6 dims"):
        model({"vision": torch.zeros(1, 1, 1, 3, 2, 224, 224)})
    with pytest.raises(ValueError, match="gives 64 patches; the model was built for 256"):
        model({"vision": torch.zeros(1, 3, 2, 112, 112)})
    with pytest.raises(ValueError, match="audio input must have 5 dims"):
        model({"audio": torch.zeros(1, 128, 204)})


def test_text_tokens_equal_the_official_tokenizer(small):
    tokens = text_tokens(small["texts"])
    assert torch.equal(tokens, small["text_tokens"])
    assert tokens[3, -1] == tokens.max() and tokens[3].argmax() == 76  # cut at 77 tokens, still ending in end-of-text
    for bad in ([], [""], "a dog"):
        with pytest.raises(ValueError, match="non-empty list of non-empty strings"):
            text_tokens(bad)
    model = ImageBind(ImageBindConfig.model_validate(small["config"]), modalities=("text",))
    with pytest.raises(ValueError, match="text input of 76 tokens; the model was built for 77"):
        model({"text": tokens[:, :76]})


def test_config_defaults_are_imagebind_huge():
    cfg = ImageBindConfig.huge()
    assert (cfg.vision.embed_dim, cfg.vision.blocks, cfg.vision.heads, cfg.vision.num_patches()) == (1280, 32, 16, 256)
    assert (cfg.audio.embed_dim, cfg.audio.blocks, cfg.audio.heads, cfg.audio.num_patches()) == (768, 12, 12, 228)
    assert (cfg.audio.drop_path, cfg.audio.logit_scale, cfg.out_embed_dim) == (0.1, 20.0, 1024)
    assert (cfg.text.embed_dim, cfg.text.blocks, cfg.text.heads, cfg.text.context_length, cfg.text.vocab_size) == (1024, 24, 16, 77, 49408)
    with pytest.raises(ValueError, match="divisible by heads"):
        TowerConfig(embed_dim=50, blocks=1, heads=4)


# ---------------------------------------------------------------- input pipeline


@pytest.mark.parametrize("case", SAMPLING["windows"], ids=lambda c: f"{c['duration']}s-{c['clips_per_video']}clips")
def test_clip_windows_match_pytorchvideo(case):
    got = clip_windows(case["duration"], clip_duration=2.0, clips_per_video=case["clips_per_video"])
    assert [list(w) for w in got] == case["windows"]


@pytest.mark.parametrize("case", SAMPLING["frames"], ids=lambda c: f"{c['fps']:.3f}fps-{c['num_frames']}")
def test_frame_picks_match_decord_backend(case):
    assert video_frame_indices(case["num_frames"], case["fps"]) == case["indices"]


def test_window_past_the_last_frame_is_an_error():
    with pytest.raises(ValueError, match="holds no frame"):
        clip_frame_indices((5.0, 7.0), fps=30.0, num_frames=10)


@pytest.mark.parametrize("name", sorted(tools.VIDEOS))
def test_vision_views_match_official_transforms(preprocessing, name):
    spec = tools.VIDEOS[name]
    picks = video_frame_indices(spec["num_frames"], spec["fps"])
    clips = torch.stack([tools.synthetic_frames(p, spec["height"], spec["width"]) for p in picks])
    views = vision_views(clips)
    assert views.shape == (15, 3, 2, 224, 224) and views.dtype == torch.float32
    ours, official = tools.views_summary(views), preprocessing["videos"][name]
    for key in official:  # clip-major, 3 crops per clip: a wrong order or offset shows in the grid
        torch.testing.assert_close(ours[key], official[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["overlap_5.3s", "short_1.2s", "long_11.6s", "resampled_22050", "stereo"])
def test_audio_clips_match_official_transform(preprocessing, name):
    waveform, rate = tools.audio_cases(preprocessing["pcm"])[name]
    before = waveform.clone()
    clips = audio_clips(waveform, sample_rate=rate)
    assert clips.shape == (3, 1, 128, 204)
    torch.testing.assert_close(waveform, before, rtol=0, atol=0)  # the caller's waveform is untouched
    ours, official = tools.audio_summary(clips), preprocessing["audio"][name]
    for key in official:
        torch.testing.assert_close(ours[key], official[key], rtol=0, atol=1e-4)


def test_audio_shorter_than_one_fbank_frame_is_an_error():
    with pytest.raises(ValueError, match="shorter than one 25 ms fbank frame"):
        audio_clips(torch.zeros(399))


# ---------------------------------------------------------------- the teacher on real files, against the official algorithm
#
# "Official" is data.py's algorithm with its real readers where they run here: decord 0.6.0 (the reader pytorchvideo's
# decord backend wraps) for frames, torchaudio's resample and kaldi fbank for audio. torchaudio.load itself cannot run
# here (torchaudio 2.11 hands it to torchcodec, which needs a system FFmpeg): the reference decodes the audio with
# libavcodec through PyAV's plain decode -- every channel as float at the file's rate, what torchaudio.load returns --
# not through data_shards.video.


def _official_clip_timepoints(duration: float, clip_duration: int, clips_per_video: int) -> list[tuple[Fraction, Fraction]]:
    """data.py's ``get_clip_timepoints`` driving pytorchvideo's ``ConstantClipsPerVideoSampler`` (the pinned commit),
    transcribed: exact fractions, the same stopping rule."""
    clip, points, index = Fraction(clip_duration), [], 0
    while True:
        max_start = Fraction(max(duration - clip, 0))
        uniform = Fraction(max_start, max(clips_per_video - 1, 1))
        start = uniform * index
        index += 1
        points.append((start, start + clip))
        if index >= clips_per_video or uniform * index > max_start:
            return points


def _official_video_frames(path: Path, clip_duration: int = 2, clips_per_video: int = 5) -> np.ndarray:
    """The frames data.py's ``load_and_transform_video_data`` feeds its transforms, [clips, 2, H, W, 3]: decord's reader,
    pytorchvideo's decord backend (duration = len / average fps; a window's frames ceil(fps*start) <= i <
    min(ceil(fps*end), len)), ``UniformTemporalSubsample(2)``, ``get_batch``."""
    import decord

    reader = decord.VideoReader(str(path))
    fps, count = reader.get_avg_fps(), len(reader)
    clips = []
    for start, end in _official_clip_timepoints(count / fps, clip_duration, clips_per_video):
        window = list(range(math.ceil(fps * start), min(math.ceil(fps * end), count)))
        picks = torch.linspace(0, len(window) - 1, clip_duration).clamp(0, len(window) - 1).long()
        clips.append(reader.get_batch([window[i] for i in picks]).asnumpy())
    return np.stack(clips)


def _official_audio_clips(waveform: torch.Tensor, rate: int) -> torch.Tensor:
    """data.py's ``load_and_transform_audio_data`` after ``torchaudio.load``, transcribed (``waveform2melspec`` and
    all): resample to 16 kHz, 3 clips x 2 s, each clip's mean subtracted in place, kaldi fbank, pad/cut to 204, Normalize."""
    from torchaudio.compliance import kaldi
    from torchvision import transforms

    waveform = waveform.clone()
    if rate != 16000:
        waveform = torchaudio.functional.resample(waveform, orig_freq=rate, new_freq=16000)
    clips = []
    for start, end in _official_clip_timepoints(waveform.size(1) / 16000, 2, 3):
        clip = waveform[:, int(start * 16000):int(end * 16000)]
        clip -= clip.mean()
        fbank = kaldi.fbank(clip, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                            num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10).transpose(0, 1)
        missing = 204 - fbank.size(1)
        fbank = torch.nn.functional.pad(fbank, (0, missing), mode="constant", value=0) if missing > 0 else fbank[:, :204]
        clips.append(transforms.Normalize(mean=-4.268, std=9.138)(fbank.unsqueeze(0)))
    return torch.stack(clips)


def _libav_audio(path: Path) -> tuple[torch.Tensor, int]:
    """What ``torchaudio.load`` gives data.py: every channel as float32 [channels, samples] at the stream's own rate,
    decoded by libavcodec (PyAV's plain decode, no resampler)."""
    import av

    with av.open(str(path)) as container:
        planes = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
        return torch.from_numpy(planes.astype(np.float32)), container.streams.audio[0].rate


FRAME_SIDE = 64  # square: ImageBind's three crops are then the whole frame, so a view shows every bit of the number


def _numbered_frame(number: int) -> np.ndarray:
    """A frame that shows its number: 8 bits as black/white blocks in the top half, their complement in the bottom
    half (so that a misread block cannot pass), big enough to survive H.264 and ImageBind's resize."""
    assert 0 <= number < 256
    bits = np.array([(number >> bit) & 1 for bit in range(8)], np.uint8).reshape(2, 4)
    blocks = np.concatenate([bits, 1 - bits]) * 255
    return np.repeat(np.repeat(blocks, FRAME_SIDE // 4, 0), FRAME_SIDE // 4, 1)[..., None].repeat(3, axis=2)


def _frame_number(image: np.ndarray) -> int:
    """The number ``_numbered_frame`` drew, read from an RGB image [H, W, 3] of any size (block centres)."""
    side = image.shape[0] // 4
    centres = image[side // 2::side, side // 2::side, 0].astype(np.int64)[:4, :4]
    assert ((centres < 60) | (centres > 195)).all(), f"blocks neither black nor white: {centres.tolist()}"
    bits = (centres > 128).astype(np.int64)
    assert (bits[:2] == 1 - bits[2:]).all(), "a block and its complement agree: not a numbered frame"
    return int(sum(int(bit) << i for i, bit in enumerate(bits[:2].reshape(-1))))


def _view_numbers(views: torch.Tensor) -> list[int]:
    """Frame numbers shown by the teacher's vision input [15, 3, 2, 224, 224]: clip-major, 3 crops a clip (one is read)."""
    std, mean = torch.tensor(IMAGE_STD).view(3, 1, 1), torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    numbers = []
    for view in views[::3]:
        for t in range(view.shape[1]):
            pixels = ((view[:, t] * std + mean) * 255).permute(1, 2, 0).numpy()
            numbers.append(_frame_number(pixels))
    return numbers


def _write_numbered(path: Path, numbers: list[int], pts: list[int], time_base: Fraction) -> Path:
    """H.264 with B-frames (3 between references, a keyframe every 24 frames), frame ``numbers[k]`` shown at
    ``pts[k]`` x ``time_base``: uneven ``pts`` make a variable-frame-rate file."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"bf": "3", "g": "24"})
        stream.width = stream.height = FRAME_SIDE
        stream.pix_fmt, stream.codec_context.time_base = "yuv420p", time_base
        for number, stamp in zip(numbers, pts):
            frame = av.VideoFrame.from_ndarray(_numbered_frame(number), format="rgb24")
            frame.pts, frame.time_base = stamp, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _remux_claiming_rate(source: Path, target: Path, claimed_fps: int) -> Path:
    """A PyAV remux to Matroska, every packet copied, whose video stream claims ``claimed_fps`` (e.g. a 90 kHz time
    base taken for the rate): Matroska stores it as the track's default duration, and a reader gets back
    min(claimed, 30000) fps -- libavformat reduces 1e9 / duration with 30000 as the largest term."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        stream.codec_context.framerate = Fraction(claimed_fps)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return target


NUMBERED_KINDS = ("constant rate", "variable rate, B-frames, 3 dropped", "odd rate: Matroska remux claiming 90000 fps")


def _numbered_video(kind: str, root: Path) -> Path:
    """constant: 120 frames at 30 fps. variable: 130 frames in runs of ten shown 20 ms then 50 ms apart, frames 30,
    31 and 77 dropped (127 left). odd rate: the constant file remuxed to Matroska claiming 90000 fps (read: 30000)."""
    if kind == "variable rate, B-frames, 3 dropped":
        numbers = [n for n in range(130) if n not in (30, 31, 77)]
        gaps = [20 if (n // 10) % 2 == 0 else 50 for n in range(130)]
        return _write_numbered(root / "vfr.mp4", numbers, [sum(gaps[:n]) for n in numbers], Fraction(1, 1000))
    constant = _write_numbered(root / "cfr.mp4", list(range(120)), list(range(120)), Fraction(1, 30))
    if kind == "constant rate":
        return constant
    return _remux_claiming_rate(constant, root / "odd_rate.mkv", 90_000)


@pytest.fixture(scope="module")
def extractor():
    """The extraction job's encoders and per-video work with the real architectures at tiny sizes."""
    from jobs.extract import ExtractConfig, Extractor

    cfg = ExtractConfig.model_validate({
        "input": {"videos": "unused"}, "random_init": True,
        "student": {"clip": {"model": "tiny_clip", "architecture": str(FIXTURES / "tiny_clip.json")}},
        "teacher": {"imagebind": {"architecture": str(FIXTURES / "tiny_imagebind.json")}}})
    return Extractor(cfg, "cpu")


@pytest.fixture(scope="module")
def preparer(extractor):
    """What the job's decode workers do to a video (``VideoPreparer.prepare``)."""
    return extractor.preparer


def _entry(path: Path):
    from data_shards.sources import VideoEntry

    return VideoEntry(video_id=path.stem, path=str(path), split="train")


@pytest.mark.parametrize("kind", NUMBERED_KINDS)
def test_the_teacher_sees_decords_frames(tmp_path, preparer, kind):
    """The teacher's 10 frames are the ones decord serves official data.py -- the i-th frames of the stream, with
    decord's frame count and rate -- read back from the numbers drawn in them; its views equal the official
    transforms of decord's frames, pixel for pixel. On the variable-rate and odd-rate files the frame shown at
    i / fps (what a time-based decoder takes) is another frame, so these files tell the two rules apart."""
    import av
    import decord

    path = _numbered_video(kind, tmp_path)
    official = _official_video_frames(path)
    official_numbers = [_frame_number(frame) for clip in official for frame in clip]
    prepared = preparer.prepare(_entry(path))
    assert prepared.failure is None
    teacher_numbers = _view_numbers(prepared.teacher["vision"])
    assert teacher_numbers == official_numbers
    assert torch.equal(prepared.teacher["vision"], vision_views(torch.from_numpy(official)))

    reader = decord.VideoReader(str(path))
    fps, count = reader.get_avg_fps(), len(reader)
    with av.open(str(path)) as container:
        shown = sorted((float(frame.time), _frame_number(frame.to_ndarray(format="rgb24"))) for frame in container.decode(video=0))
    assert count == len(shown)
    picks = [i for clip in video_frame_indices(count, fps) for i in clip]
    by_time = [next((number for time, number in shown if round((time - shown[0][0]) * fps) >= i), shown[-1][1]) for i in picks]
    if kind == "constant rate":
        assert (fps, count) == (30.0, 120) and by_time == official_numbers
    elif kind.startswith("variable"):
        assert count == 127 and abs(fps - 30) > 0.5 and sum(a != b for a, b in zip(by_time, official_numbers)) >= 4
    else:
        assert (fps, count) == (30000.0, 120) and official_numbers == [0, 119] * 5 and by_time == [0, 1] * 5


class _ImportHeldOpen(importlib.abc.MetaPathFinder):
    """Holds one module's import open (its import lock taken, the module half made) until ``release`` is set, as a
    thread of the job does while it imports something."""

    def __init__(self, name: str):
        self.name, self.importing, self.release = name, threading.Event(), threading.Event()

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        run = spec.loader.exec_module

        def exec_module(module):
            self.importing.set()
            self.release.wait(300)
            run(module)

        spec.loader.exec_module = exec_module
        return spec


def test_decode_workers_prepare_what_the_job_does_even_while_another_thread_of_it_holds_a_lock(tmp_path, preparer, monkeypatch):
    """Decode workers and the job's own process prepare the same teacher inputs. The workers start while another
    thread of the job is importing a module they need: a worker forked from the job would inherit that import's lock,
    held by a thread it does not have, and wait forever; a fresh worker imports the module itself."""
    from concurrent.futures import ThreadPoolExecutor

    from jobs.prepare import prepared_stream

    entries = [_entry(_numbered_video(kind, tmp_path)) for kind in NUMBERED_KINDS[1:]]
    sequential = [p for batch in prepared_stream(preparer, entries, workers=0, batch=2) for p in batch]

    held = _ImportHeldOpen("model.imagebind_inputs")  # the teacher's frame choice imports it in the worker
    monkeypatch.delitem(sys.modules, held.name)
    monkeypatch.setattr(sys, "meta_path", [held, *sys.meta_path])
    importer = threading.Thread(target=importlib.import_module, args=(held.name,), daemon=True)
    importer.start()
    assert held.importing.wait(30)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: [p for batch in prepared_stream(preparer, entries, workers=1, batch=2) for p in batch])
        try:
            pipeline = running.result(timeout=180)
        except TimeoutError:
            pytest.fail("the decode workers prepared nothing in 180 s: they wait on a lock another thread of the job held")
        finally:
            held.release.set()
            for stuck in multiprocessing.active_children():
                stuck.kill()
    importer.join(30)
    for here, there in zip(sequential, pipeline, strict=True):
        assert here.failure is None and there.failure is None
        assert torch.equal(here.teacher["vision"], there.teacher["vision"]) and here.meta == there.meta
    assert [_view_numbers(p.teacher["vision"]) for p in pipeline] == [
        [_frame_number(f) for clip in _official_video_frames(Path(e.path)) for f in clip] for e in entries]


def test_every_frame_index_decodes_to_decords_frame_with_or_without_seeking(tmp_path):
    """``decode_frames`` gives decord's frame i for every i of the B-frame VFR file, decoding forward or seeking before
    each frame (mp4 seeks by decode time: with B-frames a seek to a frame's timestamp can land on a later keyframe)."""
    import decord

    from data_shards.video import decode_frames, probe

    path = _numbered_video("variable rate, B-frames, 3 dropped", tmp_path)
    reader = decord.VideoReader(str(path))
    decords = [_frame_number(frame) for frame in reader.get_batch(list(range(len(reader)))).asnumpy()]
    info = probe(path)
    assert info.frame_count == len(reader)
    for gap in (0, None):
        ours = decode_frames(info, list(range(info.frame_count)), seek_gap=gap)
        assert [_frame_number(ours[i]) for i in range(info.frame_count)] == decords
    past_the_end = decode_frames(info, [info.frame_count + 5], seek_gap=0)
    assert _frame_number(past_the_end[info.frame_count + 5]) == decords[-1]


@pytest.mark.parametrize("kind", ["stereo 44.1 kHz mp4", "mono 48 kHz mp4", "mkv remux, audio longer than video"])
def test_the_teachers_inputs_equal_the_official_pipelines_on_ordinary_files(tmp_path, kind):
    """The teacher hears every channel at the file's rate and turns it into data.py's log-mels (the transcription
    above, with torchaudio's resample and fbank), and counts frames and reads the rate as decord does; the old 16 kHz
    mono down-mix is measurably not that."""
    import av
    import decord

    from data_shards.synthetic_videos import moving_shapes
    from data_shards.video import decode_audio, probe, remux, write_video

    rate = 48_000 if "48" in kind else 44_100
    t = np.arange(int(2.6 * rate)) / rate
    left, right = 0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1250 * t + 1.0)
    audio = (left if "mono" in kind else np.stack([left, right])).astype(np.float32)
    path = tmp_path / "v.mp4"
    write_video(path, moving_shapes(2.0, 64), 16, audio, rate)
    if "mkv" in kind:
        remux(tmp_path / "v.mp4", tmp_path / "v.mkv")
        path = tmp_path / "v.mkv"

    ours = decode_audio(path)
    official, official_rate = _libav_audio(path)
    assert ours.rate == official_rate == rate and np.array_equal(ours.samples, official.numpy())
    reference = _official_audio_clips(official, official_rate)
    torch.testing.assert_close(audio_clips(torch.from_numpy(ours.samples), ours.rate), reference, rtol=0, atol=0)
    info, reader = probe(path), decord.VideoReader(str(path))
    assert (info.frame_count, info.fps) == (len(reader), reader.get_avg_fps()) == (32, 16.0)

    with av.open(str(path)) as container:  # what the teacher heard before: swresample's 16 kHz mono down-mix
        downmix = av.AudioResampler(format="flt", layout="mono", rate=16_000)
        old = np.concatenate([out.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for out in downmix.resample(frame)])
    if "mono" not in kind or rate != 16_000:
        assert (audio_clips(torch.from_numpy(old)[None]) - reference).abs().max() > 0.05


def test_the_teacher_hears_audio_too_short_for_vggish(tmp_path, extractor, preparer):
    """0.8 s of stereo 44.1 kHz audio under 2 s of video: less than one 0.96 s VGGish example, so the student records
    no audio (``has_audio: false``), but official ImageBind embeds it and so does the teacher -- its inputs are data.py's
    for the file, its target is not the vision-only one, and meta says the teacher heard it. Audio shorter than one
    25 ms fbank frame (which official data.py cannot take either) leaves the teacher without audio, not the video
    failed."""
    from data_shards.synthetic_videos import moving_shapes
    from data_shards.video import write_video

    rate = 44_100
    t = np.arange(int(0.8 * rate)) / rate
    write_video(tmp_path / "short_audio.mp4", moving_shapes(2.0, 64), 16,
                np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1250 * t)]).astype(np.float32), rate)
    prepared = preparer.prepare(_entry(tmp_path / "short_audio.mp4"))
    official, official_rate = _libav_audio(tmp_path / "short_audio.mp4")
    assert 0.75 < official.shape[1] / official_rate < 0.9
    assert prepared.failure is None and "audio" in prepared.teacher, "the teacher heard nothing"
    torch.testing.assert_close(prepared.teacher["audio"], _official_audio_clips(official, official_rate), rtol=0, atol=0)
    assert prepared.audio is None and prepared.meta["has_audio"] is False and prepared.meta["audio_status"].startswith("audio too short")
    assert prepared.meta["teacher_audio_status"] == "ok"
    [record] = extractor.encode([prepared])
    vision_only = extractor.teacher.embed_prepared([{"vision": prepared.teacher["vision"]}])[0]
    assert not record["meta.json"]["has_audio"] and np.abs(record["teacher.npy"] - vision_only).max() > 1e-3

    # one AAC frame at 48 kHz: 1024 samples, 341 once resampled to 16 kHz
    write_video(tmp_path / "blip.mp4", moving_shapes(2.0, 64), 16, (0.3 * np.sin(np.arange(300) / 5)).astype(np.float32), 48_000)
    blip = preparer.prepare(_entry(tmp_path / "blip.mp4"))
    assert blip.failure is None and "audio" not in blip.teacher and blip.meta["has_audio"] is False
    assert blip.meta["teacher_audio_status"].startswith("audio too short") and "25 ms fbank frame" in blip.meta["teacher_audio_status"]
    with pytest.raises(AssertionError, match="window size 400"):  # kaldi's fbank, as official data.py calls it
        _official_audio_clips(*_libav_audio(tmp_path / "blip.mp4"))
