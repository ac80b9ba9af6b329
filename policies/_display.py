"""Display helpers for the CLI: a rich table and a heat-map PNG of a policy file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from rich.table import Table

from ._file import PolicyFile

__all__ = ["policy_table", "plot_policy_heatmap"]


def policy_table(pf: PolicyFile) -> Table:
    """Per-class rich table: index, class name, training count, ``w`` (class_weight), ``l`` (logit_bias),
    ``Δ`` (logit_scale) and, per augmentation op, ``p/m`` (probability / magnitude, fractions in [0, 1];
    ``p`` only for ``flip``). Rows in file order."""
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
    ops: list[str] = list(aug["ops"]) if aug else []
    for op in ops:
        has_m = "magnitude" in aug["per_class"][op] if aug else False
        table.add_column(f"{op} p/m" if has_m else f"{op} p", justify="right")
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
        for op in ops:
            entry = aug["per_class"][op] if aug else {}
            p = f"{entry['probability'][i]:.2f}"
            cells.append(f"{p}/{entry['magnitude'][i]:.2f}" if "magnitude" in entry else p)
        table.add_row(*cells)
    if aug:
        table.caption = f"crop_flip={aug['crop_flip']}; p = probability, m = magnitude (fraction of op range)"
    return table


def plot_policy_heatmap(pf: PolicyFile, path: str | os.PathLike[str], *, skip_unwritable: bool = False
                        ) -> Path | None:
    """Save a PNG heat map of the per-class magnitudes and probabilities (classes x ops) and the loss
    parameters ``w``, ``l``, ``Δ`` per class; classes ordered by training count (largest first).

    Uses matplotlib's Agg canvas (no pyplot state, no display); written with
    :func:`ab_plugin.io.atomic_write` (atomic, the permissions ``open()`` gives). Returns ``path``; with
    ``skip_unwritable``, a folder that cannot be written (read-only, such as an installed package's zoo) is
    a ``warning:`` line and ``None`` instead of an ``OSError``.
    """
    from matplotlib.axes import Axes
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

    k = 0
    if aug:
        for key in ("magnitude", "probability"):
            ops = [op for op in aug["ops"] if key in aug["per_class"][op]]
            ax = axes[k]
            k += 1
            if not ops:
                ax.set_axis_off()
                ax.set_title(f"{key}: no ops")
                continue
            data = [[aug["per_class"][op][key][i] for op in ops] for i in order]
            im = ax.imshow(data, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
            ax.set_xticks(range(len(ops)))
            ax.set_xticklabels(ops, rotation=45, ha="right", fontsize=8)
            rows(ax)
            ax.set_title(key)
            fig.colorbar(im, ax=ax, fraction=0.05)
    ax = axes[k]
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

