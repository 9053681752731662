"""`scalekd eval`: a run's student (and optionally its teacher) on an evaluation set: top-1/top-5,
per-class top-1, teacher-student agreement and re-labelled sets (ImageNet-ReaL / -V2 style)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from scalekd.engine.evaluate import (agreement, classification_metrics, multilabel_top1, predict,
                                     read_label_file)
from scalekd.engine.saved_run import SavedRun
from scalekd.files import write_text_atomically


def evaluate_run(run: SavedRun, weights: Optional[Path] = None, ema: bool = False,
                 with_teacher: bool = False, label_files: tuple[Path, ...] = ()) -> dict:
    """Every metric, as a JSON-ready dict: {"student": {...}, "teacher": {...}, ...}."""
    names = [run.images.name(i) for i in range(len(run.images))]
    label_sets = {Path(f).stem: read_label_file(Path(f), names) for f in label_files}
    loader = run.loader()
    student_logits, targets = predict(run.student(weights, ema), loader)
    models = {"student": student_logits}
    if with_teacher:
        teacher = run.teacher()
        models["teacher"], _ = predict(lambda x: teacher(x).logits, loader)
    out: dict = {"images": len(targets), "split": run.recipe.data.val_split}
    for who, logits in models.items():
        out[who] = classification_metrics(logits, targets, run.images.classes)
        for name, sets in label_sets.items():
            out[who][name] = multilabel_top1(logits, sets)
    if with_teacher:
        out["agreement"] = agreement(student_logits, models["teacher"])
    return out


def format_report(metrics: dict, worst: int = 5) -> str:
    """The table `scalekd eval` prints: headline metrics, then per-class top-1 (all classes up
    to 20, else the `worst` and best few)."""
    who = [w for w in ("student", "teacher") if w in metrics]
    extra = sorted({k for w in who for k, v in metrics[w].items() if isinstance(v, dict)
                    and "top1" in v})
    lines = [f"{metrics['images']} images ({metrics['split']})",
             f"  {'':<22}" + "".join(f"{w:>10}" for w in who)]
    for key in ("top1", "top5"):
        lines.append(f"  {key:<22}" + "".join(f"{metrics[w][key]:>10.2f}" for w in who))
    for name in extra:
        lines.append(f"  {name + ' top1':<22}" + "".join(
            f"{metrics[w][name]['top1']:>10.2f}" for w in who))
    if "agreement" in metrics:
        a = metrics["agreement"]
        lines.append(f"  {'top-1 agreement (%)':<22}{a['top1_agreement']:>10.2f}")
        lines.append(f"  {'KL(teacher||student)':<22}{a['mean_kl']:>10.4f}")
    per_class = metrics["student"]["per_class_top1"]
    ranked = sorted((v, k) for k, v in per_class.items() if v is not None)
    shown = ranked if len(ranked) <= 20 else ranked[:worst] + ranked[-worst:]
    lines.append("  per-class top-1 of the student" + ("" if len(ranked) <= 20 else
                                                         f" ({worst} worst, {worst} best)"))
    lines += [f"    {name:<20}{value:>8.2f}" for value, name in shown]
    return "\n".join(lines)


def write_json(metrics: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(path, json.dumps(metrics, indent=2))
