"""Line and interval plots saved to PNG with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@dataclasses.dataclass
class Panel:
  """One subplot: ``series`` maps a label to ``(x, y)`` sequences.

  Attributes:
    series: label -> (x values, y values); plotted in insertion order.
    xlabel: x-axis label.
    ylabel: y-axis label.
    title: optional subplot title.
    logy: log-scale y axis.
  """

  series: Mapping[str, tuple[Sequence[float], Sequence[float]]]
  xlabel: str = ""
  ylabel: str = ""
  title: str | None = None
  logy: bool = False

  def draw(self, ax) -> None:
    """One line per series, markers where there are few points, and a legend."""
    for label, (x, y) in self.series.items():
      ax.plot(
        list(x), list(y), marker="o" if len(list(x)) < 30 else None, markersize=3, label=label
      )
    ax.set_xlabel(self.xlabel)
    ax.set_ylabel(self.ylabel)
    if self.title:
      ax.set_title(self.title)
    if self.logy:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


@dataclasses.dataclass
class IntervalPanel:
  """One subplot of estimates with intervals: a point and an error bar per label, a line at 0.

  Attributes:
    intervals: label -> (estimate, low, high); drawn left to right in insertion order.
    ylabel: y-axis label.
    title: optional subplot title.
  """

  intervals: Mapping[str, tuple[float, float, float]]
  ylabel: str = ""
  title: str | None = None

  def draw(self, ax) -> None:
    """A point and an error bar per label, left to right, and a line at 0."""
    labels = list(self.intervals)
    est, low, high = (np.array([self.intervals[k][i] for k in labels]) for i in range(3))
    x = np.arange(len(labels))
    ax.errorbar(x, est, yerr=[est - low, high - est], fmt="o", capsize=4)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(self.ylabel)
    if self.title:
      ax.set_title(self.title)
    ax.grid(alpha=0.3, axis="y")


def save_panels(
  panels: Sequence[Panel | IntervalPanel],
  path: str | os.PathLike,
  *,
  suptitle: str | None = None,
  ncols: int | None = None,
) -> str:
  """Draw ``panels`` side by side (``ncols`` per row) and save a PNG.

  Args:
    panels: the subplots, each drawing itself (lines or intervals).
    path: output file (parent folders are created).
    suptitle: optional figure title.
    ncols: panels per row (default: all in one row).

  Returns:
    The absolute path written.
  """
  ncols = ncols or len(panels)
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
  for ax, panel in zip(axes.ravel(), panels, strict=False):
    panel.draw(ax)
  for ax in axes.ravel()[len(panels) :]:
    ax.axis("off")
  if suptitle:
    fig.suptitle(suptitle)
  fig.tight_layout()
  path = os.path.abspath(os.fspath(path))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def line_plot(
  series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
  path: str | os.PathLike,
  *,
  xlabel: str = "",
  ylabel: str = "",
  title: str | None = None,
  logy: bool = False,
) -> str:
  """Save a single-panel line plot (see :func:`save_panels`); returns the absolute path."""
  return save_panels([Panel(series, xlabel, ylabel, title, logy)], path)


def sparsity_plot(history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> str | None:
  """Per-layer Hoyer sparsity and zero fraction per epoch, from ``eval/sparsity/<layer>/<stat>`` entries.

  Args:
    history: evaluation rows (each with ``epoch``), as the training loop keeps them.
    path: output PNG.

  Returns:
    The absolute path written, or None when no row has a sparsity record (nothing is drawn).
  """
  prefix = "eval/sparsity/"
  panels = []
  for stat, ylabel in (
    ("hoyer", "Hoyer sparsity of the layer's input"),
    ("zero_fraction", "fraction of zeros"),
  ):
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in history:
      for k, v in row.items():
        if k.startswith(prefix) and k.endswith("/" + stat):
          xs, ys = series.setdefault(k[len(prefix) : -len(stat) - 1], ([], []))
          xs.append(row["epoch"])
          ys.append(v)
    if series:
      panels.append(Panel(series, "epoch", ylabel, f"eval {stat} per Sparseout layer"))
  return save_panels(panels, path) if panels else None
