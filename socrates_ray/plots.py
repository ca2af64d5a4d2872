"""Figures, built with matplotlib's object API: no pyplot, no global backend switch, so importing
socrates_ray in a notebook leaves its inline plots alone. Every plotting function returns the Figure
(a notebook shows it) and, given a path, saves it as a PNG at a resolution that reads on a screen.
`plot_distributions` draws what `predict` returns; eval/report.py and screen/report.py draw their
reports' figures with `new_figure` and `save_png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

PNG_DPI = 150


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, np.ndarray]:
    """A figure of width x height inches and its rows x cols grid of axes (always 2-D)."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_png(fig: Figure, path: str | Path | None) -> Figure:
    """Lay the figure out; write it to `path` as PNG when one is given. Returns the figure."""
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=PNG_DPI)
    return fig


def plot_distributions(table: Any, path: str | Path | None = None, label: str | None = None) -> Figure:
    """`predict`'s table as one panel per stimulus: each persona's (or `label` column's) predicted
    distribution over the answer scale, with its mean."""
    stimulus_col = "stimulus_name" if "stimulus_name" in table.columns else "stimulus"
    stimuli = list(dict.fromkeys(table[stimulus_col]))
    fig, axes = new_figure(4.5 * min(len(stimuli), 3), 3.2 * -(-len(stimuli) // 3), -(-len(stimuli) // 3), min(len(stimuli), 3))
    for ax, stimulus in zip(axes.flat, stimuli):
        rows = table[table[stimulus_col] == stimulus]
        for i, (_, row) in enumerate(rows.iterrows()):
            who = str(row[label]) if label else ", ".join(f"{c}={row[c]}" for c in ("party_id", "age") if c in row and row[c] == row[c])
            ax.plot(row["options"], row["probabilities"], marker="o" if len(row["options"]) <= 11 else None,
                    label=f"{who or i} (mean {row['mean']:.2f})")
        title = str(stimulus)
        ax.set_title(title if len(title) <= 50 else title[:47] + "...", fontsize=9)
        ax.set_xlabel("answer")
        ax.set_ylabel("predicted share")
        ax.legend(fontsize=7)
    for ax in axes.flat[len(stimuli):]:
        ax.set_visible(False)
    return save_png(fig, path)
