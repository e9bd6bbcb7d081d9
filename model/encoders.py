"""The frozen encoders behind the student's inputs: CLIP image features (open_clip) and VGGish audio
features (torchvggish).

Weights come from each library's usual cache (open_clip's pretrained tags, torch hub for VGGish) or
an explicit file. ``random_init`` builds the real architecture with seeded random weights, for tests
and benchmarks only; every encoder describes itself (``describe()``) so the manifest records which
weights, or that there were none.
"""
from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from data_shards.manifest import sha256_file
from model.config import Strict

VGGISH_EXAMPLE_S = 0.96
_STFT_WINDOW, _STFT_HOP, _EXAMPLE_FRAMES = 400, 160, 96  # torchvggish at 16 kHz: 25 ms window, 10 ms hop, 96 frames


def vggish_examples(seconds: float) -> int:
    """Whole 0.96 s examples torchvggish makes of ``seconds`` of 16 kHz audio: its 25 ms STFT window needs
    15 ms beyond the last 10 ms hop, so 2.88 s gives 2 examples and 3 needs at least 2.895 s."""
    frames = 1 + (int(seconds * 16_000) - _STFT_WINDOW) // _STFT_HOP
    return max(1 + (frames - _EXAMPLE_FRAMES) // _EXAMPLE_FRAMES, 0)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp32 on CPU; bf16 on GPUs that have it, else fp16 (T4, P100)."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(device: torch.device, precision: str):
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def weights_digest(path: Path | None) -> str | None:
    """The sha256 of a weights file, hashed once per process however often the encoder describes itself."""
    if path is None:
        return None
    stat = path.stat()
    return _digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


class EncoderError(RuntimeError):
    """An encoder could not be built or its weights loaded; the message says what to do."""


class ClipConfig(Strict):
    model: str = "ViT-B-32"
    pretrained: str = "openai"  # an open_clip pretrained tag (downloaded to / read from its cache)
    weights: str | None = None  # a checkpoint file instead of the tag
    architecture: str | None = None  # a JSON architecture file for open_clip (custom or tiny models)


class VGGishConfig(Strict):
    weights: str | None = None  # default: torchvggish's release file through the torch hub cache
    postprocess: bool = False  # AudioSet's PCA whitening + 8-bit quantization (values 0..255)
    pca_weights: str | None = None  # default: torchvggish's PCA params through the torch hub cache


def _load_state(path: str | Path, what: str) -> dict:
    if not Path(path).is_file():
        raise EncoderError(f"{path}: {what} weights file not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def _hub_state(url: str, what: str, setting: str) -> tuple[dict, Path]:
    """The state dict torch hub downloads (or finds in its cache), and the file it keeps it in: its sha256 is recorded."""
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    except Exception as exc:  # offline, proxy, or a truncated cache file
        raise EncoderError(
            f"cannot load {what} from {url} or torch hub's cache {torch.hub.get_dir()} ({exc}). Put the file there, "
            f"pass {setting}=PATH, or use --random-init (tests and benchmarks only)"
        ) from None
    return state, Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name


class LoadedClip(NamedTuple):
    model: Any  # open_clip.CLIP (or CustomTextCLIP): its towers are read by name
    preprocess: Callable
    version: str
    weights: Path | None  # the file the weights were read from: the given one, or where open_clip keeps its download


def create_clip(config: ClipConfig, random_init: bool, seed: int = 0) -> LoadedClip:
    """The whole open_clip model (image and text towers), its image transform, open_clip's version and the weights file."""
    import open_clip

    if config.architecture:
        if not Path(config.architecture).is_file():
            raise EncoderError(f"{config.architecture}: open_clip model config file not found")
        open_clip.add_model_config(config.architecture)
    if config.model not in open_clip.list_models():
        raise EncoderError(f"open_clip has no model {config.model!r} (e.g. ViT-B-32, ViT-L-14; custom ones via model_config)")
    pretrained = None if random_init else (config.weights or config.pretrained)
    torch.manual_seed(seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(config.model, pretrained=pretrained)
    except Exception as exc:
        if random_init:
            raise EncoderError(f"cannot build CLIP {config.model}: {exc}") from None
        raise EncoderError(
            f"cannot load CLIP weights {config.model}/{pretrained} ({exc}). Put them in open_clip's cache, pass "
            "a file with clip.weights=PATH, or use --random-init (tests and benchmarks only)"
        ) from None
    return LoadedClip(model.eval(), preprocess, open_clip.__version__, None if pretrained is None else _clip_file(config.model, pretrained))


def _clip_file(model: str, pretrained: str) -> Path:
    """The file open_clip read ``pretrained`` from: a path, or for a tag the download in open_clip's own cache (resolved by
    open_clip again, from that cache)."""
    import open_clip

    if Path(pretrained).is_file():
        return Path(pretrained)
    return Path(open_clip.pretrained.download_pretrained(open_clip.get_pretrained_cfg(model, pretrained)))


@dataclass(frozen=True)
class ClipPixels:
    """CLIP's own preprocessing (open_clip's transform), apart from the model: all a decode worker needs of CLIP, and
    small enough to send to one."""

    transform: Callable

    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """RGB uint8 frames -> CLIP's input pixels [N, 3, S, S]."""
        from PIL import Image

        return torch.stack([self.transform(Image.fromarray(image)) for image in images])


class ClipImageEncoder:
    """open_clip image tower: RGB frames -> unit-norm image embeddings."""

    def __init__(self, config: ClipConfig, random_init: bool = False, device: str | torch.device = "cpu", seed: int = 0):
        self.config, self.random_init, self.device = config, random_init, torch.device(device)
        model, preprocess, self.version, self.weights = create_clip(config, random_init, seed)
        self.pixels = ClipPixels(preprocess)
        self.model = model.visual.to(self.device).eval()
        self.dim = int(model.visual.output_dim)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the tower takes: open_clip's ViT and timm towers record a pair, its ResNets one int."""
        size = self.model.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def encode(self, images: list[np.ndarray]) -> np.ndarray:
        return self.embed(self.pixels(images))

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        features = self.model(pixels.to(self.device, non_blocking=True)).float()
        return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()

    def describe(self) -> dict:
        return {"library": "open_clip", "version": self.version, "model": self.config.model, "dim": self.dim,
                "pretrained": None if self.random_init else (self.config.weights or self.config.pretrained),
                "weights_sha256": weights_digest(self.weights), "random_init": self.random_init}


def vggish_log_mel(audio) -> torch.Tensor:
    """torchvggish's own preparation on the CPU (a decode worker's part): the channel mean, resampy to 16 kHz, its
    log-mel examples [S, 1, 96, 64] for the S whole 0.96 s examples in ``audio`` (a ``data_shards.video.Audio``)."""
    from torchvggish import waveform_to_examples

    examples = waveform_to_examples(audio.samples.T.astype(np.float64), audio.rate, return_tensor=True).detach().float()
    if examples.shape[0] == 0:
        raise ValueError(f"audio of {audio.seconds:.2f} s is shorter than one VGGish example ({VGGISH_EXAMPLE_S} s)")
    return examples


class VGGishEncoder:
    """torchvggish: 16 kHz mono audio -> one 128-d embedding per 0.96 s example (raw, or PCA-postprocessed)."""

    def __init__(self, config: VGGishConfig, random_init: bool = False, device: str | torch.device = "cpu", seed: int = 0):
        import torchvggish

        self.config, self.random_init, self.device = config, random_init, torch.device(device)
        torch.manual_seed(seed)
        self.model = torchvggish.VGG(torchvggish.make_layers(), postprocess=False)
        self.weights: Path | None = None  # the files the weights were read from (their sha256 is recorded)
        self.pca_weights: Path | None = None
        if not random_init:
            if config.weights:
                state, self.weights = _load_state(config.weights, "VGGish"), Path(config.weights)
            else:
                state, self.weights = _hub_state(torchvggish.torchvggish.VGGISH_WEIGHTS, "VGGish weights", "--set student.vggish.weights")
            self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        self.postprocessor = self._postprocessor(torchvggish) if config.postprocess else None

    def _postprocessor(self, torchvggish):
        """torchvggish's own Postprocessor, fed PCA params from a file or the hub cache (or random ones)."""
        if self.random_init:
            generator = torch.Generator().manual_seed(1)
            matrix = torch.linalg.qr(torch.randn(128, 128, generator=generator))[0]
            params = {"pca_eigen_vectors": matrix, "pca_means": torch.zeros(128, 1)}
        elif self.config.pca_weights:
            params, self.pca_weights = _load_state(self.config.pca_weights, "VGGish PCA"), Path(self.config.pca_weights)
        else:
            params, self.pca_weights = _hub_state(torchvggish.torchvggish.PCA_PARAMS, "VGGish PCA params", "--set student.vggish.pca_weights")
        processor = object.__new__(torchvggish.Postprocessor)  # its __init__ only downloads these two tensors
        processor._pca_matrix = torch.as_tensor(params["pca_eigen_vectors"]).float().to(self.device)
        processor._pca_means = torch.as_tensor(params["pca_means"]).reshape(-1, 1).float().to(self.device)
        return processor

    def encode(self, audio) -> np.ndarray:
        """[S, 128] for the S whole 0.96 s examples in ``audio`` (a ``data_shards.video.Audio``: every channel, its own
        rate)."""
        return self.embed(vggish_log_mel(audio))

    @torch.inference_mode()
    def embed(self, examples: torch.Tensor) -> np.ndarray:
        features = self.model(examples.to(self.device, non_blocking=True))
        if self.postprocessor is not None:
            features = self.postprocessor.postprocess(features).reshape(-1, 128)
        return features.float().cpu().numpy()

    def describe(self) -> dict:
        import torchvggish

        weights = None if self.random_init else (self.config.weights or torchvggish.torchvggish.VGGISH_WEIGHTS)
        return {"library": "torchvggish", "dim": 128, "example_s": VGGISH_EXAMPLE_S, "weights": weights,
                "weights_sha256": weights_digest(self.weights), "postprocess": "pca+quantize (0..255)" if self.config.postprocess else "raw",
                **({"pca_weights_sha256": weights_digest(self.pca_weights)} if self.config.postprocess else {}),
                "random_init": self.random_init}
