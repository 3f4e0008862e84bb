"""The confusion-matrix picture: one panel per classifier, drawn on a bare matplotlib `Figure`
(the Agg canvas: no display, no pyplot state), written as PNG.

Single-label panels are fastai's `plot_confusion_matrix` (rows true, columns predicted, each
cell's count); a multi-label panel has one row per class and its TN, FP, FN, TP counts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ulmfit_jax.explain.interpretation import Interpretation

_CELLS = ["TN", "FP", "FN", "TP"]


def confusion_matrix_figure(panels: Sequence[tuple[str, Interpretation]],
                            path: str | os.PathLike | None = None) -> Figure:
    """A figure with one `(title, interpretation)` panel each; saved as PNG to `path`."""
    from matplotlib.figure import Figure

    n_classes = len(panels[0][1].class_names)
    side = min(2.5 + 0.45 * n_classes, 12.0)
    fig = Figure(figsize=(side * len(panels), side), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, interp) in zip(axes, panels, strict=True):
        _draw_panel(ax, title, interp)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _draw_panel(ax: Axes, title: str, interp: Interpretation) -> None:
    matrix = interp.confusion_matrix()
    names = interp.class_names
    if interp.multi_label:
        _draw_counts(ax, matrix.reshape(len(names), 4), names, _CELLS)
        ax.set(xlabel="", ylabel="class")
    else:
        _draw_counts(ax, matrix, names, names)
        ax.set(xlabel="predicted", ylabel="actual")
    ax.set_title(title or "confusion matrix")


def _draw_counts(ax: Axes, counts: np.ndarray, rows: Sequence[str],
                 columns: Sequence[str]) -> None:
    ax.imshow(counts, cmap="Blues", vmin=0)
    ax.set_xticks(range(len(columns)), columns, rotation=90 if len(columns) > 4 else 0)
    ax.set_yticks(range(len(rows)), rows)
    dark = counts.max() / 2 if counts.size else 0
    for (r, c), n in np.ndenumerate(counts):
        ax.text(c, r, str(n), ha="center", va="center",
                color="white" if n > dark else "black", fontsize=8)
