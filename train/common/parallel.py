"""Data parallelism as ``jax.jit`` over a one-axis device mesh: global batch sharded, state replicated or FSDP.

Every program builds one :func:`make_mesh` whose ``"data"`` axis spans every device of every
process. A batch is a *global* array: each process supplies its rows (:func:`put_batch`, which is
``jax.make_array_from_process_local_data``) and the array is split over the axis; the train state is
replicated (:func:`put_replicated`). The step is a plain ``jax.jit`` of a function written for
the whole global batch: XLA inserts the all-reduces of the gradients, BatchNorm computes the
statistics of the global batch, and the library draws every noise mask for the global batch with
the batch's sharding, each device making only its shard's bits. So the arithmetic does not depend on
the device count (up to the order of the all-reduce's additions).

With ``param_sharding="fsdp"`` (:func:`put_state`) the parameters and optimizer state are split
over the same axis instead, each array on its largest axis divisible by the device count
(:func:`fsdp_sharding`): each device holds 1/n of them, and XLA gathers the parameters where the
step uses them and reduce-scatters the gradients; the step's arithmetic is the replicated one's.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
"""The mesh axis the batch is split over."""

PyTree = Any


def make_mesh(num_devices: int = 0) -> Mesh:
  """A ``("data",)`` mesh over every device of every process, or the first ``num_devices`` local ones.

  Args:
    num_devices: 0 for every device of the job; n > 0 for the first n devices of this process
      (a single-process run on fewer devices, e.g. to compare device counts).

  Returns:
    The mesh.

  Example:
    >>> make_mesh(1).shape["data"]
    1
  """
  if num_devices < 0:
    raise ValueError(f"num_devices must be >= 0, got {num_devices}")
  if num_devices and (jax.process_count() > 1 or num_devices > jax.local_device_count()):
    raise ValueError(
      f"num_devices={num_devices} needs one process with that many devices "
      f"(have {jax.local_device_count()} in {jax.process_count()} processes)"
    )
  # Process-major order: process p's devices hold rows [p * b, (p + 1) * b) of a global batch.
  devices = (
    jax.local_devices()[:num_devices]
    if num_devices
    else sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  )
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Array dimension ``axis`` (the batch) split over the mesh's ``"data"`` axis."""
  return NamedSharding(mesh, P(*([None] * axis), AXIS))


def _global(x: Any, sharding: NamedSharding) -> jax.Array:
  """The same host value on every process -> a global array with ``sharding``."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


PARAM_SHARDINGS = ("replicated", "fsdp")
"""The train state's layouts (``config.param_sharding``): every device holds all of it, or 1/n."""


def fsdp_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
  """An array's FSDP sharding: its largest axis divisible by the device count split over ``"data"``.

  Ties go to the first such axis; an array with no such axis (a scalar, a bias of odd length) is
  replicated.

  Args:
    shape: the array's shape.
    mesh: the ``("data",)`` mesh.

  Returns:
    The sharding.

  Example:
    >>> mesh = make_mesh(1)
    >>> tuple(fsdp_sharding((784, 32), mesh).spec), tuple(fsdp_sharding((), mesh).spec)
    (('data',), ())
  """
  n = mesh.shape[AXIS]
  axes = [i for i, d in enumerate(shape) if d >= n and d % n == 0]
  if not axes:
    return replicated(mesh)
  return batch_sharding(mesh, max(axes, key=lambda i: (shape[i], -i)))


def put_state(state: dict, mesh: Mesh, param_sharding: str = "replicated") -> dict:
  """Place a host train state on ``mesh``: replicated, or its params and optimizer state FSDP-split.

  Args:
    state: a dict with ``params`` and ``opt_state`` (the same values on every process); its other
      entries (step, BatchNorm statistics) are replicated either way.
    mesh: the mesh.
    param_sharding: ``"replicated"`` or ``"fsdp"`` (:func:`fsdp_sharding` for each array of
      ``params`` and ``opt_state``).

  Returns:
    The state as global arrays.

  Raises:
    ValueError: ``param_sharding`` is not one of :data:`PARAM_SHARDINGS`.
  """
  if param_sharding not in PARAM_SHARDINGS:
    raise ValueError(f"param_sharding must be one of {PARAM_SHARDINGS}, got {param_sharding!r}")
  if param_sharding == "replicated":
    return put_replicated(state, mesh)
  split = {k: v for k, v in state.items() if k in ("params", "opt_state")}
  split = jax.tree.map(lambda x: _global(x, fsdp_sharding(np.shape(x), mesh)), split)
  return put_replicated({k: v for k, v in state.items() if k not in split}, mesh) | split


def put_replicated(tree: PyTree, mesh: Mesh) -> PyTree:
  """Place a host (or single-device) pytree on every device of ``mesh`` (the same value everywhere).

  Every process must pass the same values (a train state built from the same seed).
  """
  return jax.tree.map(lambda x: _global(x, replicated(mesh)), tree)


def put_sharded(tree: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
  """Place a *global* host pytree with dimension ``axis`` split over ``mesh`` (every process passes all of it)."""
  return jax.tree.map(lambda x: _global(x, batch_sharding(mesh, axis)), tree)


def put_batch(tree: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
  """This process's rows of a batch -> the global batch, dimension ``axis`` split over ``mesh``.

  Process p's rows are rows ``[p * b, (p + 1) * b)`` of the global batch (``train.common.data``
  deals them so).

  Raises:
    ValueError: this process's rows do not divide evenly over its devices.
  """
  n = mesh.local_mesh.devices.size

  def one(x):
    x = np.asarray(x)
    if x.shape[axis] % n:
      raise ValueError(f"batch size {x.shape[axis]} is not divisible by the {n} local devices")
    return jax.make_array_from_process_local_data(batch_sharding(mesh, axis), x)

  return jax.tree.map(one, tree)


def replicate_key(key: jax.Array, mesh: Mesh) -> jax.Array:
  """A typed PRNG key placed on every device of ``mesh`` (the step's argument; same on every process)."""
  return jax.random.wrap_key_data(put_replicated(jax.random.key_data(key), mesh))


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of a pytree of global arrays (all rows, on every process).

  A replicated or single-process array is read from this process's devices; an array split over
  several processes is gathered (only the LM's carried hidden state is).
  """

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)


def shardings(tree: PyTree) -> PyTree:
  """The sharding of every leaf of a pytree of global arrays (a jit's ``out_shardings``)."""
  return jax.tree.map(lambda x: x.sharding, tree)
