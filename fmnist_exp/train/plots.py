"""Figures a person looks at after a run: learning curves, confusion matrix, mistakes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: runs log PNGs, nothing opens a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..metrics import LEARNING_RATE, TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS  # noqa: E402

PANELS = [("loss", TRAIN_LOSS, VAL_LOSS), ("accuracy", TRAIN_ACC, VAL_ACC)]
_CURVES: dict[bool, tuple[Figure, dict[str, Line2D]]] = {}  # learning_curves' figures, by "has a learning rate"


def learning_curves(history: dict[str, list[float]], title: str = "") -> Figure:
    """Loss, accuracy and learning rate per epoch, train against validation.

    Every run draws one, a study's trials included, so the figure is this process's one, drawn again
    with the run's values: making its axes, ticks and labels is most of what a new figure costs
    (BENCHMARKS.md, 'A trial's own work'). It holds the last call's curves until the next call (one
    thread draws: the trials of a process run one after another)."""
    has_lr = LEARNING_RATE in history
    if has_lr not in _CURVES:
        _CURVES[has_lr] = _curves_figure(has_lr)
    fig, lines = _CURVES[has_lr]
    for key, line in lines.items():
        ys = history.get(key, [])
        line.set_data(range(1, len(ys) + 1), ys)
        line.set_visible(bool(ys))
    for i, ax in enumerate(fig.axes):
        if i < len(PANELS):  # train against validation: the legend names the curves this run has
            ax.legend(handles=[line for line in ax.lines if line.get_visible()])
        ax.relim(visible_only=True)
        ax.autoscale_view()
    if has_lr:
        lrs = history[LEARNING_RATE]
        fig.axes[-1].set_yscale("log" if lrs and min(lrs) > 0 else "linear")  # a cosine schedule ends at 0
    fig.suptitle(title)
    return fig


def _curves_figure(has_lr: bool) -> tuple[Figure, dict[str, Line2D]]:
    # fixed margins, not tight_layout: tight_layout draws the figure once more before it is saved
    fig = Figure(figsize=(5 * (len(PANELS) + has_lr), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS) + has_lr,
                        gridspec_kw={"left": 0.07, "right": 0.98, "bottom": 0.13, "top": 0.84, "wspace": 0.3})
    lines: dict[str, Line2D] = {}
    for ax, (name, tr, va) in zip(axes, PANELS, strict=False):  # the last axis may be the learning rate's
        for key, label in ((tr, "train"), (va, "validation")):
            [lines[key]] = ax.plot([], [], marker="o", label=label)
        ax.set(xlabel="epoch", ylabel=name, title=name)  # its legend made per run: the curves that run has
        ax.grid(alpha=0.3)
    if has_lr:
        ax = axes[-1]
        [lines[LEARNING_RATE]] = ax.plot([], [], marker="o")
        ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
        ax.grid(alpha=0.3)
    return fig, lines


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...], title: str = ""):
    """Row-normalised confusion matrix with counts, classes named (counts left out past 30 classes,
    where they would no longer be legible)."""
    n = len(class_names)
    cm = np.zeros((n, n), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(8.0, 0.8 * n), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n if n <= 30 else 0):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix (test)")
    fig.tight_layout()
    return fig


def misclassified_grid(x: np.ndarray, y_true: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...],
                       max_images: int = 36):
    """The most confident mistakes, each titled true -> predicted (confidence), six to a row.

    One axes in inches holds every image at its place: an axes per image cost a layout pass each
    (seconds for 36, on every scored run)."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:max_images]
    cols, cell_w, cell_h, side, head = 6, 2.2, 2.5, 1.8, 0.5  # inches; head: the suptitle's band
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    width, height = cols * cell_w, head + rows * cell_h
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    for k, i in enumerate(wrong):
        row, col = divmod(k, cols)
        left, top = col * cell_w + (cell_w - side) / 2, head + row * cell_h + (cell_h - side) - 0.1
        ax.imshow(x[i], cmap="gray_r" if x[i].ndim == 2 else None,  # colour images as they are
                  extent=(left, left + side, top + side, top), aspect="auto")
        ax.text(left + side / 2, top - 0.05, f"{class_names[y_true[i]]}\n-> {class_names[pred[i]]} "
                f"({probs[i, pred[i]]:.0%})", ha="center", va="bottom", fontsize=8)
    ax.set(xlim=(0, width), ylim=(height, 0))  # after the images: each imshow sets the limits to its own
    fig.suptitle(f"most confident mistakes ({len(wrong)} shown of {int((pred != y_true).sum())})")
    return fig


def metric_curves(curves: dict[str, list[float]], metric: str, title: str = ""):
    """One metric per epoch for several runs, one line each (e.g. the top trials of a study)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.set(xlabel="epoch", ylabel=metric, title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
