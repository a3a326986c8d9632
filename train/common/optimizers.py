"""Two optax-style transformations the programs' optimizers are built from.

- :func:`reset_at`: the wrapped transformation's state starts again at given steps (the WRN
  reference builds a new ``torch.optim.SGD`` at each learning-rate drop, so its momentum buffer
  restarts).
- :func:`average_iterates`: NT-ASGD's averaging (AWD-LSTM, ``torch.optim.ASGD(t0=0, lambd=0)``):
  once switched on, the state keeps the mean of the parameters after each update since the switch.
  The update itself is the wrapped transformation's, unchanged; the average is what is evaluated.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class ResetState(NamedTuple):
  """State of :func:`reset_at`: the steps seen and the wrapped transformation's state."""

  count: jax.Array
  inner: Any


def reset_at(
  inner: optax.GradientTransformation, steps: tuple[int, ...]
) -> optax.GradientTransformation:
  """``inner`` whose state starts again from ``inner.init`` before the update of each step in ``steps``.

  With ``inner = optax.trace(momentum)`` this is the WRN reference's new ``torch.optim.SGD`` at
  each lr drop: the momentum buffer restarts from the first gradient after the drop.

  Example:
    >>> tx = reset_at(optax.trace(0.9), (1,))
    >>> s = tx.init(jnp.zeros(1))
    >>> u, s = tx.update(jnp.ones(1), s)  # step 0: buffer 1
    >>> u, s = tx.update(jnp.ones(1), s)  # step 1: a fresh buffer, 1 again (not 1.9)
    >>> float(u[0])
    1.0
  """

  def init(params):
    return ResetState(jnp.zeros((), jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    reset = jnp.isin(state.count, jnp.asarray(steps, jnp.int32)) if steps else jnp.asarray(False)
    fresh = inner.init(params if params is not None else updates)
    inner_state = jax.tree.map(lambda f, s: jnp.where(reset, f, s), fresh, state.inner)
    updates, inner_state = inner.update(updates, inner_state, params)
    return updates, ResetState(state.count + 1, inner_state)

  return optax.GradientTransformation(init, update)


class AverageState(NamedTuple):
  """State of :func:`average_iterates`.

  Attributes:
    inner: the wrapped transformation's state.
    avg: the mean of the parameters after each update since averaging was switched on.
    count: updates averaged.
    on: whether averaging is on (:func:`start_averaging`).
  """

  inner: Any
  avg: PyTree
  count: jax.Array
  on: jax.Array


def average_iterates(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``inner``, keeping the mean of the iterates once switched on (NT-ASGD's averaged parameters).

  With ``on``: ``count += 1``, ``avg += (params + update - avg) / count`` (torch ASGD with t0 = 0,
  lambd = 0). Off, ``avg`` and ``count`` stay as they are. Extra arguments of ``update`` are
  passed on to ``inner``.

  Example:
    >>> tx = average_iterates(optax.sgd(1.0))
    >>> w = jnp.zeros(1)
    >>> s = start_averaging(tx.init(w), w)
    >>> for g in (-1.0, -1.0):
    ...   u, s = tx.update(jnp.full(1, g), s, w)
    ...   w = w + u
    >>> float(s.avg[0]), int(s.count)  # the mean of the iterates 1 and 2
    (1.5, 2)
  """
  inner = optax.with_extra_args_support(inner)

  def init(params):
    return AverageState(
      inner.init(params),
      jax.tree.map(jnp.copy, params),
      jnp.zeros((), jnp.int32),
      jnp.zeros((), jnp.bool_),
    )

  def update(updates, state, params=None, **extra_args):
    updates, inner_state = inner.update(updates, state.inner, params, **extra_args)
    count = state.count + state.on.astype(jnp.int32)
    inv = 1.0 / jnp.maximum(count, 1).astype(jnp.float32)
    avg = jax.tree.map(
      lambda a, p, u: jnp.where(state.on, a + (p + u - a) * inv, a), state.avg, params, updates
    )
    return updates, AverageState(inner_state, avg, count, state.on)

  return optax.GradientTransformationExtraArgs(init, update)


def start_averaging(state: AverageState, params: PyTree) -> AverageState:
  """Switch averaging on, the average starting again from ``params`` (a copy; count 0)."""
  return state._replace(
    avg=jax.tree.map(jnp.copy, params),
    count=jnp.zeros_like(state.count),
    on=jnp.ones_like(state.on),
  )
