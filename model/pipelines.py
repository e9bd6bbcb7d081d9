"""What a report measures, as forward passes over inputs of the real shapes (random values cost the same):

- the student **head** alone (the network a run trains);
- the whole **student pipeline**: the CLIP image tower on the student's sampled frames + VGGish on its
  audio segment + the head;
- the **teacher pipeline**: ImageBind's vision tower on 5 two-frame clips x 3 crops and its audio tower
  on 3 two-second clips, fused (or the dense-CLIP teacher on its frames).

Decoding and preprocessing (resizing, crops, log-mel) are left out of all three: ``bench/extract.py``
measures those per video. ``measure`` counts FLOPs (torch's flop counter, FLOPs = 2 x MACs) and times
each pipeline at each batch size on each device with a warm-up, under the extraction's precision.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from model.costs import Timing, count_flops, count_parameters, time_call
from model.encoders import autocast, resolve_precision, vggish_examples

if TYPE_CHECKING:
    from model.encoders import ClipImageEncoder, VGGishEncoder
    from model.imagebind import ImageBind
    from model.students import Student

VGGISH_FRAMES, VGGISH_BANDS = 96, 64  # one 0.96 s log-mel example
BATCHES = (1, 256)

Inputs = dict[str, torch.Tensor]


@dataclass
class Pipeline:
    name: str
    modules: list[nn.Module]
    make_inputs: Callable[[int, torch.device], Inputs]  # random inputs for a batch of videos
    forward: Callable[[Inputs], torch.Tensor]  # -> one embedding per video
    description: str

    def parameters(self) -> int:
        unique = {id(m): m for m in self.modules}
        return sum(count_parameters(m) for m in unique.values())

    def to(self, device: torch.device) -> Pipeline:
        for module in self.modules:
            module.to(device).eval()
        return self


@dataclass
class Cost:
    """One pipeline's measured costs. ``latency[device][batch]`` is a Timing, or why it was not measured."""

    name: str
    description: str
    parameters: int
    flops_per_video: int
    precision: dict[str, str] = field(default_factory=dict)
    latency: dict[str, dict[int, Timing | str]] = field(default_factory=dict)

    def cells(self) -> list[tuple[str, int]]:
        return [(device, batch) for device, cells in self.latency.items() for batch in cells]

    def per_video_ms(self, device: str, batch: int) -> float | None:
        timing = self.latency.get(device, {}).get(batch)
        return timing.median_s * 1e3 / batch if isinstance(timing, Timing) else None

    def as_dict(self) -> dict:
        def cell(value: Timing | str) -> dict:
            if isinstance(value, Timing):
                return {"median_s": value.median_s, "min_s": value.min_s, "repeats": value.repeats}
            return {"skipped": value}

        return {"name": self.name, "description": self.description, "parameters": self.parameters,
                "flops_per_video": self.flops_per_video, "precision": self.precision,
                "latency": {d: {str(b): cell(t) for b, t in cells.items()} for d, cells in self.latency.items()}}


def _student_batch(clip: torch.Tensor, audio: torch.Tensor) -> Inputs:
    return {"clip": clip, "audio": audio, "has_audio": torch.ones(clip.shape[0], dtype=torch.bool, device=clip.device)}


def head_pipeline(name: str, student: Student) -> Pipeline:
    """The trained network alone, on already-extracted features."""
    cfg = student.cfg

    def make_inputs(batch: int, device: torch.device) -> Inputs:
        clip = F.normalize(torch.randn(batch, cfg.frames, cfg.clip_dim, device=device), dim=-1)
        return _student_batch(clip, torch.randn(batch, cfg.audio_dim, device=device))

    return Pipeline(name, [student], make_inputs, student, f"{cfg.kind} head on extracted features")


def student_pipeline(name: str, clip: ClipImageEncoder, vggish_encoder: VGGishEncoder, head: Student, segment_s: float) -> Pipeline:
    """Sparse inputs to the student's embedding: CLIP on ``frames`` images, VGGish on the segment's examples, the head."""
    cfg = head.cfg
    clip_tower, vggish, image_size = clip.model, vggish_encoder.model, clip.image_size
    examples = vggish_examples(segment_s)

    def make_inputs(batch: int, device: torch.device) -> Inputs:
        return {"frames": torch.randn(batch * cfg.frames, 3, *image_size, device=device),
                "audio": torch.randn(batch * examples, 1, VGGISH_FRAMES, VGGISH_BANDS, device=device)}

    def forward(inputs: Inputs) -> torch.Tensor:
        batch = inputs["frames"].shape[0] // cfg.frames
        clip = F.normalize(clip_tower(inputs["frames"]).float(), dim=-1).reshape(batch, cfg.frames, -1)
        audio = vggish(inputs["audio"]).float().reshape(batch, examples, -1).mean(1)
        return head(_student_batch(clip, audio))

    description = (f"CLIP image tower x {cfg.frames} frames ({image_size[0]}x{image_size[1]}) + VGGish x {examples} "
                   f"examples ({segment_s:g} s) + {cfg.kind} head")
    return Pipeline(name, [clip_tower, vggish, head], make_inputs, forward, description)


