"""ImageBind-huge's vision, text and audio towers: the teacher, re-implemented because the official package
does not install with current torch. Module names reproduce the official state-dict keys, so the
released ``imagebind_huge.pth`` loads with ``strict=True``; the arithmetic reproduces the official
forward (checked against it in ``tests/test_imagebind.py``). Inputs come from ``model.imagebind_inputs``.

Input layouts:
  vision  [B, V, 3, 2, 224, 224] (V views), [B, 3, 2, 224, 224] (one), or images [B, 3, 224, 224]
  audio   [B, C, 1, 128, 204] (C clips) or [B, 1, 128, 204]
  text    [B, 77] BPE token ids (``model.imagebind_inputs.text_tokens``); pooled at the end-of-text token
With a views/clips axis, each view is embedded and post-processed on its own and the results are
averaged, as the official forward does (the mean is not re-normalised).
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from model.config import Strict

# The official model's modalities and top-level module groups; a checkpoint key is <group>.<modality>.*
IMAGEBIND_MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu")
BUILT_MODALITIES = ("vision", "text", "audio")
_GROUPS = ("modality_preprocessors", "modality_trunks", "modality_heads", "modality_postprocessors")
_VIEWS_NDIM = {"vision": 6, "audio": 5, "text": None}  # rank of an input that carries a views/clips axis
_SINGLE_NDIM = {"vision": (4, 5), "audio": (4,), "text": (2,)}
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"


class TowerConfig(Strict):
    """One modality's transformer trunk (pre-LN blocks, MLP ratio 4, GELU)."""

    embed_dim: int = Field(ge=1)
    blocks: int = Field(ge=1)
    heads: int = Field(ge=1)
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)  # stochastic depth at the last block (linear from 0)
    mlp_ratio: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TowerConfig:
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by heads ({self.heads})")
        return self


class VisionTowerConfig(TowerConfig):
    """ViT-H/14 over 2-frame clips: a (2, 14, 14) Conv3d patchifier gives 1x16x16 patches + CLS."""

    embed_dim: int = Field(1280, ge=1)
    blocks: int = Field(32, ge=1)
    heads: int = Field(16, ge=1)
    frames: int = Field(2, ge=1)
    temporal_kernel: int = Field(2, ge=1)
    patch_size: int = Field(14, ge=1)
    image_size: int = Field(224, ge=1)

    def num_patches(self) -> int:
        return (self.frames // self.temporal_kernel) * (self.image_size // self.patch_size) ** 2


class AudioTowerConfig(TowerConfig):
    """ViT-B over a 128 x 204 log-mel image, overlapping 16x16 patches at stride 10 (12x19) + CLS."""

    embed_dim: int = Field(768, ge=1)
    blocks: int = Field(12, ge=1)
    heads: int = Field(12, ge=1)
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    mel_bins: int = Field(128, ge=1)
    target_length: int = Field(204, ge=1)
    kernel_size: int = Field(16, ge=1)
    stride: int = Field(10, ge=1)
    logit_scale: float = Field(20.0, gt=0)  # the audio embedding is scaled by this (a fixed buffer)

    def num_patches(self) -> int:
        def side(n: int) -> int:
            return (n - self.kernel_size) // self.stride + 1

        return side(self.mel_bins) * side(self.target_length)


class TextTowerConfig(TowerConfig):
    """A causal text transformer over CLIP's BPE tokens (77 of them), pooled at the end-of-text token."""

    embed_dim: int = Field(1024, ge=1)
    blocks: int = Field(24, ge=1)
    heads: int = Field(16, ge=1)
    vocab_size: int = Field(49408, ge=1)
    context_length: int = Field(77, ge=2)
    logit_scale: float = Field(1 / 0.07, gt=0)  # the initial value; the checkpoint holds the learned one


class ImageBindConfig(Strict):
    """Defaults are ``imagebind_huge``; tests use smaller widths and depths of the same architecture."""

    out_embed_dim: int = Field(1024, ge=1)
    vision: VisionTowerConfig = Field(default_factory=VisionTowerConfig)
    text: TextTowerConfig = Field(default_factory=TextTowerConfig)
    audio: AudioTowerConfig = Field(default_factory=AudioTowerConfig)

    @classmethod
    def huge(cls) -> ImageBindConfig:
        return cls()


class _PatchStem(nn.Module):
    """Conv patchifier -> tokens [B, N, D], then an optional LayerNorm (audio only)."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None):
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return tokens if self.norm_layer is None else self.norm_layer(tokens)


class _RepeatFrames(nn.Module):
    """Images and 1-frame clips become ``frames``-frame clips by repetition, so stills share the video stem."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        return x.repeat(1, 1, self.frames, 1, 1) if x.shape[2] == 1 else x


class _Positions(nn.Module):
    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * dim**-0.5)


