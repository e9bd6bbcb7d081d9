"""Training overhead: what our job and our launcher add to the training itself, measured side by side in one run.

Three processes train the MLP student of the embedded default (preset ``train_mlp``, the synthetic default set in
memory, 15 epochs) from a cold start, each timed from its start to its end:

- **bare**: a plain PyTorch loop doing the same work -- the split decoded into memory, forward, backward, the job's
  AdamW groups and warm-up + cosine schedule (``jobs.trainer``'s own builders), a validation pass (R@K) and a
  checkpoint of model and optimizer every epoch, best.pt when validation improves, one test pass at the end (the job
  evaluates its best.pt on test too);
- **job**: ``python -m jobs.train_mlp``;
- **launch**: ``launch local train_mlp`` (its --check, accelerate launch, the run's summary).

Time to first step: the same three, 1 epoch, from the process's start to the end of its first optimizer step
(the job and the launcher log every step for that run). Targets: job <= 1.15x and launch <= 1.25x the bare
loop; first step <= 4 s through the launcher. The last line is PASS or FAIL; exit 1 on FAIL.

    .venv/bin/python bench/train_overhead.py [--epochs 15] [--rounds 1]

With ``--rounds N`` each side runs N times, in turn, and the fastest of each is judged: on a shared machine
other work only ever slows a side down.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOB_TARGET, LAUNCH_TARGET, FIRST_STEP_TARGET = 1.15, 1.25, 4.0
FIRST_STEP = re.compile(r"(step 1/\d+|BARE FIRST STEP)")


def bare_loop(epochs: int, first_step_only: bool, out: Path) -> None:
    """The plain loop (run in its own process by ``--bare``): the job's config, model and loss, nothing of its harness."""
    import torch

    from data_shards import load_split, open_shards
    from jobs.config import load_config
    from jobs.trainer import Distiller, build_optimizer, build_scheduler
    from model import retrieval_metrics

    cfg = load_config("train_mlp", None, [])
    torch.manual_seed(cfg.train.seed)
    shards = open_shards(cfg.data.shards)
    train, val, test = (load_split(shards, split) for split in ("train", "val", "test"))
    distiller = Distiller(cfg)  # the student and its loss; the job's optimizer groups and schedule
    student, loss = distiller.student, distiller.loss
    params = list(distiller.parameters())
    per_epoch = len(train) // cfg.data.batch_size
    optimizer = build_optimizer(distiller, cfg)
    scheduler = build_scheduler(optimizer, cfg, per_epoch * epochs)

    def embed(split) -> torch.Tensor:
        student.eval()
        with torch.no_grad():
            return torch.cat([student(split.batch(torch.arange(i, min(i + cfg.data.eval_batch_size, len(split)))))
                              for i in range(0, len(split), cfg.data.eval_batch_size)])

    best = -1.0
    for epoch in range(epochs):
        order = torch.randperm(len(train))
        for step in range(per_epoch):
            student.train()
            batch = train.batch(order[step * cfg.data.batch_size:(step + 1) * cfg.data.batch_size])
            terms = loss(student(batch), batch["teacher"])
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if epoch == 0 and step == 0:
                print("BARE FIRST STEP", flush=True)
                if first_step_only:
                    return
        metrics = retrieval_metrics(embed(val), val.teacher)
        torch.save({"model": student.state_dict(), "loss": loss.state_dict(), "optimizer": optimizer.state_dict()}, out / "last.pt")
        if metrics["s2t_r1"] > best:
            best = metrics["s2t_r1"]
            torch.save({"model": student.state_dict()}, out / "best.pt")
    student.load_state_dict(torch.load(out / "best.pt")["model"])
    print("test", retrieval_metrics(embed(test), test.teacher), flush=True)


def timed(command: list[str], cwd: Path) -> tuple[float, float | None]:
    """Wall seconds of ``command``, and seconds from its start to the first line that marks a first step."""
    began, first = time.perf_counter(), None
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if first is None and FIRST_STEP.search(line):
            first = time.perf_counter() - began
    if process.wait() != 0:
        sys.exit(f"failed: {' '.join(command)}\n{''.join(lines[-40:])}")
    return time.perf_counter() - began, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bare", metavar="DIR", help=argparse.SUPPRESS)  # this file as the bare loop's own process
    parser.add_argument("--first-step-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_loop(args.epochs, args.first_step_only, Path(args.bare))
        return 0

    python, launch = sys.executable, str(Path(sys.executable).parent / "launch")
    with tempfile.TemporaryDirectory(prefix="train-overhead-") as tmp:
        work = Path(tmp)
        subprocess.run([python, "-m", "jobs.train_mlp", "--check"], cwd=REPO, check=True, capture_output=True)  # the default set, made once

        def sides(epochs: int, first_step: bool, run: int) -> dict[str, list[str]]:
            # every epoch, as the bare loop runs them (the preset's early stopping would end the job sooner)
            settings = ["--set", f"train.epochs={epochs}", "train.patience=null", *(["train.log_every=1"] if first_step else [])]
            return {"bare": [python, str(Path(__file__).resolve()), "--bare", str(work), "--epochs", str(epochs),
                             *(["--first-step-only"] if first_step else [])],
                    "job": [python, "-m", "jobs.train_mlp", *settings, "--run-dir", str(work / f"job{run}")],
                    "launch": [launch, "local", "train_mlp", "--runs-dir", str(work / "runs"), *settings]}

        walls: dict[str, list[float]] = {"bare": [], "job": [], "launch": []}
        firsts: dict[str, list[float]] = {"bare": [], "job": [], "launch": []}
        for run in range(args.rounds):
            for name, command in sides(args.epochs, False, run).items():
                walls[name].append(timed(command, REPO)[0])
                print(f"  round {run + 1}: {name:6s} {walls[name][-1]:6.1f} s ({args.epochs} epochs)", flush=True)
            for name, command in sides(1, True, run + 1000).items():
                first = timed(command, REPO)[1]
                assert first is not None, f"{name}: no first step seen"
                firsts[name].append(first)
                print(f"  round {run + 1}: {name:6s} first step at {first:4.1f} s", flush=True)

    bare, job, launched = min(walls["bare"]), min(walls["job"]), min(walls["launch"])
    first = {name: min(values) for name, values in firsts.items()}
    print(f"\n{args.epochs} epochs of train_mlp on the synthetic default, fastest of {args.rounds} round(s):")
    print(f"  bare PyTorch loop        {bare:6.1f} s   1.00x   first step at {first['bare']:4.1f} s")
    print(f"  python -m jobs.train_mlp {job:6.1f} s   {job / bare:.2f}x   first step at {first['job']:4.1f} s  (target <= {JOB_TARGET}x)")
    print(f"  launch local train_mlp   {launched:6.1f} s   {launched / bare:.2f}x   first step at {first['launch']:4.1f} s  "
          f"(target <= {LAUNCH_TARGET}x, first step <= {FIRST_STEP_TARGET:.0f} s)")
    ok = job / bare <= JOB_TARGET and launched / bare <= LAUNCH_TARGET and first["launch"] <= FIRST_STEP_TARGET
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