def imagebind_pipeline(name: str, model: ImageBind, clips: int = 5, crops: int = 3, audio_clips: int = 3) -> Pipeline:
    """ImageBind's own test-time views: ``clips`` x ``crops`` two-frame vision views, ``audio_clips`` log-mel clips."""
    v, a = model.config.vision, model.config.audio

    def make_inputs(batch: int, device: torch.device) -> Inputs:
        return {"vision": torch.randn(batch, clips * crops, 3, v.frames, v.image_size, v.image_size, device=device),
                "audio": torch.randn(batch, audio_clips, 1, a.mel_bins, a.target_length, device=device)}

    def forward(inputs: Inputs) -> torch.Tensor:
        out = model(inputs)
        return F.normalize(F.normalize(out["vision"].float(), dim=-1) + F.normalize(out["audio"].float(), dim=-1), dim=-1)

    description = (f"ImageBind vision tower x {clips * crops} views ({clips} clips x {v.frames} frames x {crops} crops, "
                   f"{v.image_size}px) + audio tower x {audio_clips} clips ({a.mel_bins}x{a.target_length} log-mel), fused")
    return Pipeline(name, [model], make_inputs, forward, description)


def dense_clip_pipeline(name: str, clip: ClipImageEncoder, frames: int) -> Pipeline:
    clip_tower, image_size = clip.model, clip.image_size

    def make_inputs(batch: int, device: torch.device) -> Inputs:
        return {"frames": torch.randn(batch * frames, 3, *image_size, device=device)}

    def forward(inputs: Inputs) -> torch.Tensor:
        features = F.normalize(clip_tower(inputs["frames"]).float(), dim=-1)
        return F.normalize(features.reshape(-1, frames, features.shape[-1]).mean(1), dim=-1)

    return Pipeline(name, [clip_tower], make_inputs, forward, f"CLIP image tower x {frames} frames, mean-pooled")


def default_devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def measure(pipeline: Pipeline, devices: list[torch.device], batches: tuple[int, ...] = BATCHES, repeats: int = 5,
            budget_s: float = 120.0, precision: str = "auto", progress: Callable[[str], None] = lambda line: None) -> Cost:
    """FLOPs per video (counted at batch 1 on the first device, whatever ``batches`` says) and the
    median latency of each batch size on each device, after a warm-up. A cell whose warm-up and one
    timed call are predicted (linearly, from the smallest batch) to overrun ``budget_s`` is skipped,
    saying so; so is one that runs out of memory or fails."""
    cost = Cost(pipeline.name, pipeline.description, pipeline.parameters(), 0)
    for device in devices:
        pipeline.to(device)
        mode = resolve_precision(precision, device)
        cost.precision[device.type] = mode

        def runner(batch: int, device: torch.device = device, mode: str = mode) -> Callable[[], torch.Tensor]:
            inputs = pipeline.make_inputs(batch, device)

            def call() -> torch.Tensor:
                with torch.inference_mode(), autocast(device, mode):
                    return pipeline.forward(inputs)

            return call

        if not cost.flops_per_video:
            cost.flops_per_video = count_flops(runner(1))
        cells: dict[int, Timing | str] = cost.latency.setdefault(device.type, {})
        for batch in batches:
            smallest = cells.get(min(batches))
            predicted = smallest.median_s * batch / min(batches) if isinstance(smallest, Timing) and batch > min(batches) else 0.0
            if 2 * predicted > budget_s:
                cells[batch] = (f"skipped: warm-up + 1 call ~ 2 x {predicted:.0f} s (predicted from batch {min(batches)}) "
                                f"would overrun the {budget_s:.0f} s budget")
            else:
                try:
                    cells[batch] = time_call(runner(batch), repeats=repeats, warmup=1, budget_s=budget_s)
                except torch.OutOfMemoryError:
                    cells[batch] = f"skipped: out of {device.type} memory"
                except RuntimeError as exc:  # e.g. a CPU allocation failure at batch 256
                    cells[batch] = f"skipped: failed ({str(exc).splitlines()[0][:120]})"
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            progress(f"{pipeline.name} {device.type} batch {batch}: {cells[batch]}")
    pipeline.to(torch.device("cpu"))
    return cost
