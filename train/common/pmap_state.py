"""Replicate a train state with the sharding ``jax.pmap`` outputs, so a pmapped step compiles once.

Under the jit/shard_map-based ``jax.pmap`` (JAX >= 0.8) a step's cache key includes its inputs'
shardings. ``parallel.replicate`` places leaves on a mesh named ``_device_put_sharded``, while the
step returns them on a mesh named after its ``axis_name``; so the first two calls of a step compile
twice (measured: ~15 s each for the tiny WRN on CPU). Passing the replicated state once through an
identity ``pmap`` with the step's axis name gives it the output sharding up front.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from train.common import parallel

PyTree = Any


@functools.cache
def _identity(axis_name: str, devices: tuple[jax.Device, ...] | None):
  return jax.pmap(lambda x: x, axis_name=axis_name, devices=list(devices) if devices else None)


def replicate(
  tree: PyTree, axis_name: str = parallel.AXIS, devices: list[jax.Device] | None = None
) -> PyTree:
  """``parallel.replicate(tree)`` laid out as a ``pmap(..., axis_name=axis_name)`` output.

  Args:
    tree: pytree of arrays (unreplicated).
    axis_name: the axis name of the pmapped step that will consume the state.
    devices: the step's ``devices`` argument (default: all local devices).

  Returns:
    The replicated pytree (leading device axis) with the step's output sharding.
  """
  return _identity(axis_name, tuple(devices) if devices else None)(
    parallel.replicate(tree, devices)
  )
