"""Non-finite steps: the finiteness flag a step computes, and the error that stops a run.

The shared step (:mod:`train.common.step`) returns ``ok = all_finite((loss, grads))`` with its
metrics; the shared loop (:mod:`train.common.loop`) reads it every ``log_every`` steps and either
raises :class:`NonFiniteError` naming the step and the last good checkpoint, or counts the step as
skipped (then ``optax.apply_if_finite`` left the optimizer state as it was, and
:func:`select_tree` kept the rest of the state).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from train.common import errors

PyTree = Any


class NonFiniteError(errors.UserError, FloatingPointError):
  """A loss or gradient became NaN/inf and the run was told to stop."""


def all_finite(tree: PyTree) -> jax.Array:
  """Scalar bool: every element of every floating leaf of ``tree`` is finite (usable under jit/pmap).

  Example:
    >>> bool(all_finite({"a": jnp.ones(2), "b": jnp.array([1.0, jnp.nan])}))
    False
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def select_tree(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Leafwise ``where(pred, on_true, on_false)`` for a scalar ``pred`` (keeps the old state on a bad step).

  Example:
    >>> select_tree(jnp.asarray(False), {"w": jnp.ones(2)}, {"w": jnp.zeros(2)})["w"].tolist()
    [0.0, 0.0]
  """
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)
