"""Students: shapes, silent audio really removed, modality dropout only while training."""
import pytest
import torch

from model import build_student
from model.config import MLPStudentConfig, TransformerStudentConfig


def batch(n=6, frames=3, silent=(1, 4)):
    torch.manual_seed(0)
    has_audio = torch.ones(n, dtype=torch.bool)
    has_audio[list(silent)] = False
    return {"clip": torch.randn(n, frames, 32), "audio": torch.randn(n, 16), "has_audio": has_audio}


@pytest.mark.parametrize("cfg", [
    MLPStudentConfig(clip_dim=32, audio_dim=16, out_dim=24, hidden=[64, 64]),
    TransformerStudentConfig(clip_dim=32, audio_dim=16, out_dim=24, width=32, depth=2, heads=4),
])
def test_output_shape_norm_and_silent_audio_ignored(cfg):
    model = build_student(cfg).eval()
    b = batch()
    out = model(b)
    assert out.shape == (6, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(6))
    changed = dict(b, audio=b["audio"].clone())
    changed["audio"][[1, 4]] = 100.0  # garbage where the video is silent must not matter
    torch.testing.assert_close(model(changed)[[1, 4]], out[[1, 4]])
    changed["audio"][0] += 1.0  # a real audio change does matter
    assert not torch.allclose(model(changed)[0], out[0])


def test_transformer_depth_and_modality_dropout_only_in_training():
    cfg = TransformerStudentConfig(clip_dim=32, audio_dim=16, out_dim=8, width=32, depth=3, heads=4, dropout=0.0, modality_dropout=0.9)
    model = build_student(cfg)
    assert len(model.encoder.layers) == 3
    b = batch(n=64, silent=())
    model.eval()
    torch.testing.assert_close(model(b), model(b))
    keep_frames, keep_audio = model._keep_masks(64, 3, b["has_audio"], "cpu")
    assert keep_audio.all() and keep_frames.all()
    model.train()
    torch.manual_seed(1)
    keep_frames, keep_audio = model._keep_masks(64, 3, b["has_audio"], "cpu")
    assert not keep_audio.all() and (keep_frames.sum(1) >= 1).all() and (keep_frames.sum(1) == 1).any()
    # one modality at a time: where frames were thinned, the audio token stays
    assert ((keep_frames.sum(1) == 3) | keep_audio).all()


def test_width_must_divide_heads():
    with pytest.raises(ValueError, match="divisible"):
        TransformerStudentConfig(width=30, heads=4)
