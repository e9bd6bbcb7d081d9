"""The report's words and tables: ``render`` writes report.md from measured runs and costs.

Written to be read top to bottom: what the numbers are about (data said plainly), a summary, what
was trained, retrieval with its conventions, then costs with how they were measured.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from model.costs import Timing
from model.selection import RECALL_AT
from model.pipelines import Cost

if TYPE_CHECKING:
    from jobs.report_runs import RunReport

DIRECTIONS = {"s2t": "student → teacher", "t2s": "teacher → student"}
METRIC_COLUMNS = [f"{d}_{m}" for d in DIRECTIONS for m in [*(f"r{k}" for k in RECALL_AT), "medr", "meanr"]] + ["mean_cos"]


def data_text(info: dict) -> str:
    """Said plainly: synthetic features, real videos through random-init encoders, or real features."""
    shards = info.get("shards", {})
    kind, encoders = shards.get("source_kind"), shards.get("encoders") or {}
    if kind == "synthetic":
        return "SYNTHETIC features (generated vectors, no video and no encoder involved)"
    if encoders.get("random_init"):
        return "real videos through RANDOM-INIT encoders (features for tests only, not a real result)"
    if kind == "videos":
        clip, teacher = encoders.get("clip", {}), encoders.get("teacher", {})
        return (f"real videos: CLIP {clip.get('model')}/{clip.get('pretrained')}, VGGish, "
                f"teacher {teacher.get('kind')} {teacher.get('architecture', '')}".rstrip())
    return f"shards of kind {kind!r} (unknown provenance)"


def number(value: float) -> str:
    """Three significant digits without scientific notation: 0.000263, 81.3, 17200."""
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.2e}"


def flops_text(flops: int) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if flops >= scale:
            return f"{number(flops / scale)} {unit}"
    return str(flops)


def latency_text(value: Timing | str | None, batch: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return "not measured"
    per_video = f" ({number(value.median_s * 1e3 / batch)}/video)" if batch > 1 else ""
    return f"{number(value.median_s * 1e3)}{per_video}"


def times(a: float, b: float, what: tuple[str, str]) -> str:
    """'**12x** fewer FLOPs for the student' -- or more, said as plainly."""
    if not a or not b:
        return "not comparable (a zero)"
    return f"**{number(a / b)}x** {what[0]}" if a >= b else f"**{number(b / a)}x** {what[1]}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def metric_rows(runs: list[RunReport]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "preset", "student", "loss", "test videos"] + METRIC_COLUMNS
    rows = []
    for run in runs:
        metrics = run.results["metrics"]
        rows.append([run.run_id, run.preset, run.student_text(), run.loss_text(), str(int(metrics["n"]))]
                    + [f"{metrics[c]:.3f}" if c == "mean_cos" else f"{metrics[c]:.2f}" for c in METRIC_COLUMNS])
    return header, rows


def cost_rows(costs: list[Cost]) -> tuple[list[str], list[list[str]]]:
    cells = list(dict.fromkeys(cell for c in costs for cell in c.cells()))
    header = ["pipeline", "parameters", "FLOPs / video"] + [f"{d} ms, batch {b}" for d, b in cells]
    rows = [[c.name, f"{number(c.parameters / 1e6)} M", flops_text(c.flops_per_video)]
            + [latency_text(c.latency.get(d, {}).get(b), b) for d, b in cells] for c in costs]
    return header, rows


def ratio_lines(costs: list[Cost]) -> list[str]:
    student = next((c for c in costs if c.name.startswith("student pipeline")), None)
    teacher = next((c for c in costs if c.name.startswith("teacher pipeline")), None)
    if student is None or teacher is None:
        return []
    lines = [f"- FLOPs per video: teacher {flops_text(teacher.flops_per_video)} vs student {flops_text(student.flops_per_video)}: "
             + times(teacher.flops_per_video, student.flops_per_video, ("fewer for the student", "more for the student")) + "."]
    for device, batch in teacher.cells():
        t, s = teacher.per_video_ms(device, batch), student.per_video_ms(device, batch)
        if t is not None and s is not None:
            lines.append(f"- Latency per video on {device} at batch {batch}: teacher {number(t)} ms vs student {number(s)} ms: "
                         + times(t, s, ("faster for the student", "slower for the student")) + ".")
        elif s is not None:
            lines.append(f"- Latency per video on {device} at batch {batch}: student {number(s)} ms; the teacher was not measured "
                         f"({teacher.latency[device][batch]}).")
    lines.append(f"- Parameters: teacher {number(teacher.parameters / 1e6)} M vs student pipeline {number(student.parameters / 1e6)} M.")
    return lines


def summary_lines(runs: list[RunReport], costs: list[Cost]) -> list[str]:
    trained = [r for r in runs if not r.is_floor]
    floors = [r for r in runs if r not in trained]
    lines = []
    if trained:
        best = max(trained, key=lambda r: r.results["metrics"]["s2t_r1"])
        m = best.results["metrics"]
        line = (f"- Best student: **{best.label}** ({best.student_text()}, {best.loss_text()} loss): R@1 {m['s2t_r1']:.2f} % "
                f"student → teacher, {m['t2s_r1']:.2f} % teacher → student, median rank {m['s2t_medr']:.1f}, over {int(m['n'])} test videos")
        if floors:
            floor = floors[0].results["metrics"]
            line += f" — the zero-shot floor reaches {floor['s2t_r1']:.2f} % / {floor['t2s_r1']:.2f} %"
        lines.append(line + ".")
        lines.append(f"- Chance level is {100 / m['n']:.2f} % R@1. \"Best\" is read off the test split, after each run chose "
                     "its checkpoint on validation.")
        test_sets = {(r.results["metrics"]["n"], r.results.get("split"), (r.results.get("shards") or {}).get("manifest_digest"))
                     for r in runs}
        if len(test_sets) > 1:
            lines.append("- **Caution:** these runs were tested on different test sets (size, split or shards differ), so their "
                         "R@K are not directly comparable.")
    return lines + ratio_lines(costs)


def render(runs: list[RunReport], costs: list[Cost], plots: dict[str, str], encoders_source: str, command: str, machine: dict) -> str:
    kinds = sorted({data_text(r.info) for r in runs})
    synthetic = any("SYNTHETIC" in k or "RANDOM-INIT" in k for k in kinds)
    out = [f"# StreamApprox report: {len(runs)} run{'s' if len(runs) > 1 else ''}", "",
           f"Made by `{command}` on {machine['host']} ({machine['cpu']}, {machine['cpu_threads']} threads, "
           f"GPU: {machine['gpu'] or 'none'}, torch {machine['torch']}).", ""]
    out += [f"> **Data:** {k}." for k in kinds] + [""]
    if synthetic:
        out += ["> These numbers show the pipeline works end to end; they say nothing about real videos.", ""]
    out += ["## Summary", "", *summary_lines(runs, costs), "", "## What was trained", ""]
    out.append(markdown_table(["run", "preset", "student", "loss", "training", "data", "status"],
                              [[r.run_id, r.preset, r.student_text(), r.loss_text(), r.training_text(), data_text(r.info),
                                str(r.info.get("status"))] for r in runs]))
    out += ["", "## Retrieval on the test split", "",
            "Each student embedding queries all teacher embeddings of the test split (`s2t`), and the reverse (`t2s`); "
            "the positive of video *i* is video *i*. R@K is the percentage of queries whose positive ranks within the first K; "
            "MedR/MeanR are ranks (1 = first, lower is better; ties count against the query). `mean_cos` is the mean cosine "
            "of positive pairs. Model selection used the validation split only.", ""]
    header, rows = metric_rows(runs)
    out += [markdown_table(header, rows), ""]
    for key, title, caption in (("recall", "Recall@K", "per run, both directions"),
                                ("cosine", "Cosine similarity: positive pairs vs negatives",
                                 "a student is good where the two distributions barely overlap"),
                                ("pca", "Teacher vs student embeddings",
                                 "2-D PCA of the teacher's test embeddings; each student point is joined to its teacher target")):
        if key in plots:
            out += [f"### {title}", "", f"![{title}]({plots[key]})", "", f"*{caption}.*", ""]
    out += ["## Cost", ""]
    if not costs:
        out += ["Not measured (`--no-costs`).", ""]
    else:
        out += [f"Measured here, in this one session, side by side; encoders: {encoders_source}. Random weights "
                "(the cost of a forward pass does not depend on the weights' values).", "",
                "- **Parameters**: counted from the modules.",
                "- **FLOPs**: torch's flop counter (`torch.utils.flop_counter`), FLOPs = 2 × MACs; matmuls, convolutions and "
                "attention are counted, elementwise work (norms, activations) is not. Per video, at batch 1.",
                "- **Latency**: milliseconds per call (per video in brackets): one warm-up call, then the median of up to "
                "the requested repeats; a cell predicted to overrun the time budget is not measured and says so. "
                "Precision: " + ", ".join(f"{d} {p}" for d, p in costs[-1].precision.items()) + ".",
                "- **Pipelines** start from decoded frames and audio; decoding and preprocessing are not included "
                "(`bench/extract.py` measures those per video).", ""]
        for cost in costs:
            out.append(f"- `{cost.name}`: {cost.description}.")
        header, rows = cost_rows(costs)
        out += ["", markdown_table(header, rows), ""]
        skipped = sorted({f"{c.name}, {d} batch {b}: {v}" for c in costs for d, cells in c.latency.items()
                          for b, v in cells.items() if isinstance(v, str)})
        out += [f"- Not measured: {s}" for s in skipped] + ([""] if skipped else [])
        if "costs" in plots:
            out += ["![Latency and FLOPs](" + plots["costs"] + ")", ""]
    out += ["## Files", "", "`comparison.csv` and `comparison.md` (the tables), `costs.json` (every measurement), "
            "and each run's `eval/results.json` (all metrics).", ""]
    return "\n".join(out)
