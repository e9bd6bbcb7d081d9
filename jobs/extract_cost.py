"""What an extraction will cost, before it runs: the plan's shards (videos and bytes) and the FLOPs of one video
through the chosen encoders -- the student's CLIP over its frames and VGGish over its segment, and the teacher --
counted by torch's flop counter on meta tensors (shapes only: no weights are read and nothing is computed, so even
ImageBind-huge takes seconds here). A launcher turns them into GPU hours at a stated utilisation."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from data_shards.ledger import Plan
from data_shards.sources import VideoEntry
from jobs.contract import ShardWork, WorkEstimate
from model.costs import count_flops
from model.encoders import ClipConfig, vggish_examples
from model.imagebind import ImageBind, ImageBindConfig
from model.pipelines import VGGISH_BANDS, VGGISH_FRAMES, imagebind_pipeline

if TYPE_CHECKING:
    from jobs.extract import ExtractConfig


def _clip_tower_flops(clip_cfg: ClipConfig, images: int) -> tuple[int, str]:
    import open_clip  # open_clip imports timm and its model zoo: seconds, only here

    if clip_cfg.architecture:
        open_clip.add_model_config(clip_cfg.architecture)
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded: none are wanted here
    try:
        with torch.device("meta"):
            model = open_clip.create_model(clip_cfg.model, device="meta")
    finally:
        logging.disable(logging.NOTSET)
    tower = model.visual
    size = tower.image_size
    height, width = (size, size) if isinstance(size, int) else size
    pixels = torch.empty(images, 3, height, width, device="meta")
    return count_flops(lambda: tower(pixels)), f"CLIP {clip_cfg.model} x {images} frames"


def _vggish_flops(examples: int) -> int:
    import torchvggish  # torchvggish's package imports resampy and numba: seconds, only here

    with torch.device("meta"):
        model = torchvggish.VGG(torchvggish.make_layers(), postprocess=False)
    batch = torch.empty(examples, 1, VGGISH_FRAMES, VGGISH_BANDS, device="meta")
    return count_flops(lambda: model(batch))


def _teacher_flops(cfg: ExtractConfig) -> tuple[int, str]:
    teacher = cfg.teacher
    if teacher.kind == "dense_clip":
        flops, _ = _clip_tower_flops(teacher.clip or cfg.student.clip, teacher.frames)
        return flops, f"dense-CLIP teacher x {teacher.frames} frames"
    arch = teacher.imagebind.architecture
    config = ImageBindConfig.huge() if arch == "huge" else ImageBindConfig.model_validate_json(Path(arch).read_text())
    with torch.device("meta"):
        model = ImageBind(config, modalities=("vision", "audio"))
    pipeline = imagebind_pipeline("teacher", model)
    inputs = pipeline.make_inputs(1, torch.device("meta"))
    return count_flops(lambda: pipeline.forward(inputs)), f"ImageBind-{arch} teacher"


def flops_per_video(cfg: ExtractConfig) -> tuple[int, str]:
    """(FLOPs of one video through every encoder, which encoders)."""
    student, named = _clip_tower_flops(cfg.student.clip, cfg.student.frames)
    examples = vggish_examples(cfg.student.audio.segment_s)
    teacher, teacher_named = _teacher_flops(cfg)
    return student + _vggish_flops(examples) + teacher, f"{named} + VGGish x {examples} examples + {teacher_named}"


def work_estimate(cfg: ExtractConfig, entries: list[VideoEntry], sizes: dict[str, int | None]) -> WorkEstimate:
    """The plan's shards as the extraction will cut them (``sizes``: bytes by video path, where known)."""
    plan = Plan.build(entries, cfg.samples_per_shard, {})
    shards = []
    for shard in plan.shards:
        weights = [sizes.get(video.path) for video in shard.videos]
        shards.append(ShardWork(items=len(shard.videos), bytes=None if None in weights else sum(w or 0 for w in weights)))
    flops, models = flops_per_video(cfg)
    return WorkEstimate(item="video", shards=shards, flops_per_item=flops, models=models)


def table(cfg: ExtractConfig) -> str:
    """The FLOPs a video of each encoder ``cfg`` names (and of a 16-frame dense-CLIP teacher beside an ImageBind
    one): the figures ``launch kaggle extract --dry-run`` adds up into GPU hours for the machine it plans for."""
    clip, clip_named = _clip_tower_flops(cfg.student.clip, cfg.student.frames)
    examples = vggish_examples(cfg.student.audio.segment_s)
    teacher, teacher_named = _teacher_flops(cfg)
    rows = [(clip_named, clip), (f"VGGish x {examples} examples", _vggish_flops(examples)), (teacher_named, teacher)]
    if cfg.teacher.kind == "imagebind":
        dense = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"kind": "dense_clip", "frames": 16})})
        dense_flops, dense_named = _teacher_flops(dense)
        rows.append((f"(or) {dense_named}", dense_flops))
    return "\n".join(["| encoder | GFLOPs a video |", "|---|---:|", *(f"| {name} | {flops / 1e9:,.1f} |" for name, flops in rows)])
