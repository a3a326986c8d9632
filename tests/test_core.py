"""sparseout_jax.core: the rematerialisation chosen per platform, and the named output.

The op lowers to an optimization barrier on CPU (measured faster there) and to a fused
recomputation elsewhere (one pass over memory on a GPU). Both formulations are tested on
CPU for the same values and derivatives; the CUDA program is lowered without a GPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from sparseout_jax import CHECKPOINT_NAME, core, remat_policy, sparseout

SHAPE = (64, 32)
X = jnp.sin(jnp.arange(64 * 32, dtype=jnp.float32) * 0.37).reshape(SHAPE)
G = jnp.cos(jnp.arange(64 * 32, dtype=jnp.float32) * 0.11).reshape(SHAPE)
MASK = jax.random.bernoulli(jax.random.key(0), 0.5, SHAPE)


def _fwd_bwd(op):
  @jax.jit
  def f(x, g):
    y, pull = jax.vjp(lambda x: op(x, MASK, 0.0, 0.0), x)
    return y, pull(g)[0]

  return f


@pytest.mark.parametrize("q", [1.5, 2.5])
def test_both_platform_branches_give_the_same_values_and_gradients(q):
  barrier = core._rematerialised(True, "mask", 0.5, q, SHAPE, True)
  fused = core._rematerialised(True, "mask", 0.5, q, SHAPE, False)
  y0, dx0 = _fwd_bwd(barrier)(X, G)
  y1, dx1 = _fwd_bwd(fused)(X, G)
  jvp0 = jax.jvp(lambda x: barrier(x, MASK, 0.0, 0.0), (X,), (G,))[1]
  jvp1 = jax.jvp(lambda x: fused(x, MASK, 0.0, 0.0), (X,), (G,))[1]
  # The same elementwise formulas; XLA may fuse them differently (an FMA here or there). An
  # output is a sum of two terms, t (t = x or the tangent) and its noise term n = y - t, which
  # may cancel, so the rounding allowed is a few ulp of |t| + |n|, no more.
  for a, b, t in ((y0, y1, X), (dx0, dx1, G), (jvp0, jvp1, G)):
    bound = 4 * np.finfo(np.float32).eps * (np.abs(t) + np.abs(np.asarray(a) - t))
    assert np.all(np.abs(np.asarray(a) - np.asarray(b)) <= bound)


def _lowered(platform: str, residual: str = "mask") -> str:
  def step(key, x, g):
    y, pull = jax.vjp(lambda x: sparseout(key, x, 0.5, 1.5, residual=residual), x)
    return y, pull(g)[0]

  traced = jax.jit(step).trace(jax.random.key(0), X, G)
  return traced.lower(lowering_platforms=(platform,)).as_text()


def test_cuda_program_has_no_barrier_and_cpu_program_has_one():
  assert "optimization_barrier" not in _lowered("cuda")
  assert _lowered("cpu").count("optimization_barrier") == 1
  # The key residual keeps its barrier everywhere (otherwise the mask would be kept, not redrawn).
  assert "optimization_barrier" in _lowered("cuda", residual="key")


def test_remat_policy_recomputes_only_the_named_output(capsys):
  key = jax.random.key(1)

  def layer(w, x):
    return jnp.sum(jnp.tanh(sparseout(key, x, 0.5, 1.5) @ w))

  w = jnp.full((32, 8), 0.1)
  policy = jax.checkpoint(layer, policy=remat_policy)
  kept = {}
  for name, f in {"plain": layer, "policy": policy}.items():
    print_saved_residuals(f, w, X)
    lines = capsys.readouterr().out.splitlines()
    kept[name] = [ln for ln in lines if "f32[64,32]" in ln and "argument" not in ln]
    masks = [ln for ln in lines if "bool[64,32]" in ln]
    assert len(masks) == 1, lines  # the mask is kept either way, never redrawn
  # Without the policy the matmul keeps sparseout's output y (and sparseout x, passed through
  # its platform switch); with it y is recomputed from x (an argument) and the kept mask.
  assert any("named 'sparseout'" in ln for ln in kept["plain"]), kept
  assert kept["policy"] == [], kept
  # Recomputed in the backward pass: the same arithmetic, compiled apart, so rounding apart.
  np.testing.assert_allclose(jax.grad(layer)(w, X), jax.grad(policy)(w, X), rtol=1e-6, atol=1e-7)
  assert CHECKPOINT_NAME == "sparseout"
