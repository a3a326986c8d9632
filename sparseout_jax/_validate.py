"""Validation of the static hyperparameters, done once where they enter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

GRADIENT_RULES = ("exact", "reference")
RESIDUALS = ("mask", "key")


def _static_float(value: Any, name: str) -> float:
  """Returns `value` as a Python float, or raises if it is traced or not a number."""
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
      f"`{name}` must be a static Python number, but got a traced value {value!r}. "
      f"sparseout specialises its computation on `{name}` (q == 2 takes dropout's own "
      f"path, and the exponent q/2 picks the fastest power), so pass it as a Python "
      f"float (e.g. mark it static in jax.jit, or close over it)."
    )
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, float))
    and not hasattr(value, "__float__")
  ):
    raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}.")
  try:
    return float(value)
  except TypeError as e:  # e.g. a non-scalar array
    raise TypeError(f"`{name}` must be a scalar real number, got {value!r}.") from e


def check_rate(p: Any, name: str = "p") -> float:
  """Returns the drop rate as a float in [0, 1], or raises ValueError/TypeError."""
  p = _static_float(p, name)
  if not (0.0 <= p <= 1.0):  # also rejects NaN
    raise ValueError(f"`{name}` is the drop probability and must lie in [0, 1], got {p}.")
  return p


def check_q(q: Any) -> float:
  """Returns the norm q as a float in (0, inf), or raises ValueError/TypeError."""
  q = _static_float(q, "q")
  if not (math.isfinite(q) and q > 0.0):
    raise ValueError(f"`q` is the norm of the penalty |x|**q and must be finite and > 0, got {q}.")
  return q


def check_choice(value: Any, name: str, allowed: Sequence[str]) -> str:
  """Returns `value` if it is one of `allowed`, else raises ValueError naming them."""
  if value not in allowed:
    raise ValueError(f"`{name}` must be one of {tuple(allowed)}, got {value!r}.")
  return value


def check_float_array(x: Any, name: str = "x") -> jax.Array:
  """Returns `x` as a jax array of a floating dtype, or raises TypeError."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"`{name}` must have a floating dtype (float16, bfloat16, float32, float64), got {dtype}."
    )
  return jnp.asarray(x)


def check_broadcast_dims(broadcast_dims: Sequence[int], ndim: int) -> tuple[int, ...]:
  """Returns the broadcast dims normalised to [0, ndim), or raises ValueError."""
  if isinstance(broadcast_dims, int):
    broadcast_dims = (broadcast_dims,)
  dims = []
  for d in broadcast_dims:
    if isinstance(d, bool) or not isinstance(d, int):
      raise TypeError(f"`broadcast_dims` must hold Python ints, got {d!r}.")
    if not -ndim <= d < ndim:
      raise ValueError(
        f"`broadcast_dims` entry {d} is out of range for an input of rank {ndim}: "
        f"each must lie in [{-ndim}, {ndim - 1}]."
      )
    dims.append(d % ndim)
  return tuple(dims)


def broadcast_shape(shape: Sequence[int], dims: Sequence[int]) -> tuple[int, ...]:
  """The shape a mask is sampled in: `shape` with every dim in `dims` set to 1 (as Flax)."""
  return tuple(1 if i in dims else s for i, s in enumerate(shape))
