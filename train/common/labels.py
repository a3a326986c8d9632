"""Human-readable run labels (progress bars, plot legends), one function for every program."""

from __future__ import annotations


def regularizer_label(regularizer: str, q: float = 2.0, rate: float | None = None) -> str:
  """``'sparseout q=1.5 p=0.5'``, ``'dropout p=0.5'``, ``'bridgeout q=1.5'``, ``'no noise'``.

  Args:
    regularizer: ``sparseout``, ``bridgeout``, ``dropout`` or ``none``.
    q: the norm (shown for sparseout and bridgeout).
    rate: the drop probability (shown when given).

  Returns:
    The label.

  Example:
    >>> regularizer_label("sparseout", 2.5, 0.3)
    'sparseout q=2.5 p=0.3'
    >>> regularizer_label("none")
    'no noise'
  """
  if regularizer == "none":
    return "no noise"
  parts = [regularizer]
  if regularizer in ("sparseout", "bridgeout"):
    parts.append(f"q={float(q):g}")
  if rate is not None:
    parts.append(f"p={float(rate):g}")
  return " ".join(parts)
