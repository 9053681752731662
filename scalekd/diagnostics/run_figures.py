"""The diagnostics commands on a saved run: its teacher's (and student's) feature spectrum,
teacher-student CKA, and embedding PCA, each a PNG."""

from __future__ import annotations

from pathlib import Path

from scalekd.diagnostics.cka import cka_matrix, plot_cka
from scalekd.diagnostics.embedding import plot_embeddings
from scalekd.diagnostics.features import Features, collect
from scalekd.diagnostics.spectrum import dct_spectrum, plot_spectra
from scalekd.engine.saved_run import SavedRun


def both_features(run: SavedRun, images: int) -> tuple[Features, Features]:
    """Teacher and student features over the first `images` evaluation images."""
    teacher = run.teacher()
    loader = run.loader()
    return (collect(teacher.model, loader, teacher.prepare_input, max_images=images),
            collect(run.student(), loader, max_images=images))


def spectrum_figure(teacher: Features, student: Features, path: Path) -> Path:
    return plot_spectra({"teacher, last layer": dct_spectrum(teacher.final_maps),
                         "student, last layer": dct_spectrum(student.final_maps)}, path)


def cka_figure(teacher: Features, student: Features, path: Path) -> Path:
    return plot_cka(cka_matrix(student.layers, teacher.layers), student.layer_names,
                    teacher.layer_names, path)


def pca_figure(teacher: Features, student: Features, classes: list[str], path: Path) -> Path:
    return plot_embeddings({"teacher": teacher.embeddings, "student": student.embeddings},
                           teacher.labels, classes, path)
