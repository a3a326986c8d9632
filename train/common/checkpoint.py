"""Checkpointing through orbax's ``CheckpointManager``: train state + JSON metadata, latest and best kept.

A checkpoint at step ``s`` holds two items: ``state`` (any pytree of arrays: model and optimizer
state, written by orbax from the global arrays, each shard by the process that holds it, a
replicated array once) and ``meta`` (a JSON dict: the step, the data position, anything else the
program needs to resume exactly; the noise key is not stored: it is the config's seed folded with
the step). ``metrics`` given at save time rank checkpoints for "best". The latest
``keep_latest`` checkpoints and the ``keep_best`` best ones are kept; older ones are deleted.

Multi-process: every process calls :meth:`Checkpointer.save`/``restore`` (orbax synchronises them;
numpy leaves are written by the primary process only). A restore into a target of global arrays
places each restored array with the target's sharding.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from train.common import errors

PyTree = Any


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint could not be read (missing, truncated or not matching the model)."""


FORMAT = 2
"""The checkpoint layout: 2 = global arrays of a ``jax.jit`` run over a mesh (``meta["format"]``).

Checkpoints of the earlier per-device (``pmap``) programs have no format entry; their noise was
drawn per device, so a resumed run could not continue them exactly, and they are refused.
"""


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of every leaf (global arrays gathered where they span processes)."""
  from train.common import parallel

  return parallel.to_host(tree)


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
  """The restore target of one leaf: a global array's shape, dtype and sharding; a host leaf goes to
  this process's first device (then back to numpy), whatever devices wrote it."""
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  a = np.asarray(leaf)
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one)


def state_digest(tree: PyTree) -> str:
  """sha256 over every leaf's dtype, shape and bytes, in tree order (detects silently altered data).

  Orbax notices a truncated or unreadable file, but flipped bytes inside a data chunk restore as
  wrong numbers without an error; the digest, kept in the checkpoint's metadata, catches that.
  """
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))  # the buffer itself, no copy
  return h.hexdigest()


class Checkpointer:
  """Save/restore ``(state, meta)`` checkpoints in ``directory``, keeping the latest and the best.

  Args:
    directory: checkpoint folder (created if missing; made absolute).
    keep_latest: how many most recent checkpoints to keep.
    keep_best: how many best checkpoints (by ``best_metric``) to keep in addition; 0 disables.
    best_metric: key of the ``metrics`` dict passed to :meth:`save` that ranks checkpoints.
    best_mode: ``"min"`` (e.g. a loss) or ``"max"`` (e.g. an accuracy).
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    keep_latest: int = 1,
    keep_best: int = 1,
    best_metric: str | None = None,
    best_mode: str = "min",
  ):
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    if keep_latest < 1:
      raise ValueError(f"keep_latest must be >= 1, got {keep_latest}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.best_metric = best_metric
    policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep_latest)]
    best_fn = None
    if best_metric is not None and keep_best > 0:

      def best_fn(metrics: dict) -> float:
        return float(metrics[best_metric])

      policies.append(
        ocp.checkpoint_managers.BestN(
          get_metric_fn=best_fn,
          reverse=best_mode == "min",
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = ocp.CheckpointManagerOptions(
      best_fn=best_fn,
      best_mode=best_mode,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      create=True,
      enable_async_checkpointing=False,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "meta")
    )

  def latest_step(self) -> int | None:
    """Step of the newest checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """Step of the best checkpoint by ``best_metric`` (the latest if no metric), or None."""
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    """Steps of every checkpoint on disk, ascending."""
    return sorted(self._manager.all_steps())

  def path(self, step: int) -> str:
    """Folder of the checkpoint at ``step`` (for messages)."""
    return os.path.join(self.directory, str(step))

  def save(
    self,
    step: int,
    state: PyTree,
    *,
    meta: dict | None = None,
    metrics: dict | None = None,
  ) -> bool:
    """Write a checkpoint at ``step`` (a no-op if one already exists at that step).

    Args:
      step: global training step (the checkpoint's name).
      state: pytree of arrays (global arrays are written from their shards, not gathered).
      meta: JSON-serialisable dict (data position, ...).
      metrics: scalars for ranking "best" (must contain ``best_metric`` when one is set).

    Returns:
      True if a checkpoint was written.
    """
    if step in self._manager.all_steps():
      return False
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
    meta = dict(meta or {})
    meta.setdefault("step", int(step))
    meta["format"] = FORMAT
    meta["state_sha256"] = state_digest(to_host(state))
    state = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x), state)
    saved = self._manager.save(
      int(step),
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics,
      force=True,
    )
    self._manager.wait_until_finished()
    return bool(saved)

  def restore(
    self, target: PyTree, step: int | None = None, *, best: bool = False
  ) -> tuple[PyTree, dict] | None:
    """Read the checkpoint at ``step`` (default: latest, or best if ``best``) into ``target``'s structure.

    Args:
      target: a pytree with the same structure/shapes/dtypes as the saved state (e.g. the freshly
        initialised state); its values are not used. Global-array leaves give their sharding to
        the restored arrays; numpy leaves restore as numpy.
      step: which checkpoint; None picks the latest (or best).
      best: pick the best checkpoint instead of the latest when ``step`` is None.

    Returns:
      ``(state, meta)`` (leaves like ``target``'s), or None when the folder has no checkpoint.

    Raises:
      CheckpointError: the checkpoint is missing, truncated, altered (its state no longer matches
        the sha256 recorded at save time), or does not match ``target``.
    """
    if step is None:
      step = self.best_step() if best else self.latest_step()
      if step is None:
        return None
    abstract = jax.tree.map(_abstract, target)
    try:
      restored = self._manager.restore(
        int(step),
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # orbax raises many types; the user needs the file and the reason.
      raise CheckpointError(
        f"cannot restore checkpoint {self.path(step)}: {errors.one_line(e)}\n"
        "The checkpoint is truncated, corrupted or from a different model/config; delete that "
        "folder to fall back to an earlier checkpoint, or use a new --workdir."
      ) from None
    meta = dict(restored.meta)
    if meta.get("format") != FORMAT:
      raise CheckpointError(
        f"checkpoint {self.path(step)} was written by an earlier version of the programs "
        "(per-device pmap layout, format 1) and cannot be resumed; use a new --workdir."
      )
    state = jax.tree.map(
      lambda t, x: x if isinstance(t, jax.Array) else np.asarray(x), target, restored.state
    )
    _check_same_structure(target, state, self.path(step))
    want = meta.get("state_sha256")
    if want is not None and state_digest(to_host(state)) != want:
      raise CheckpointError(
        f"checkpoint {self.path(step)} is corrupted: its state does not match the sha256 recorded "
        "when it was written (bytes of a data file changed). Delete that folder to fall back to an "
        "earlier checkpoint, or use a new --workdir."
      )
    return state, meta

  def close(self) -> None:
    """Wait for pending writes and release the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def _check_same_structure(target: PyTree, state: PyTree, where: str) -> None:
  t_leaves, t_def = jax.tree.flatten(target)
  s_leaves, s_def = jax.tree.flatten(state)
  if t_def != s_def:
    raise CheckpointError(
      f"checkpoint {where} has a different structure from the model: {s_def} vs {t_def}"
    )
  for a, b in zip(t_leaves, s_leaves, strict=True):
    if np.shape(a) != np.shape(b):
      raise CheckpointError(
        f"checkpoint {where} has shape {np.shape(b)} where the model has {np.shape(a)}"
      )
