"""The train step every program shares: noise key, gradients, update, finite check, jitted over a mesh.

A program's state is one pytree (a dict) with at least ``params``, ``opt_state`` and ``step`` (an
int32 scalar, the optimizer steps done); anything else in it (BatchNorm statistics, an LSTM's
carry) is what the program's loss returns as its new value. :func:`make_train_step` builds
``step(state, batch, key) -> (state, metrics)`` from a program's loss on the global batch;
:func:`jit_train_step` compiles it for a mesh (:mod:`train.common.parallel`). With ``skip_nonfinite`` the optimizer is wrapped in
``optax.apply_if_finite`` (by :func:`optimizer`) and the rest of the state is kept as it was by
:func:`train.common.guard.select_tree`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from train.common import guard

PyTree = Any
# apply_if_finite gives up skipping after this many consecutive non-finite steps; a run told to skip
# never gives up (it is stopped by the user, or its metrics show the skipped steps growing).
_NEVER = 2**31 - 1


def optimizer(
  tx: optax.GradientTransformation, skip_nonfinite: bool
) -> optax.GradientTransformation:
  """``tx``, or ``optax.apply_if_finite(tx)`` that drops every update whose gradients are not finite.

  Stop mode keeps ``tx`` itself: apply_if_finite's ``lax.cond`` changes XLA's fusion and so the last
  bits of the update, and a run that stops on a non-finite step needs no skipping.

  Example:
    >>> tx = optimizer(optax.sgd(0.1), skip_nonfinite=True)
    >>> type(tx.init({"w": jax.numpy.zeros(2)})).__name__
    'ApplyIfFiniteState'
  """
  return optax.apply_if_finite(tx, _NEVER) if skip_nonfinite else tx


def inner_opt_state(opt_state: PyTree) -> PyTree:
  """The wrapped optimizer's state without apply_if_finite's counters (what checkpoints hold).

  So a checkpoint written with ``skip_nonfinite`` off resumes with it on, and the reverse.
  """
  if isinstance(opt_state, optax.ApplyIfFiniteState):
    return opt_state.inner_state
  return opt_state


def wrap_opt_state(template: PyTree, inner: PyTree, skipped: int | None) -> PyTree:
  """Put an inner optimizer state back in the layout of ``template`` (see :func:`inner_opt_state`).

  ``skipped`` sets apply_if_finite's count of non-finite steps (None: keep ``template``'s).
  """
  if not isinstance(template, optax.ApplyIfFiniteState):
    return inner
  if skipped is None:
    return template._replace(inner_state=inner)
  return template._replace(
    total_notfinite=template.total_notfinite * 0 + skipped, inner_state=inner
  )


def make_train_step(
  loss_fn: Callable[..., tuple[jax.Array, tuple[dict, dict]]],
  tx: optax.GradientTransformation,
  *,
  skip_nonfinite: bool,
  update_args: Callable[[dict], dict] | None = None,
  grad_norm: bool = False,
) -> Callable[[dict, dict, jax.Array], tuple[dict, dict]]:
  """The shared step: ``g = grad loss(global batch)``, ``params += tx(g)``, finite check.

  Step s draws its noise from ``fold_in(key, s)`` for the whole global batch (the library draws
  each mask with the batch's sharding), so the masks do not depend on the device count.

  Args:
    loss_fn: ``(params, state, batch, key) -> (loss, (metrics, new_entries))``: the scalar loss on
      the global batch, extra scalar metrics, and the new values of state entries other than
      params/opt_state/step (e.g. ``{"batch_stats": ...}``).
    tx: the optimizer (from :func:`optimizer`).
    skip_nonfinite: keep ``new_entries`` as they were on a non-finite step.
    update_args: optional ``batch -> dict`` of extra arguments of ``tx.update`` (the LM's window
      length, which scales its updates).
    grad_norm: also return the global norm of the averaged gradients (off by default: one more
      consumer of the gradients can change how XLA fuses the update, and with it the last bits).

  Returns:
    ``step(state, batch, key) -> (state, metrics)``, to compile with :func:`jit_train_step`;
    metrics hold ``loss``, the loss's extra metrics, ``ok`` (all finite) and maybe ``grad_norm``.
  """

  def step(state, batch, key):
    skey = jax.random.fold_in(key, state["step"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (metrics, entries)), grads = grad_fn(state["params"], state, batch, skey)
    ok = guard.all_finite((loss, grads))
    extra = update_args(batch) if update_args is not None else {}
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"], **extra)
    if skip_nonfinite:
      entries = guard.select_tree(ok, entries, {k: state[k] for k in entries})
    new = {
      **state,
      **entries,
      "params": optax.apply_updates(state["params"], updates),
      "opt_state": opt_state,
      "step": state["step"] + 1,
    }
    if grad_norm:
      metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return new, {"loss": loss, **metrics, "ok": ok}

  return step


def jit_train_step(step: Callable, state_shardings: PyTree) -> Callable:
  """``jax.jit`` of a step: the state keeps ``state_shardings``, metrics are replicated.

  The state is donated (its buffers are reused for the new state). The batch and key arrive as
  global arrays (``parallel.put_batch``, ``parallel.replicate_key``); their shardings tell XLA how
  to split the work.

  Args:
    step: from :func:`make_train_step`.
    state_shardings: the state's shardings (``parallel.shardings(state)``).
  """
  mesh = jax.tree.leaves(state_shardings)[0].mesh
  metrics = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, out_shardings=(state_shardings, metrics), donate_argnums=(0,))
