"""train/common/optimizers.py: the WRN's momentum reset and NT-ASGD's averaging, against closed forms."""

import jax.numpy as jnp
import numpy as np
import optax

from train.common import optimizers


def test_reset_at_restarts_the_momentum_buffer_at_the_given_steps():
  """torch SGD(momentum 0.9) rebuilt at step 2: buf = g, then mu buf + g, then g again."""
  tx = optimizers.reset_at(optax.trace(0.9), (2,))
  state = tx.init(jnp.zeros(2))
  grads = [jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0]), jnp.array([3.0, 1.0])]
  buf, got = None, []
  for step, g in enumerate(grads):
    u, state = tx.update(g, state)
    buf = g if buf is None or step == 2 else 0.9 * buf + g
    np.testing.assert_allclose(u, buf, rtol=1e-6)
    got.append(u)
  np.testing.assert_array_equal(got[2], grads[2])  # the fresh buffer holds only the new gradient


def test_average_iterates_keeps_the_mean_since_the_switch_and_passes_extra_args():
  """Off: the update is the inner one and the average stays; on: the mean of the iterates after
  the switch (torch ASGD, t0 = 0, lambd = 0). The window length reaches the inner chain."""

  def scale(updates, state, params=None, *, length, **extra):
    return updates * length, state

  inner = optax.chain(
    optax.sgd(0.1), optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), scale)
  )
  tx = optimizers.average_iterates(inner)
  w = jnp.array([1.0, -1.0])
  state = tx.init(w)
  u, state = tx.update(jnp.ones(2), state, w, length=2.0)
  np.testing.assert_allclose(u, -0.2 * jnp.ones(2), rtol=1e-6)
  w = w + u
  np.testing.assert_array_equal(state.avg, jnp.array([1.0, -1.0]))  # off: unchanged
  state = optimizers.start_averaging(state, w)
  iterates = []
  for g in (jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0]), jnp.array([-1.0, 1.0])):
    u, state = tx.update(g, state, w, length=1.0)
    w = w + u
    iterates.append(w)
  assert int(state.count) == 3 and bool(state.on)
  np.testing.assert_allclose(state.avg, np.mean(iterates, axis=0), rtol=1e-6)
