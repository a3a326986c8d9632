"""Validation of the hyperparameters and inputs, done once where they enter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

GRADIENT_RULES = ("exact", "reference")
RESIDUALS = ("mask", "key")


def is_traced(value: Any) -> bool:
  """True for a value known only while tracing (a jit argument, a scan carry, ...)."""
  return isinstance(value, jax.core.Tracer)


def _traced_scalar(value: Any, name: str) -> jax.Array:
  """A traced hyperparameter, checked for what tracing can tell: a real scalar."""
  dtype = jnp.result_type(value)
  real = jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
  if jnp.ndim(value) != 0 or not real:
    raise TypeError(
      f"`{name}` must be a real scalar, got a traced value of shape {jnp.shape(value)} "
      f"and dtype {dtype}."
    )
  return value


def _static_float(value: Any, name: str) -> float:
  """Returns `value` as a Python float, or raises if it is not a real number."""
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


def check_rate(p: Any, name: str = "p", *, allow_traced: bool = False) -> Any:
  """Returns the drop rate as a float in [0, 1] (or a traced scalar), or raises."""
  if is_traced(p):
    if allow_traced:
      return _traced_scalar(p, name)
    raise TypeError(f"`{name}` must be a static Python number here, got a traced value {p!r}.")
  p = _static_float(p, name)
  if not (0.0 <= p <= 1.0):  # also rejects NaN
    raise ValueError(f"`{name}` is the drop probability and must lie in [0, 1], got {p}.")
  return p


def check_q(q: Any, *, allow_traced: bool = False) -> Any:
  """Returns the norm q as a float in (0, inf) (or a traced scalar), or raises."""
  if is_traced(q):
    if allow_traced:
      return _traced_scalar(q, "q")
    raise TypeError(f"`q` must be a static Python number here, got a traced value {q!r}.")
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


def check_key(rng: Any, name: str = "rng") -> jax.Array:
  """Returns `rng` if it is a PRNG key (typed scalar or raw uint32[2] / uint32[4]), else raises."""
  dtype = getattr(rng, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if jnp.ndim(rng) != 0:
      raise ValueError(
        f"`{name}` must be a single PRNG key, got a key array of shape {jnp.shape(rng)} "
        f"(split it, or vmap over it)."
      )
    return rng
  if dtype == jnp.uint32 and jnp.shape(rng) in ((2,), (4,)):
    return rng
  got = f"{type(rng).__name__}" if dtype is None else f"{dtype}{list(jnp.shape(rng))}"
  raise TypeError(
    f"`{name}` must be a PRNG key: jax.random.key(seed) (typed) or jax.random.PRNGKey(seed) "
    f"(raw uint32[2]), got {got}."
  )
