"""Non-finite loss/gradient guard: stop with a clear message, or skip the step and count it.

Inside the jitted step compute ``ok = all_finite((loss, grads))`` and, when skipping is enabled,
keep the old state with ``select_tree(ok, new_state, old_state)``; return ``ok`` with the metrics.
On the host call :meth:`NonFiniteGuard.check` each step: in "stop" mode it raises
:class:`NonFiniteError` naming the step and the last good checkpoint (which is never overwritten,
because the loop stops before saving); in "skip" mode it counts the skipped steps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN/inf and the run was told to stop."""


def all_finite(tree: PyTree) -> jax.Array:
  """Scalar bool: every element of every floating leaf of ``tree`` is finite (usable under jit/pmap)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def select_tree(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Leafwise ``where(pred, on_true, on_false)`` for a scalar ``pred`` (keeps the old state on a bad step)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class NonFiniteGuard:
  """Host-side decision on a step whose loss or gradient was not finite.

  Args:
    skip: if True, count bad steps (the step function must have kept the old state) instead of
      stopping.
    max_skips: with ``skip``, stop anyway after this many skipped steps (None: never).
  """

  def __init__(self, skip: bool = False, max_skips: int | None = None):
    self.skip = skip
    self.max_skips = max_skips
    self.skipped = 0

  def check(self, step: int, ok: Any, loss: Any = None, last_checkpoint: str | None = None) -> bool:
    """Return True if the step was finite; otherwise count it (skip mode) or raise.

    Args:
      step: the global step just run.
      ok: the step's finiteness flag (any array-like; all elements must be true).
      loss: the loss value, for the message.
      last_checkpoint: path of the last good checkpoint, for the message.

    Returns:
      True for a finite step, False for a skipped one.

    Raises:
      NonFiniteError: in stop mode, or when ``max_skips`` is exceeded.
    """
    if bool(np.all(np.asarray(ok))):
      return True
    where = last_checkpoint or "none (no checkpoint written yet)"
    loss_txt = "" if loss is None else f" (loss={np.asarray(loss).ravel()[:1].tolist()})"
    if self.skip:
      self.skipped += 1
      if self.max_skips is None or self.skipped <= self.max_skips:
        return False
      raise NonFiniteError(
        f"step {step}: more than {self.max_skips} non-finite steps skipped{loss_txt}; stopping. "
        f"Last good checkpoint: {where}"
      )
    raise NonFiniteError(
      f"step {step}: non-finite loss or gradient{loss_txt}; stopping without saving. "
      f"Last good checkpoint: {where}. Lower the learning rate, or set skip_nonfinite=True "
      "in the config to skip such steps (they are counted in the metrics)."
    )
