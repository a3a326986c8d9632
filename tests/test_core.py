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


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_mask_is_bernoullis_bit_for_bit(impl):
  # draw_mask compares integers where random.bernoulli compares floats: the same mask, for a
  # static and a traced keep, at the edges too (0, 1, the largest float32 below 1, NaN, out of
  # range, which bernoulli treats as 0 or 1).
  key = jax.random.key(5, impl=impl)
  like = jnp.ones((128, 128))
  for keep in (0.5, 0.1, 1 / 3, 0.9, 1 - 2**-24, 1e-40, 0.0, 1.0):
    want = jax.random.bernoulli(key, keep, like.shape)
    np.testing.assert_array_equal(core.draw_mask(key, keep, like, like.shape), want)
  traced = jax.jit(lambda k: core.draw_mask(key, k, like, like.shape))
  for keep in (0.5, 1 / 3, 1 - 2**-24, 0.0, 1.0, -0.5, 1.5, float("nan")):
    want = jax.random.bernoulli(key, jnp.float32(keep), like.shape)
    np.testing.assert_array_equal(traced(jnp.float32(keep)), want)


@pytest.mark.parametrize("keep", [0.5, 1 / 3, 0.1, 0.9, 1 - 2**-24, 2**-23, 3 * 2**-24, 1e-7])
def test_integer_threshold_agrees_with_the_float_compare_for_every_uniform(keep):
  # Every one of the 2**23 float32 uniforms bernoulli can draw, u = i 2**-23, made as it makes
  # them (mantissa bits under exponent 0, minus 1): u < keep exactly where i < the threshold.
  i = np.arange(2**23, dtype=np.uint32)
  u = (i | np.uint32(0x3F800000)).view(np.float32) - np.float32(1)
  want = u < np.float32(keep)
  static = core._keep_threshold(keep, 23)
  traced = np.asarray(jax.jit(core._keep_threshold, static_argnums=1)(jnp.float32(keep), 23))
  np.testing.assert_array_equal(i < static, want)
  np.testing.assert_array_equal(i < traced, want)


@pytest.mark.parametrize("e", [0.75, -0.25, 0.25, 1.25, 0.5, -0.5, 1.5, -0.875, 0.125, 3.0, 0.3])
def test_static_power_is_within_a_few_ulp_of_float64(e):
  # Square-root chains and products (e = n / 2**k), or pow: each step correctly rounded or
  # nearly (XLA's rsqrt), so a few float32 ulp of the exact power, over 60 binades.
  from sparseout_jax._power import abs_pow

  a = np.exp(np.random.default_rng(0).uniform(-20, 20, 1 << 14)).astype(np.float32)
  exact = a.astype(np.float64) ** e
  got = np.asarray(jax.jit(lambda a: abs_pow(a, e))(a), np.float64)
  ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
  assert np.max(np.abs(got - exact) / ulp) <= 8
  zero = np.asarray(abs_pow(jnp.zeros(2), e))
  assert (zero == (0.0 if e > 0 else np.inf)).all()


def test_sign_transfer_equals_sign_times_magnitude():
  from sparseout_jax._power import with_sign_of

  x = jnp.array([-3.0, -1e-30, 2.5, 1e30, -jnp.inf, jnp.inf])
  m = jnp.array([0.5, 7.0, 0.0, 1e-20, 2.0, 3.0])
  np.testing.assert_array_equal(with_sign_of(m, x), jnp.sign(x) * m)
  bf = x.astype(jnp.bfloat16)
  np.testing.assert_array_equal(
    with_sign_of(m.astype(jnp.bfloat16), bf), jnp.sign(bf) * m.astype(bf.dtype)
  )
