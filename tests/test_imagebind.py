"""ImageBind teacher: our towers and input pipeline against fixtures recorded from the official code
(``tests/fixtures/make_imagebind_reference.py`` regenerates them; see its docstring)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.imagebind import (ImageBind, ImageBindCheckpointError, ImageBindConfig, TowerConfig,
                             load_imagebind_checkpoint)
from model.imagebind_inputs import (audio_clips, clip_frame_indices, clip_windows, text_tokens, video_frame_indices,
                                    vision_views)

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


def _official_loaders(path) -> tuple[np.ndarray, int, int]:
    """What official ImageBind's loaders give for a file: ``torchaudio.load`` -- every channel as float at the file's
    own rate, from libavcodec (decoded here with PyAV, the same decoder) -- and decord's frame count, the video
    stream's frames."""
    import av

    with av.open(str(path)) as container:
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)
        rate = container.streams.audio[0].rate
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    return audio, rate, frames


@pytest.mark.parametrize("kind", ["stereo 44.1 kHz mp4", "mono 48 kHz mp4", "mkv remux, audio longer than video"])
def test_the_teachers_inputs_equal_the_official_pipelines_on_ordinary_files(tmp_path, kind):
    """The teacher hears every channel at the file's rate (``audio_clips`` resamples with torchaudio and reads channel
    0, as data.py does) and counts frames from the video stream; the old 16 kHz mono down-mix is measurably not that."""
    import av

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
    official, official_rate, official_frames = _official_loaders(path)

    ours = decode_audio(path)
    assert ours.rate == official_rate == rate and ours.samples.shape == official.shape and np.array_equal(ours.samples, official)
    mel = audio_clips(torch.from_numpy(ours.samples), ours.rate)
    reference = audio_clips(torch.from_numpy(official), official_rate)
    torch.testing.assert_close(mel, reference, rtol=0, atol=0)
    info = probe(path)
    assert info.frame_count == official_frames == 32
    assert video_frame_indices(info.frame_count, info.fps) == video_frame_indices(official_frames, info.fps)

    with av.open(str(path)) as container:  # what the teacher heard before: swresample's 16 kHz mono down-mix
        downmix = av.AudioResampler(format="flt", layout="mono", rate=16_000)
        old = np.concatenate([out.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for out in downmix.resample(frame)])
    if "mono" not in kind or rate != 16_000:
        assert (audio_clips(torch.from_numpy(old)[None]) - reference).abs().max() > 0.05