class _Tokenizer(nn.Module):
    """Patch tokens behind a CLS token, plus learned positions. No position interpolation: inputs must
    have the trained size, anything else is refused rather than silently resampled."""

    def __init__(self, modality: str, stem: _PatchStem, num_patches: int, dim: int):
        super().__init__()
        self.modality = modality
        self.rgbt_stem = stem  # the official name, for audio too
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.pos_embedding_helper = _Positions(num_patches + 1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(x)
        pos = self.pos_embedding_helper.pos_embed
        if tokens.shape[1] + 1 != pos.shape[1]:
            raise ValueError(
                f"{self.modality} input of shape {tuple(x.shape)} gives {tokens.shape[1]} patches; the model "
                f"was built for {pos.shape[1] - 1} (use model.imagebind_inputs to prepare inputs)")
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos


class _SelfAttention(nn.Module):
    """Batch-first multi-head self-attention holding ``nn.MultiheadAttention``'s parameters (the
    checkpoint's names). ``bias_k``/``bias_v`` (audio) append one learned key/value to every sequence."""

    def __init__(self, dim: int, heads: int, bias_kv: bool):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * dim, dim)))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.bias_k = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if bias_kv else None
        self.bias_v = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if bias_kv else None
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, _, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(b, 1, d)], dim=1)
            v = torch.cat([v, self.bias_v.expand(b, 1, d)], dim=1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if attn_mask is None else attn_mask.to(q.dtype))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _drop_tokens(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth as the official trunk really applies it: timm's DropPath on sequence-first
    tensors draws one keep/drop per token position, shared by the whole batch (not one per sample)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(1, x.shape[1], 1).bernoulli_(1.0 - p)
    return x * keep.div_(1.0 - p)


class _Block(nn.Module):
    def __init__(self, cfg: TowerConfig, bias_kv: bool, drop_path: float):
        super().__init__()
        self.attn = _SelfAttention(cfg.embed_dim, cfg.heads, bias_kv)
        self.norm_1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = _MLP(cfg.embed_dim, cfg.mlp_ratio * cfg.embed_dim)
        self.norm_2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + _drop_tokens(self.attn(self.norm_1(x), attn_mask), self.drop_path, self.training)
        return x + _drop_tokens(self.mlp(self.norm_2(x)), self.drop_path, self.training)


class _Trunk(nn.Module):
    def __init__(self, cfg: TowerConfig, pre_norm: bool, bias_kv: bool):
        super().__init__()
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(cfg.embed_dim, eps=1e-6)) if pre_norm else nn.Identity()
        rates = [cfg.drop_path * i / max(cfg.blocks - 1, 1) for i in range(cfg.blocks)]
        self.blocks = nn.Sequential(*[_Block(cfg, bias_kv, rate) for rate in rates])

    def forward(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pre_transformer_layer(tokens)
        for block in self.blocks:
            x = block(x, attn_mask)
        return x


class _ClsToken(nn.Module):
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


class _L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class _LogitScale(nn.Module):
    """Multiplies by exp(log_logit_scale), capped at 100. The value comes from the checkpoint (learned in
    ImageBind's training for text, fixed for audio); nothing here trains it."""

    log_logit_scale: torch.Tensor

    def __init__(self, scale: float):
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(math.log(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clip(self.log_logit_scale.exp(), max=100.0) * x


class _TextTokens(nn.Module):
    """Token embeddings + learned positions; ``mask`` is the additive causal mask (a checkpoint buffer)."""

    def __init__(self, cfg: TextTowerConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.context_length, cfg.embed_dim) * 0.01)
        self.register_buffer("mask", torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.pos_embed.shape[1]:
            raise ValueError(f"text input of {tokens.shape[-1]} tokens; the model was built for {self.pos_embed.shape[1]} "
                             "(use model.imagebind_inputs.text_tokens)")
        return self.token_embedding(tokens) + self.pos_embed


class _SelectEOSAndProject(nn.Module):
    """CLIP's text pooling: the features at the end-of-text token (the highest id in each row), projected."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim, bias=False))

    def forward(self, tokens: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens[torch.arange(tokens.shape[0], device=tokens.device), seq_len])


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6), _ClsToken(), nn.Linear(dim, out_dim, bias=False))


class ImageBind(nn.Module):
    """The requested ImageBind towers, keyed by modality as in the official model (same state-dict keys)."""

    def __init__(self, config: ImageBindConfig | None = None, modalities: Sequence[str] = BUILT_MODALITIES):
        super().__init__()
        config = config or ImageBindConfig.huge()
        unknown = sorted(set(modalities) - set(BUILT_MODALITIES))
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of {BUILT_MODALITIES}, got {tuple(modalities)}")
        self.config = config
        self.modalities = tuple(m for m in BUILT_MODALITIES if m in modalities)  # official key order
        v, a = config.vision, config.audio
        pre: dict[str, nn.Module] = {}
        trunks: dict[str, nn.Module] = {}
        heads: dict[str, nn.Module] = {}
        post: dict[str, nn.Module] = {}
        if "vision" in self.modalities:
            kernel = (v.temporal_kernel, v.patch_size, v.patch_size)
            video_conv = nn.Conv3d(3, v.embed_dim, kernel_size=kernel, stride=kernel, bias=False)
            stem = _PatchStem(nn.Sequential(_RepeatFrames(v.frames), video_conv))
            pre["vision"] = _Tokenizer("vision", stem, v.num_patches(), v.embed_dim)
            trunks["vision"] = _Trunk(v, pre_norm=True, bias_kv=False)
            heads["vision"] = _head(v.embed_dim, config.out_embed_dim)
            post["vision"] = _L2Normalize()
        if "text" in self.modalities:
            t = config.text
            pre["text"] = _TextTokens(t)
            trunks["text"] = _Trunk(t, pre_norm=False, bias_kv=False)
            heads["text"] = _SelectEOSAndProject(t.embed_dim, config.out_embed_dim)
            post["text"] = nn.Sequential(_L2Normalize(), _LogitScale(t.logit_scale))
        if "audio" in self.modalities:
            mel_conv = nn.Conv2d(1, a.embed_dim, kernel_size=a.kernel_size, stride=a.stride, bias=False)
            stem = _PatchStem(mel_conv, nn.LayerNorm(a.embed_dim))
            pre["audio"] = _Tokenizer("audio", stem, a.num_patches(), a.embed_dim)
            trunks["audio"] = _Trunk(a, pre_norm=False, bias_kv=True)
            heads["audio"] = _head(a.embed_dim, config.out_embed_dim)
            post["audio"] = nn.Sequential(_L2Normalize(), _LogitScale(a.logit_scale))
        self.modality_preprocessors = nn.ModuleDict(pre)
        self.modality_trunks = nn.ModuleDict(trunks)
        self.modality_heads = nn.ModuleDict(heads)
        self.modality_postprocessors = nn.ModuleDict(post)

    def embed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """One embedding per input item (no views axis): normalised, and x logit scale for text and audio."""
        if modality == "text":
            preprocess = self.modality_preprocessors["text"]
            tokens = self.modality_trunks["text"](preprocess(x), attn_mask=preprocess.mask)
            return self.modality_postprocessors["text"](self.modality_heads["text"](tokens, x.argmax(dim=-1)))
        tokens = self.modality_trunks[modality](self.modality_preprocessors[modality](x))
        return self.modality_postprocessors[modality](self.modality_heads[modality](tokens))

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = {}
        for modality, x in inputs.items():
            if modality not in self.modalities:
                raise ValueError(f"this ImageBind was built for {self.modalities}, not {modality!r}")
            if x.ndim == _VIEWS_NDIM[modality]:
                b, views = x.shape[:2]
                outputs[modality] = self.embed(modality, x.flatten(0, 1)).unflatten(0, (b, views)).mean(dim=1)
            elif x.ndim in _SINGLE_NDIM[modality]:
                outputs[modality] = self.embed(modality, x)
            else:
                raise ValueError(f"{modality} input must have {_VIEWS_NDIM[modality]} dims (with views) or "
                                 f"{' or '.join(map(str, _SINGLE_NDIM[modality]))}; got shape {tuple(x.shape)}")
        return outputs


class ImageBindCheckpointError(ValueError):
    """The file is not an ImageBind state dict matching the model; the message says which keys and why."""


def load_imagebind_checkpoint(model: ImageBind, path: str | Path) -> None:
    """Loads the official checkpoint (a plain state dict) strictly into ``model``'s modalities. Keys of the
    other ImageBind modalities are dropped; unknown or missing keys and shape mismatches raise. A model
    built on the meta device receives the file's tensors directly (no second copy in memory)."""
    path = Path(path)
    hint = (f"is this imagebind_huge.pth ({CHECKPOINT_URL}), and is the model built with "
            "ImageBindConfig.huge()?")
    try:
        # memory-mapped when possible: the other modalities' 1.9 GB (of 4.8) are then never read
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise ImageBindCheckpointError(f"{path}: no such file; download imagebind_huge.pth from {CHECKPOINT_URL}") from None
    except Exception as e:  # unpickling errors, truncated files, non-weights pickles
        raise ImageBindCheckpointError(f"{path}: not a readable torch state dict ({type(e).__name__}: {e}); {hint}") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ImageBindCheckpointError(f"{path}: expected a plain state dict (name -> tensor); {hint}")

    own = model.state_dict()
    kept: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        group, modality = (key.split(".") + ["", ""])[:2]
        if group in _GROUPS and modality in IMAGEBIND_MODALITIES and modality not in model.modalities:
            continue  # a tower this model does not build
        if key in own:
            kept[key] = value
        else:
            unknown.append(key)
    missing = [k for k in own if k not in kept]
    mismatched = [f"{k} (file {tuple(kept[k].shape)}, model {tuple(own[k].shape)})"
                  for k in own if k in kept and kept[k].shape != own[k].shape]
    problems = [f"{len(keys)} {what}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                for what, keys in (("unexpected keys", unknown), ("missing keys", missing), ("shape mismatches", mismatched))
                if keys]
    if problems:
        raise ImageBindCheckpointError(f"{path} does not fit ImageBind{model.modalities}: " + "; ".join(problems) + f". {hint}")
    assign = any(t.is_meta for t in own.values())
    model.load_state_dict(kept, strict=True, assign=assign)
