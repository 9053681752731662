"""`scalekd report`: a run's (or several runs') TensorBoard scalars and final metrics as PNGs.

Every student of a run is a curve of its own (the students of a multi-student run log under
`<name>/`: read_scalars gives a student's own TensorBoard folder, tb/NAME, as tags `NAME/...`, as
runs of the earlier layout wrote them into tb/), labelled `run` or `run:student`, so student
alone vs KD vs ScaleKD, in one run or in several, share each panel.
"""

from __future__ import annotations

import json
from pathlib import Path

from scalekd.diagnostics.figures import new_figure, save
from scalekd.engine.logging import read_scalars

# panel title -> (scalar tag within a student, y label)
PANELS = {
    "total loss": ("loss/total", "loss"),
    "test top-1": ("eval/top1", "top-1 (%)"),
    "learning rate": ("lr", "lr"),
    "throughput": ("throughput/images_per_s", "images / s"),
    "teacher's share of step time": ("time/teacher_share", "share of compute"),
}
OWN = ("loss", "eval", "eval_ema", "throughput", "time", "lr")  # first parts of a student's tags


def label(run_dir: Path, student: str) -> str:
    """`run:student`; the recipe's own student (which has no name) goes by its method."""
    if not student:
        recipe = Path(run_dir) / "recipe.json"
        student = (json.loads(recipe.read_text())["distill"]["method"] if recipe.is_file()
                   else "student")
    return f"{Path(run_dir).name}:{student}"


def student_series(run_dir: Path,
                   scalars: dict[str, dict[int, float]]) -> dict[str, dict[str, dict[int, float]]]:
    """label -> {tag within the student: {step: value}} for each student of the run, from the
    run's `scalars`; run-wide tags (memory/, teacher/) are left out."""
    by_student: dict[str, dict[str, dict[int, float]]] = {}
    for tag, values in scalars.items():
        first, _, rest = tag.partition("/")
        if first in ("memory", "teacher", "progress"):
            continue
        student = first if rest and first not in OWN else ""
        by_student.setdefault(label(run_dir, student), {})[rest if student else tag] = values
    return by_student


def final_top1(run_dir: Path) -> dict[str, float]:
    """label -> final test top-1, from the run's metrics.json (written at its end)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    out = {}
    for key, value in json.loads(path.read_text()).items():
        if key == "eval/top1" or key.endswith("/eval/top1"):
            student = key[: -len("eval/top1")].rstrip("/")
            out[label(run_dir, student)] = value
    return out


def steps_per_epoch(epochs: dict[int, float]) -> float:
    """From a run's progress/epoch scalar (step -> epoch, linear); 0 for runs without it."""
    step, epoch = next(((k, v) for k, v in epochs.items() if v > 0), (0, 0.0))
    return step / epoch if epoch else 0.0


def plot_report(run_dirs: list[Path], out_dir: Path, x_axis: str = "epoch") -> list[Path]:
    """training.png (loss, top-1, lr, throughput, teacher share), loss_terms.png (each loss
    term of each student) and, for finished runs, final_top1.png. `x_axis` "epoch" or "step"
    (optimiser steps: runs whose epochs differ in size, such as a transfer set's, compare by
    updates)."""
    series: dict[str, dict[str, dict[int, float]]] = {}
    epochs: dict[str, dict[int, float]] = {}  # label -> step -> epoch, where the run logged it
    teachers: dict[str, float] = {}  # run -> the teacher's test top-1
    for run_dir in run_dirs:
        if not (Path(run_dir) / "tb").is_dir():
            raise FileNotFoundError(f"{run_dir} has no tb/ folder: give the run.dir of a "
                                    "scalekd run")
        scalars = read_scalars(run_dir)
        students = student_series(run_dir, scalars)
        series.update(students)
        epochs.update({name: scalars.get("progress/epoch", {}) for name in students})
        if "teacher/top1" in scalars:
            teachers[Path(run_dir).name] = next(iter(scalars["teacher/top1"].values()))
    colours = {label: f"C{i % 10}" for i, label in enumerate(series)}
    per_epoch = {label: steps_per_epoch(e) for label, e in epochs.items()}
    # over epochs where asked and every run logged them, else over optimiser steps
    by_epoch = x_axis == "epoch" and all(per_epoch.values())
    x_label = "epoch" if by_epoch else "optimiser step"

    def curve(ax, label: str, values: dict[int, float], **style) -> None:
        steps, ys = zip(*sorted(values.items()))
        xs = [s / per_epoch[label] for s in steps] if by_epoch else steps
        ax.plot(xs, ys, color=colours[label], label=label, **style)
    written = []

    fig, axes = new_figure(2, 3, width=5.0, height=3.6)
    for ax, (title, (tag, ylabel)) in zip(axes, PANELS.items()):
        for label, tags in series.items():
            if tag in tags:
                curve(ax, label, tags[tag], marker="o" if tag.startswith("eval") else None,
                      markersize=3)
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    for i, (run, top1) in enumerate(teachers.items()):
        axes[1].axhline(top1, color="grey", linestyle="--" if i == 0 else ":", linewidth=1,
                        label=f"teacher ({run})")
    axes[1].legend(fontsize=7, loc="lower right")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=9, title="run:student")
    written.append(save(fig, Path(out_dir) / "training.png", "Training"))

    terms = sorted({t for tags in series.values() for t in tags
                    if t.startswith("loss/") and t != "loss/total"})
    if terms:
        cols = min(3, len(terms))
        rows = -(-len(terms) // cols)
        fig, axes = new_figure(rows, cols, width=5.0, height=3.4)
        for ax, term in zip(axes, terms):
            for label, tags in series.items():
                if term in tags:
                    curve(ax, label, tags[term])
            ax.set_title(term)
            ax.set_xlabel(x_label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in axes[len(terms):]:
            ax.axis("off")
        written.append(save(fig, Path(out_dir) / "loss_terms.png", "Loss terms (unweighted)"))

    finals = {k: v for run_dir in run_dirs for k, v in final_top1(run_dir).items()}
    if finals:
        fig, (ax,) = new_figure(width=max(5.0, 1.1 * len(finals) + 2), height=4.0)
        labels = list(finals)
        bars = ax.bar(range(len(labels)), [finals[k] for k in labels],
                      color=[colours.get(k, "C7") for k in labels])
        ax.bar_label(bars, fmt="%.2f", fontsize=9)
        for i, (run, top1) in enumerate(teachers.items()):
            ax.axhline(top1, color="grey", linestyle="--" if i == 0 else ":", linewidth=1,
                       label=f"teacher ({run}): {top1:.2f}")
        if teachers:
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_ylabel("test top-1 (%)")
        shown = [*finals.values(), *teachers.values()]
        ax.set_ylim(max(0.0, min(shown) - 10), min(100.0, max(shown) + 3))
        ax.grid(axis="y", alpha=0.3)
        written.append(save(fig, Path(out_dir) / "final_top1.png", "Final test top-1"))
    return written
