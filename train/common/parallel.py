"""Data-parallel ``pmap`` helpers: replicate a state, shard a batch, per-device keys, mean gradients.

The convention in every program: the train step is ``jax.pmap(step, axis_name=AXIS)``; its state
is replicated over the local devices (:func:`replicate`), its batch has a leading device axis
(:func:`shard`), its key is one global key (``in_axes=None``) from which each device derives its
own with :func:`device_key`, and gradients/metrics are averaged with ``lax.pmean(.., AXIS)``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import jax_utils
from jax import lax

AXIS = "batch"
"""The pmap axis name every program uses."""

PyTree = Any


def replicate(tree: PyTree, devices: list[jax.Device] | None = None) -> PyTree:
  """Copy every leaf of ``tree`` to each local device, adding a leading axis of size ``local_device_count``.

  Args:
    tree: pytree of arrays (e.g. ``nnx.state(model)`` or an optimizer state).
    devices: devices to replicate to (default: all local devices, in pmap order); pass the same
      list as ``jax.pmap(..., devices=...)``.

  Returns:
    The replicated pytree, ready to be a pmap argument with ``in_axes=0``.
  """
  # Same mesh axis name as the pmap outputs, so the first and later calls share one compilation.
  return jax_utils.replicate(tree, devices, axis_name=AXIS)


def unreplicate(tree: PyTree) -> PyTree:
  """Take device 0's copy of a replicated pytree (inverse of :func:`replicate`).

  Works for a pmap over any subset of the local devices (flax's ``jax_utils.unreplicate`` returns
  the stacked array there) and for host numpy leaves.

  Args:
    tree: pytree whose leaves have a leading device axis.

  Returns:
    The pytree without the device axis.

  Example:
    >>> unreplicate({"w": np.zeros((2, 3))})["w"].shape
    (3,)
  """

  def first(x):
    if isinstance(x, jax.Array) and len(x.addressable_shards) > 1:
      return x.addressable_shards[0].data.reshape(x.shape[1:])
    return x[0]

  return jax.tree.map(first, tree)


def shard(batch: PyTree, num_devices: int | None = None) -> PyTree:
  """Reshape each leaf of a host batch from ``(B, ...)`` to ``(num_devices, B // num_devices, ...)``.

  Args:
    batch: pytree of numpy/jax arrays with a common leading batch size ``B``.
    num_devices: devices to split over (default ``jax.local_device_count()``).

  Returns:
    The reshaped pytree (numpy leaves stay numpy; pmap transfers them).

  Raises:
    ValueError: ``B`` is not divisible by ``num_devices``.
  """
  n = num_devices or jax.local_device_count()

  def _one(x):
    if x.shape[0] % n:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by the {n} local devices")
    return x.reshape((n, x.shape[0] // n) + x.shape[1:])

  return jax.tree.map(_one, batch)


def unshard(tree: PyTree) -> PyTree:
  """Merge the leading device axis back into the batch axis: ``(n, b, ...) -> (n * b, ...)``."""
  return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)


def device_key(key: jax.Array, axis_name: str = AXIS) -> jax.Array:
  """Per-device key inside ``pmap``: ``fold_in(key, axis_index)`` (so devices never share a mask).

  In a multi-process pmap the axis spans every device of the job and ``axis_index`` is the global
  device index, so 1 process x 4 devices and 2 processes x 2 devices draw the same keys.

  Args:
    key: the same key on every device (pass it with ``in_axes=None``).
    axis_name: the pmap axis name.

  Returns:
    A key unique to this device.
  """
  return jax.random.fold_in(key, lax.axis_index(axis_name))


def pmean(tree: PyTree, axis_name: str = AXIS) -> PyTree:
  """Average every leaf of ``tree`` over the pmap axis (gradients, metrics)."""
  return lax.pmean(tree, axis_name)
