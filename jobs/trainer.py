"""The training loop behind the training job (``jobs.train``) and every sweep trial (``tune.trial``): the student and its
loss as one module, AdamW with warm-up and cosine decay, per-rank batches, validation and selection, checkpoints and
RNG state that resume exactly, divergence and time-budget stops, early stopping, and the run directory's record.

Runs the same under ``python -m`` or ``accelerate launch`` on CPU (one or several gloo processes), one GPU, multi-GPU
DDP or DeepSpeed ZeRO.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from data_shards import ShardSet
from data_shards.reader import TrainBatches, load_split
from jobs import keep_until_exit, now
from jobs.config import ConfigError, JobConfig
from jobs.embedding import embed_split, to_device
from jobs.init_from import InitSource, open_source
from jobs.rundir import RunDir, disk_cause, disk_message, hardware, is_rank_zero, launched_by, new_run_record, save_atomic
from jobs.trackers import make_trackers, start_trackers
from model import build_loss, build_student, retrieval_metrics
from model.selection import is_better

log = logging.getLogger("streamapprox.train")


class Distiller(nn.Module):
    """Student + loss in one module, so DDP/DeepSpeed keep a learnable temperature in sync too."""

    def __init__(self, cfg: JobConfig):
        super().__init__()
        self.student = build_student(cfg.model)
        self.loss = build_loss(cfg.loss)

    def forward(self, batch: dict[str, torch.Tensor], with_loss: bool = True):
        embedding = self.student(batch)
        return self.loss(embedding, batch["teacher"]) if with_loss else embedding


DIVERGENCE_FACTOR = 10.0  # a loss past this many times the first steps' loss has diverged


class Diverged(RuntimeError):
    """The loss became non-finite or exploded; the message names the step, the value and the likely key."""


FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")  # where torch has a fused AdamW kernel


def build_optimizer(model: nn.Module, cfg: JobConfig) -> torch.optim.Optimizer:
    """AdamW; biases, norms, embeddings-like vectors and the temperature get no weight decay. Torch's fused kernel
    where it has one: on a CPU its default is a loop over the tensors, about 7x slower per step for the MLP student
    (a fifth of each training step), for the same update to float rounding."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "log_scale" in name else decay).append(param)
    o = cfg.optim
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    beta1, beta2 = o.betas  # the config validates exactly two
    fused = all(p.device.type in FUSED_OPTIMIZER_DEVICES and p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(beta1, beta2), eps=o.eps, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: JobConfig, total_steps: int):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` x lr."""
    warmup = max(1, math.ceil(cfg.optim.warmup_ratio * total_steps))
    floor = cfg.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(model, batch, optimizer, scheduler, accelerator, grad_clip: float) -> dict[str, float]:
    model.train()
    terms = model(batch)
    accelerator.backward(terms["loss"])
    if grad_clip > 0 and accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {key: float(value.detach()) for key, value in terms.items()}


def param_digest(model: nn.Module) -> str:
    """Digest of the trainable parameters (BatchNorm running stats are per-rank until DDP re-broadcasts them)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_accelerator_options(process_group_kwargs) -> dict:
    """Without a GPU, several processes need gloo: plain DDP gets it from Accelerate's CPU mode;
    DeepSpeed must stay out of CPU mode (which would bypass it) and be handed gloo explicitly."""
    if torch.cuda.is_available():
        return {}
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return {"kwargs_handlers": [process_group_kwargs(backend="gloo")]}
    return {"cpu": True}


class Trainer:
    def __init__(self, cfg: JobConfig, shards: ShardSet, run: RunDir, resume: dict | None, time_budget: float | None,
                 on_epoch_end: Callable[[dict], None] | None = None, init: InitSource | None = None, started: float | None = None):
        """``on_epoch_end(record)`` is called on every rank once an epoch's validation and last.pt are
        done (how a sweep reports each epoch to Ray Tune). ``init``: ``train.init_from`` already opened (the job's
        pre-flight did); a sweep trial leaves it to the trainer. A resumed run never uses it. ``started``: when the
        ``time_budget`` began (``time.monotonic()``; the job passes its own start), else now."""
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs, set_seed

        if cfg.model.kind == "zero_shot":
            raise ConfigError("model.kind=zero_shot has nothing to train: make the floor with `launch local zero_shot`")
        self.cfg, self.run, self.on_epoch_end = cfg, run, on_epoch_end
        self.started = time.monotonic() if started is None else started
        self.deadline = self.started + time_budget if time_budget else None
        self.accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, project_dir=str(run.path),
                                       log_with=make_trackers(cfg, run, resume is not None, is_rank_zero()),
                                       **cpu_accelerator_options(InitProcessGroupKwargs))
        acc = self.accelerator
        self.is_main = acc.is_main_process
        self.shards = shards

        set_seed(cfg.train.seed)  # identical initial weights on every rank
        distiller = self.module = Distiller(cfg)
        self.init = None if resume else init or (open_source(cfg) if cfg.train.init_from else None)
        if self.init is not None:
            self.init.load_into(distiller.student)
        self.n_params = sum(p.numel() for p in distiller.student.parameters())
        d = cfg.data
        self.train_data = TrainBatches(
            self.shards, d.train_split, d.batch_size, rank=acc.process_index, world_size=acc.num_processes,
            seed=cfg.train.seed, mode=d.cache, cache_max_gb=d.cache_max_gb, num_workers=d.num_workers,
            shuffle_buffer=d.shuffle_buffer,
        )
        self.val = load_split(self.shards, d.val_split)
        self.total_steps = cfg.train.epochs * len(self.train_data)
        optimizer = build_optimizer(distiller, cfg)
        self.scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        if acc.state.deepspeed_plugin is not None:  # our batches come from TrainBatches, not a DataLoader
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = d.batch_size
        self.model, self.optimizer = acc.prepare(distiller, optimizer)
        if acc.num_processes > 1:
            keep_until_exit(self.model)  # DDP's reducer (DeepSpeed's engine) holds the process group: never freed, see there
        # DeepSpeed in bf16/fp16 keeps the weights in that type and casts no inputs: the batches must come in it too, and
        # so must the float buffers it leaves behind (BatchNorm's running statistics)
        self.input_dtype = next(self.model.parameters()).dtype if self.deepspeed else None
        if self.input_dtype in (torch.bfloat16, torch.float16):
            for buffer in self.model.buffers():
                if buffer.is_floating_point():
                    buffer.data = buffer.data.to(self.input_dtype)
        set_seed(cfg.train.seed + 1 + acc.process_index)  # per-rank dropout streams
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.session_steps = 0  # steps taken by this process (train.session_steps caps them)
        self.first_loss: float | None = None  # the scale divergence is judged against
        self.epoch_losses: list[float] = []  # this epoch's step losses so far (checkpointed: a resumed epoch logs the same mean)
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.step_seconds = 0.0
        self.reserve_seconds = 5.0  # grows to the slowest measured save + evaluation
        if resume:
            self._load(resume)

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self) -> dict:
        from accelerate.utils import gather_object

        rngs = gather_object([rng_state()])
        return {
            "model": self.model_state(),
            # ZeRO partitions optimizer state across ranks; one rank's shard is no resumable state.
            "optimizer": None if self.deepspeed else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_losses": self.epoch_losses,
            "global_step": self.global_step,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "first_loss": self.first_loss,
            "rng": rngs,
            "world_size": self.accelerator.num_processes,
            "config": self.cfg.model_dump(mode="json"),
            "shards_digest": self.shards.digest(),
        }

    def save_last(self) -> None:
        began = time.monotonic()
        state = self._state()  # collective: every rank takes part
        if self.is_main:
            save_atomic(state, self.run.checkpoints / "last.pt")
        self.accelerator.wait_for_everyone()
        self.reserve_seconds = max(self.reserve_seconds, 2 * (time.monotonic() - began))

    def model_state(self) -> dict:
        """The weights: gathered by DeepSpeed, else those of ``self.module`` -- the Distiller this trainer built, which DDP
        wraps without a copy. (accelerate's unwrap_model would return that same module, but imports DeepSpeed to ask, ~2 s
        per process, whenever DeepSpeed is installed.)"""
        return self.accelerator.get_state_dict(self.model) if self.deepspeed else self.module.state_dict()

    def save_best(self, metrics: dict) -> None:
        state = self.model_state()
        if self.is_main:
            save_atomic({"model": state, "epoch": self.epoch, "val": metrics, "config": self.cfg.model_dump(mode="json"),
                         "shards_digest": self.shards.digest()}, self.run.checkpoints / "best.pt")

    @property
    def deepspeed(self) -> bool:
        return self.accelerator.state.deepspeed_plugin is not None

    def _load(self, state: dict) -> None:
        if state["optimizer"] is None or self.deepspeed:
            raise ConfigError("resuming DeepSpeed runs is not supported yet (ZeRO shards the optimizer state); "
                              "resume with a DDP accelerate config, or start a new run")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.epoch_losses = list(state.get("epoch_losses", []))
        self.global_step, self.best_value = state["global_step"], state["best_value"]
        self.best_epoch = state.get("best_epoch")
        self.first_loss = state.get("first_loss")  # divergence is judged against the run's start, not this session's
        if state["world_size"] == self.accelerator.num_processes:
            set_rng_state(state["rng"][self.accelerator.process_index])
        else:
            log.warning("resuming with %d processes instead of %d: random streams restart", self.accelerator.num_processes, state["world_size"])
        if self.is_main:
            self.run.truncate_metrics(self.global_step)

    # -- loop ----------------------------------------------------------------------------------
    def _out_of_time(self) -> bool:
        """Agreed by all ranks: would the next step plus a save and an evaluation overrun the budget, or has this
        session taken its ``train.session_steps``?"""
        if self.cfg.train.session_steps is not None and self.session_steps >= self.cfg.train.session_steps:
            return True
        if self.deadline is None:
            return False
        need = 2 * self.step_seconds + self.reserve_seconds
        flag = torch.tensor([float(time.monotonic() + need > self.deadline)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _check_divergence(self, loss: float) -> None:
        """A non-finite loss, or one past ``DIVERGENCE_FACTOR`` times the first steps' loss, stops the run (every rank
        agrees): training on from there only produces a broken model that still "completes"."""
        if self.first_loss is None and math.isfinite(loss):
            self.first_loss = max(abs(loss), 1e-3)
        bound = DIVERGENCE_FACTOR * self.first_loss if self.first_loss is not None else math.inf
        flag = torch.tensor([float(not math.isfinite(loss) or loss > bound)], device=self.accelerator.device)
        if self.accelerator.reduce(flag, reduction="sum").item() > 0:
            cfg = self.cfg
            why = "not finite" if not math.isfinite(loss) else f"over {DIVERGENCE_FACTOR:g}x the first steps' {self.first_loss:.3g}"
            fp16 = " or fp16 overflow (train.mixed_precision)" if self.accelerator.mixed_precision == "fp16" else ""
            raise Diverged(f"training diverged at step {self.global_step} (epoch {self.epoch}): loss {loss:.4g} is {why}; the likely "
                           f"cause is the learning rate (optim.lr={cfg.optim.lr:g}: lower it){fp16}. Start a new run with a "
                           "smaller value: resuming would diverge again")

    def _audit(self, batch: dict) -> None:
        ids = [hashlib.sha1(row.numpy().tobytes()).hexdigest()[:12] for row in batch["teacher"].cpu()]
        record = {"step": self.global_step, "rank": self.accelerator.process_index, "samples": ids,
                  "params": param_digest(self.module)}
        with open(self.run.path / "logs" / f"audit-rank{self.accelerator.process_index}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def validate(self) -> dict:
        began = time.monotonic()
        embeddings = embed_split(self.model, self.val, self.accelerator, self.cfg.data.eval_batch_size, self.input_dtype)
        metrics = retrieval_metrics(embeddings, self.val.teacher)
        self.reserve_seconds = max(self.reserve_seconds, 2 * (time.monotonic() - began) + 2)
        return metrics

    def run_epoch(self) -> bool:
        """One epoch from ``step_in_epoch``; False if the time budget stopped it."""
        cfg, acc = self.cfg, self.accelerator
        for batch in self.train_data.epoch(self.epoch, start=self.step_in_epoch):
            if self._out_of_time():
                return False
            began = time.monotonic()
            terms = train_step(self.model, to_device(batch, acc.device, self.input_dtype), self.optimizer, self.scheduler, acc,
                               cfg.optim.grad_clip)
            self.step_seconds = 0.9 * self.step_seconds + 0.1 * (time.monotonic() - began) if self.step_seconds else time.monotonic() - began
            self.step_in_epoch += 1
            self.global_step += 1
            self.session_steps += 1
            self.epoch_losses.append(terms["loss"])
            self._check_divergence(terms["loss"])
            if cfg.train.audit:
                self._audit(batch)
            if self.is_main and self.global_step % cfg.train.log_every == 0:
                scale = float(self.module.loss.scale().detach())
                record = {"kind": "step", "epoch": self.epoch, "step": self.global_step, "lr": self.scheduler.get_last_lr()[0],
                          "logit_scale": scale, **terms}
                self.run.log_metrics(record)
                acc.log({f"train/{name}": value for name, value in record.items() if name not in ("kind", "epoch", "step")},
                        step=self.global_step)
                log.info("epoch %d step %d/%d loss %.4f lr %.2e", self.epoch, self.global_step, self.total_steps, terms["loss"], record["lr"])
            if cfg.train.checkpoint_every and self.global_step % cfg.train.checkpoint_every == 0:
                self.save_last()
        metrics = self.validate()
        improved = is_better(cfg.train.select_metric, metrics[cfg.train.select_metric], self.best_value)
        if improved:
            self.best_value, self.best_epoch = metrics[cfg.train.select_metric], self.epoch
            self.save_best(metrics)
        record = {"kind": "epoch", "epoch": self.epoch, "step": self.global_step,
                  "train_loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else None, "val": metrics, "best": improved,
                  "elapsed_s": round(time.monotonic() - self.started, 2)}
        acc.log({**{f"val/{name}": value for name, value in metrics.items()},
                 **({"epoch/train_loss": record["train_loss"]} if record["train_loss"] is not None else {})}, step=self.global_step)
        if self.is_main:
            self.run.log_metrics(record)
            log.info("epoch %d done: val s2t R@1 %.2f t2s R@1 %.2f mean cos %.3f%s", self.epoch, metrics["s2t_r1"],
                     metrics["t2s_r1"], metrics["mean_cos"], "  (best)" if improved else "")
        self.epoch += 1
        self.step_in_epoch, self.epoch_losses = 0, []
        self.save_last()
        if self.on_epoch_end:
            self.on_epoch_end({**record, "best_value": self.best_value, "patience_spent": self.patience_spent()})
        return True

    def validate_start(self) -> None:
        """A fine-tuned run's validation at step 0, before any update: proof of the weights it starts from (it equals the
        source's own validation), logged as a ``start`` record. It takes no part in selecting best.pt."""
        assert self.init is not None
        metrics = self.validate()
        self.accelerator.log({f"val/{name}": value for name, value in metrics.items()}, step=0)
        if self.is_main:
            source = self.init.record
            self.run.log_metrics({"kind": "start", "epoch": 0, "step": 0, "val": metrics, "init_from": source.location})
            log.info("step 0, from %s (sha256 %s): val s2t R@1 %.2f t2s R@1 %.2f mean cos %.3f", source.path, source.sha256[:12],
                     metrics["s2t_r1"], metrics["t2s_r1"], metrics["mean_cos"])

    def fit(self) -> str:
        if self.init is not None and self.global_step == 0:
            self.validate_start()
        while self.epoch < self.cfg.train.epochs and not self.patience_spent():
            if not self.run_epoch():
                self.save_last()
                return "incomplete"
        if self.epoch < self.cfg.train.epochs and self.is_main:
            log.info("early stop after epoch %d: no better validation %s in the %d epochs since epoch %d (train.patience)",
                     self.epoch - 1, self.cfg.train.select_metric, self.cfg.train.patience, self.best_epoch)
        return "complete"

    def patience_spent(self) -> bool:
        """``train.patience`` epochs in a row have ended without a better validation figure (the same on every rank: the
        figures are gathered). Asked before each epoch, so a run resumed at that point stops where the uninterrupted one did."""
        patience = self.cfg.train.patience
        return patience is not None and self.best_epoch is not None and self.epoch - 1 - self.best_epoch >= patience


def setup_logging(run: RunDir | None, rank: int) -> None:
    """Rank 0 logs to ``logs/train.log``, rank k to ``logs/train-rank<k>.log`` (warnings only): on nodes that share
    no disk each rank's log is its own file, and they come back side by side."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if run is not None:
        (run.path / "logs").mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run.path / "logs" / ("train.log" if rank == 0 else f"train-rank{rank}.log")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_training(trainer: Trainer, run: RunDir, cfg: JobConfig, resume: dict | None, **record) -> str:
    """Create (or reopen) the run directory, record what runs where in run.json, fit, and record the
    outcome; the training job and every sweep trial go through here. Returns the fit status."""
    acc = trainer.accelerator
    if trainer.is_main:
        run.create()
    acc.wait_for_everyone()
    setup_logging(run, acc.process_index)
    # TensorBoard events in RUN/tensorboard (a resumed run first drops the events after its checkpoint: the replayed steps), W&B, MLflow
    start_trackers(acc, cfg, trainer.global_step, resume is not None)
    if trainer.is_main:
        info: dict = {"status": "running", **record}
        if resume:
            info.update(resumed_at=[*run.read().get("resumed_at", []), now()], error=None)
        else:
            info.update(**new_run_record(run, cfg, trainer.shards), student_parameters=trainer.n_params)
            if trainer.init is not None:
                info.update(init_from=trainer.init.record.model_dump())
        run.update(**info, hardware=hardware(acc), backend=launched_by())
        log.info("run directory %s (%s, %d processes, %d student parameters)", run.path, acc.device, acc.num_processes, trainer.n_params)
    try:
        status = trainer.fit()
    except BaseException as exc:
        if trainer.is_main:
            cause = disk_cause(exc)
            try:  # on a full disk even this may fail: the error still reaches the user
                run.update(status="failed", error=disk_message(cause, run) if cause else f"{type(exc).__name__}: {exc}", ended_at=now())
            except OSError:
                pass
        raise
    acc.wait_for_everyone()
    for tracker in acc.trackers:  # their runs end with the training (a sweep's trial ends here; main's end_training repeats it)
        tracker.finish()
    if trainer.is_main:
        stopped = trainer.epoch < cfg.train.epochs and status == "complete"
        run.update(status=status, ended_at=now(), global_step=trainer.global_step, epochs_run=trainer.epoch,
                   best={"metric": cfg.train.select_metric, "value": trainer.best_value, "epoch": trainer.best_epoch},
                   **({"early_stop": {"after_epoch": trainer.epoch - 1, "patience": cfg.train.patience}} if stopped else {}))
    return status
