"""Figures a researcher reads a distillation run by: training curves of one or several runs,
and the papers' diagnostics (teacher feature spectra, teacher-student CKA, embedding PCA)."""
