"""Plots and tables of a run (matplotlib Agg, rich); written atomically into the run folder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from .io import atomic_write


def _save(fig: Any, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_error(counts: Sequence[int], errors: dict[str, Sequence[float]], path: Path) -> None:
    """Per-class test error (%) against training count (log x), one series per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, errs in errors.items():
        pts = sorted(zip(counts, errs, strict=True))
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training images in class (log scale)")
    ax.set_ylabel("test error of class (%)")
    ax.set_title("Per-class error vs. class size")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def plot_alpha_vs_frequency(counts: Sequence[int], alpha: dict[str, Sequence[float]], path: Path) -> None:
    """Learned logit bias l and logit scale Δ against log class frequency."""
    plt = _pyplot()
    total = float(sum(counts))
    logf = [math.log(c / total) for c in counts]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, label in zip(axes, ("logit_bias", "logit_scale", "class_weight"),
                              ("logit bias l", "logit scale Δ", "class weight w"), strict=True):
        ax.plot(logf, alpha[key], "o")
        ax.set_xlabel("log class frequency")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("Learned α vs. class frequency")
    _save(fig, path)
    plt.close(fig)


def plot_alpha_trajectory(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Each class's l and Δ over the epochs of the search."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, ("logit_bias", "logit_scale"), strict=True):
        series = list(zip(*[h["alpha"][key] for h in history], strict=True))
        for c, s in enumerate(series):
            ax.plot(epochs, s, label=str(c) if len(series) <= 10 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    if len(history[0]["alpha"]["logit_bias"]) <= 10:
        axes[1].legend(title="class", fontsize=7, ncol=2)
    fig.suptitle("α over the search")
    _save(fig, path)
    plt.close(fig)


def imbalance_of(counts: Sequence[int]) -> float:
    """The training set's real imbalance: largest class count over smallest (``inf`` with an empty class)."""
    return max(counts) / min(counts) if min(counts) > 0 else math.inf


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def plot_augmentation_movement(counts: Sequence[int], movement: dict[str, Any], path: Path) -> None:
    """Signed change of each class's op probabilities and magnitudes from the search's start (heat maps,
    classes ordered by training count, largest first; fractions of the op's range)."""
    plt = _pyplot()
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    per_class = movement["per_class"]
    keys = [k for k in ("probability", "magnitude") if any(k in e for e in per_class.values())]
    lim = max(1e-3, movement["max_abs"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 1.5 + 0.22 * len(counts)), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        ops = [op for op, e in per_class.items() if key in e]
        data = [[per_class[op][key][i] for op in ops] for i in order]
        im = ax.imshow(data, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(order)), [f"{i} ({counts[i]})" for i in order], fontsize=7)
        ax.set_title(f"{key}: change from {movement['start'][key]:.2f}")
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle("Learned augmentation: movement from the start, per class")
    _save(fig, path)
    plt.close(fig)


def plot_augmentation_levels(histories: dict[str, Sequence[dict[str, Any]]], key: str, path: Path) -> None:
    """Each class's augmentation strength level (a curriculum's, ``--augment cuda``) after every epoch, one
    panel per stage (``histories``: stage name -> its per-epoch records, levels ``[C]`` under ``key``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.6), squeeze=False)
    for ax, (stage, history) in zip(axes[0], histories.items(), strict=True):
        epochs = [h["epoch"] for h in history]
        series = list(zip(*[h[key] for h in history], strict=True))
        for c, s in enumerate(series):
            ax.plot(epochs, s, "o-", ms=3, label=str(c) if len(series) <= 10 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("level (after the epoch's update)")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_title(stage)
        ax.grid(alpha=0.3)
        if len(series) <= 10:
            ax.legend(title="class", fontsize=7, ncol=2)
    fig.suptitle("Per-class augmentation strength levels (CUDA curriculum)")
    _save(fig, path)
    plt.close(fig)


def summary_table(title: str, results: dict[str, dict[str, Any]]) -> Table:
    """Overall, balanced and worst-class test error (%) per method, and many / medium / few-shot accuracy (%,
    ``-`` for a group without classes); short headers, explained in the caption, so that it fits 80 columns
    with method names whole."""
    t = Table(title=title, caption="test set, %: acc = accuracy, bal/worst = balanced / worst-class error, "
                                   "many/med/few = accuracy of the many / medium / few-shot classes")
    t.add_column("method", no_wrap=True, min_width=max([6, *(len(name) for name in results)]))
    for col in ("acc", "bal", "worst", "many", "med", "few", "time s"):
        t.add_column(col, justify="right", no_wrap=True)
    for name, r in results.items():
        m = r.get("test_metrics") or {}
        shots = m.get("shot_accuracy") or {}
        t.add_row(name, f"{100 * m.get('accuracy', float('nan')):.2f}",
                  f"{100 * m.get('balanced_error', float('nan')):.2f}",
                  f"{100 * m.get('worst_class_error', float('nan')):.2f}",
                  *(_percent(shots.get(k)) for k in ("many", "medium", "few")), f"{r.get('seconds', 0):.1f}")
    return t


def per_class_table(result: dict[str, Any]) -> Table:
    """Per class: name, training count, test error, learned w, l, Δ and, when a curriculum drove the
    augmentation, the strength level it ended with (``L``)."""
    t = Table(title="Per class")
    levels = result.get("augmentation_levels")
    for col in ("class", "count", "test error %", "w", "l", "Δ", *(("L",) if levels else ())):
        t.add_column(col, justify="right" if col != "class" else "left")
    errs = (result.get("test_metrics") or {}).get("per_class_error") or [float("nan")] * len(result["classes"])
    a = result["alpha"]
    for i, name in enumerate(result["classes"]):
        t.add_row(name, str(result["class_counts"][i]), f"{100 * errs[i]:.1f}", f"{a['class_weight'][i]:.3f}",
                  f"{a['logit_bias'][i]:+.3f}", f"{a['logit_scale'][i]:.3f}", *((str(levels[i]),) if levels else ()))
    return t
