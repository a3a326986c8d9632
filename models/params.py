"""Parameter counting shared by the models."""

from __future__ import annotations

import math
from typing import Any

import jax
from flax import nnx


def param_count(model_or_tree: Any) -> int:
  """Number of trainable scalars: the ``nnx.Param`` leaves of a module, or every leaf of a state tree.

  Works on an ``nnx.eval_shape``'d module too (only shapes are read).

  Example:
    >>> param_count(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    16
  """
  tree = (
    nnx.state(model_or_tree, nnx.Param) if isinstance(model_or_tree, nnx.Module) else model_or_tree
  )
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
