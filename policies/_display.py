"""Display helpers for the CLI: a rich table and a heat-map PNG of a policy file."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from ._file import PolicyFile

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["policy_table", "plot_policy_heatmap"]


def _expected_strength(aug: dict[str, Any]) -> list[float]:
    """``[C]`` expected strength ``E[s] = Σ_k π_{c,k} s_k`` per class of a ``bank`` augmentation section
    (strengths in CUDA's units: ``s`` ops at magnitude ``s / max_d``)."""
    strengths = aug["strengths"]
    return [sum(p * s for p, s in zip(row, strengths, strict=True)) for row in aug["per_class"]["mixture"]]


def _ops_columns(aug: dict[str, Any]) -> tuple[list[str], Callable[[int], list[str]], str]:
    """Per op, ``p/m`` (probability / magnitude, fractions in [0, 1]; ``p`` only for ops without a magnitude)."""
    per_class = aug["per_class"]
    headers = [f"{op} p/m" if "magnitude" in per_class[op] else f"{op} p" for op in aug["ops"]]

    def cells(i: int) -> list[str]:
        out = []
        for op in aug["ops"]:
            entry = per_class[op]
            p = f"{entry['probability'][i]:.2f}"
            out.append(f"{p}/{entry['magnitude'][i]:.2f}" if "magnitude" in entry else p)
        return out

    caption = f"crop_flip={aug['crop_flip']}; p = probability, m = magnitude (fraction of op range)"
    return headers, cells, caption


def _bank_columns(aug: dict[str, Any]) -> tuple[list[str], Callable[[int], list[str]], str]:
    """Per bank strength ``s``, the class's mixture weight; then the expected strength ``E[s]``."""
    mixture, mean = aug["per_class"]["mixture"], _expected_strength(aug)
    headers = [*(f"s={s}" for s in aug["strengths"]), escape("E[s]")]  # rich markup would take [s] for a style

    def cells(i: int) -> list[str]:
        return [*(f"{w:.2f}" for w in mixture[i]), f"{mean[i]:.2f}"]

    caption = (f"crop_flip={aug['crop_flip']}; s=k: the class's weight on strength k (k ops drawn from "
               f"{', '.join(aug['ops'])}, each at magnitude k/{aug['max_d']:g}); {escape('E[s]')} = expected strength")
    return headers, cells, caption


_COLUMNS = {"ops": _ops_columns, "bank": _bank_columns}
"""Table columns of each augmentation kind: headers, a row's cells by class index, caption."""


def policy_table(pf: PolicyFile) -> Table:
    """Per-class rich table: index, class name, training count, ``w`` (class_weight), ``l`` (logit_bias),
    ``Δ`` (logit_scale) and the augmentation: for kind ``ops``, per op ``p/m`` (probability / magnitude,
    fractions in [0, 1]; ``p`` only for ``flip``); for kind ``bank``, per strength ``s`` the class's mixture
    weight, then the expected strength ``E[s]``. Rows in file order."""
    prov = pf.provenance
    title = "policy" + (f" — {prov['dataset']}" if isinstance(prov.get("dataset"), str) else "")
    table = Table(title=f"{title} ({pf.num_classes} classes)")
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("n", justify="right")
    table.add_column("w", justify="right")
    table.add_column("l", justify="right")
    table.add_column("Δ", justify="right")
    aug = pf.augmentation
    headers, aug_cells, caption = _COLUMNS[aug["kind"]](aug) if aug else ([], lambda i: [], None)
    for header in headers:
        table.add_column(header, justify="right")
    loss = pf.loss
    for i, name in enumerate(pf.classes):
        cells = [
            str(i),
            name,
            str(pf.class_counts[i]),
            f"{loss['class_weight'][i]:.3g}",
            f"{loss['logit_bias'][i]:+.3f}",
            f"{loss['logit_scale'][i]:.3f}",
        ]
        table.add_row(*cells, *aug_cells(i))
    table.caption = caption
    return table


def plot_policy_heatmap(pf: PolicyFile, path: str | os.PathLike[str], *, skip_unwritable: bool = False
                        ) -> Path | None:
    """Save a PNG heat map of the per-class augmentation and the loss parameters ``w``, ``l``, ``Δ`` per class;
    classes ordered by training count (largest first). The augmentation is two panels: for kind ``ops`` the
    magnitudes and the probabilities (classes x ops), for kind ``bank`` the mixture (classes x strengths) and
    the expected strength per class.

    Uses matplotlib's Agg canvas (no pyplot state, no display); written with
    :func:`ab_plugin.io.atomic_write` (atomic, the permissions ``open()`` gives). Returns ``path``; with
    ``skip_unwritable``, a folder that cannot be written (read-only, such as an installed package's zoo) is
    a ``warning:`` line and ``None`` instead of an ``OSError``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = sorted(range(pf.num_classes), key=lambda i: (-pf.class_counts[i], i))
    labels = [f"{pf.classes[i]} ({pf.class_counts[i]})" for i in order]
    c = pf.num_classes
    aug = pf.augmentation
    panels = 3 if aug else 1
    height = min(40.0, 1.5 + 0.25 * c)
    fig = Figure(figsize=(4.0 * panels + 1.0, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    step = max(1, c // 60)
    ticks = list(range(0, c, step))

    def rows(ax: Axes) -> None:
        ax.set_yticks(ticks)
        ax.set_yticklabels([labels[t] for t in ticks], fontsize=7)

    if aug:
        _PANELS[aug["kind"]](fig, axes[:2], aug, order, rows)
    ax = axes[-1]
    for name, key in (
        ("w (class_weight)", "class_weight"),
        ("l (logit_bias)", "logit_bias"),
        ("Δ (logit_scale)", "logit_scale"),
    ):
        ax.plot([pf.loss[key][i] for i in order], range(c), marker="o", ms=3, label=name)
    ax.set_ylim(c - 0.5, -0.5)
    rows(ax)
    ax.set_title("loss parameters")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    from ab_plugin.io import atomic_write

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    except OSError as e:
        if not skip_unwritable:
            raise
        warnings.warn(f"heat map not written: {Path(path).parent} cannot be written ({e.strerror or e}); pass "
                      "--heatmap PATH to write it elsewhere", stacklevel=2)
        return None
    return Path(path)



def _ops_panels(fig: Figure, axes: Sequence[Axes], aug: dict[str, Any], order: list[int],
                rows: Callable[[Axes], None]) -> None:
    """Heat maps of the magnitudes and of the probabilities, classes (in ``order``) x ops, in ``[0, 1]``."""
    for ax, key in zip(axes, ("magnitude", "probability"), strict=True):
        ops = [op for op in aug["ops"] if key in aug["per_class"][op]]
        if not ops:
            ax.set_axis_off()
            ax.set_title(f"{key}: no ops")
            continue
        _heat(fig, ax, [[aug["per_class"][op][key][i] for op in ops] for i in order], ops, key)
        rows(ax)


def _bank_panels(fig: Figure, axes: Sequence[Axes], aug: dict[str, Any], order: list[int],
                 rows: Callable[[Axes], None]) -> None:
    """Heat map of the mixture, classes (in ``order``) x strengths, in ``[0, 1]``; the expected strength per
    class as a line over ``[0, max strength]``."""
    mixture, strengths = aug["per_class"]["mixture"], aug["strengths"]
    _heat(fig, axes[0], [mixture[i] for i in order], [f"s={s}" for s in strengths], "mixture (weight per strength)")
    rows(axes[0])
    mean = _expected_strength(aug)
    ax = axes[1]
    ax.plot([mean[i] for i in order], range(len(order)), marker="o", ms=3)
    ax.set_xlim(0, strengths[-1])
    ax.set_ylim(len(order) - 0.5, -0.5)
    rows(ax)
    ax.set_xlabel(f"strength s (s ops at magnitude s/{aug['max_d']:g})")
    ax.set_title("expected strength E[s]")
    ax.grid(alpha=0.3)


def _heat(fig: Figure, ax: Axes, data: list[list[float]], columns: list[str], title: str) -> None:
    """One ``[rows, columns]`` heat map of fractions (colour scale fixed to ``[0, 1]``) with its colour bar."""
    im = ax.imshow(data, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=45, ha="right", fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05)


_PANELS = {"ops": _ops_panels, "bank": _bank_panels}
"""The two augmentation panels of each augmentation kind."""
