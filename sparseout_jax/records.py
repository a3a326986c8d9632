"""Sparsity records: what a layer's input looks like, sown during a forward pass (paper 4.1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sparseout_jax.hoyer import hoyer_sparsity

RECORD_NAME = "sparsity"


def sparsity_stats(x: jax.Array) -> dict[str, jax.Array]:
  r"""Hoyer sparsity and fraction of exact zeros of ``x``, the two numbers a layer records.

  .. math::
    \text{hoyer} = \frac{1}{N} \sum_{n=1}^{N} H(x_n), \qquad
    \text{zero\_fraction} = \frac{\#\{i : x_i = 0\}}{\operatorname{size}(x)},

  where :math:`x_n` are the N vectors along the last axis and H is
  :func:`sparseout_jax.hoyer_sparsity`. No gradient flows through either.

  Args:
    x: a floating array whose last axis has length >= 2.

  Returns:
    ``{"hoyer": scalar, "zero_fraction": scalar}``, float32 scalars.

  Example:
    >>> import jax.numpy as jnp
    >>> from sparseout_jax import sparsity_stats
    >>> stats = sparsity_stats(jnp.array([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]))
    >>> float(stats["hoyer"]), round(float(stats["zero_fraction"]), 4)
    (0.5, 0.3333)
  """
  x = jax.lax.stop_gradient(jnp.asarray(x))
  if x.ndim == 0 or x.shape[-1] < 2:
    raise ValueError(
      f"sparsity records need an input whose last axis has length >= 2 (Hoyer's measure of a "
      f"vector), got shape {x.shape}."
    )
  return {
    "hoyer": jnp.mean(hoyer_sparsity(x, axis=-1)).astype(jnp.float32),
    "zero_fraction": jnp.mean(x == 0, dtype=jnp.float32),
  }


def _as_nested_dict(tree: Any) -> Mapping:
  """An NNX module or State, or a Linen variables / intermediates dict, as a nested mapping."""
  from flax import nnx  # the layer modules import flax anyway; keep the core import-light

  if isinstance(tree, nnx.Module):
    tree = nnx.state(tree, nnx.Intermediate)
  if isinstance(tree, nnx.State):
    return nnx.to_pure_dict(tree)
  if isinstance(tree, Mapping):
    return tree
  raise TypeError(
    "`tree` must be an nnx.Module, an nnx.State (e.g. from nnx.capture(model, nnx.Intermediate)) "
    f"or a Linen intermediates dict, got {type(tree).__name__}."
  )


def _mean_of(records: Any) -> dict[str, jax.Array]:
  """The mean of every sown record (a tuple of dicts, each leaf possibly stacked by a scan)."""
  if isinstance(records, Mapping) and "hoyer" in records:
    records = (records,)
  keys = ("hoyer", "zero_fraction")
  return {k: jnp.mean(jnp.stack([jnp.mean(jnp.asarray(r[k])) for r in records])) for k in keys}


def sparsity_records(tree: Any) -> dict[str, dict[str, jax.Array]]:
  r"""The sparsity records of a model, by layer path: ``{path: {"hoyer", "zero_fraction"}}``.

  Collects every record that a layer built with ``record_sparsity=True`` sowed (see
  :func:`sparsity_stats`). A layer called several times (or stacked by a scan) reports
  the mean over its calls. Reading does not clear the records: in NNX, pass the State
  that ``nnx.capture(model, nnx.Intermediate)`` returns (nothing is left on the model),
  or clear sown attributes with ``nnx.pop(model, nnx.Intermediate)``.

  Args:
    tree: an ``nnx.Module`` (its sown ``nnx.Intermediate`` attributes), an ``nnx.State``
      (e.g. from ``nnx.capture``), or a Linen dict: the ``"intermediates"`` collection
      of ``apply(..., mutable=["intermediates"])`` or the whole mutated-variables dict.

  Returns:
    A dict from the "/"-joined path of each recording layer to its mean Hoyer sparsity
    and fraction of zeros (scalar arrays; usable inside ``jit``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from sparseout_jax import sparsity_records
    >>> from sparseout_jax.nnx import Sparseout
    >>> layer = Sparseout(0.5, q=1.5, record_sparsity=True, rngs=nnx.Rngs(dropout=0))
    >>> _, captured = nnx.capture(layer, nnx.Intermediate)(jnp.array([[0.0, 2.0]]))
    >>> {k: float(v["hoyer"]) for k, v in sparsity_records(captured).items()}
    {'': 1.0}
  """
  out: dict[str, dict[str, jax.Array]] = {}

  def walk(node: Any, path: tuple[str, ...]) -> None:
    for key, value in node.items():
      if key == RECORD_NAME and not (isinstance(value, Mapping) and "hoyer" not in value):
        out["/".join(path)] = _mean_of(value)
      elif isinstance(value, Mapping):
        walk(value, (*path, str(key)))

  tree = _as_nested_dict(tree)
  if "intermediates" in tree and isinstance(tree["intermediates"], Mapping):
    tree = tree["intermediates"]
  walk(tree, ())
  return out
