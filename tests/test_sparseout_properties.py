"""Property-based tests: finite outputs and gradients wherever inputs are finite, q = 2 == Flax."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparseout_jax import sparseout

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _special_values(dtype):
  fi = jnp.finfo(dtype)
  return [
    0.0,
    -0.0,
    float(fi.tiny),
    float(fi.tiny) / 2,
    float(fi.smallest_subnormal),
    1.0,
    -1.0,
    float(fi.max),
    -float(fi.max),
  ]


@st.composite
def cases(draw):
  dname = draw(st.sampled_from(sorted(DTYPES)))
  dtype = DTYPES[dname]
  shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
  elems = st.one_of(
    st.sampled_from(_special_values(dtype)),
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
  )
  x = draw(hnp.arrays(np.float32, shape, elements=elems))
  x = np.clip(x, -float(jnp.finfo(dtype).max), float(jnp.finfo(dtype).max))
  dims = draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
  p = draw(st.sampled_from([0.0, 1e-3, 0.1, 0.5, 0.9, 0.999, 1.0]))
  q = draw(st.sampled_from([1e-3, 0.5, 1.0, 1.5, 1.999, 2.0, 2.001, 2.5, 3.0, 4.0]))
  gradient = draw(st.sampled_from(["exact", "reference"]))
  return jnp.asarray(x).astype(dtype), tuple(dims), p, q, gradient, draw(st.integers(0, 2**31 - 1))


@SETTINGS
@given(cases())
def test_gradients_are_finite_and_outputs_finite_or_overflowing(case):
  x, dims, p, q, gradient, seed = case
  key = jax.random.key(seed)
  y = sparseout(key, x, p, q, broadcast_dims=dims, gradient=gradient)
  assert y.shape == x.shape and y.dtype == x.dtype
  assert not bool(jnp.isnan(y).any())
  assert bool((y[x == 0] == 0).all())
  # The exact result's magnitude is at most |x| + |x|**(q/2) max|eta|; only where that exceeds the
  # dtype's range may y be infinite.
  xf = np.abs(np.asarray(x, np.float64))
  bound = xf + xf ** (q / 2) * max(1.0, p / (1 - p) if p < 1 else 0.0)
  inf_ok = bound > float(jnp.finfo(x.dtype).max) / 2
  assert bool(np.all(np.isfinite(np.asarray(y, np.float64)) | inf_ok))
  g = jax.grad(
    lambda x: (
      sparseout(key, x, p, q, broadcast_dims=dims, gradient=gradient).astype(jnp.float32).sum()
    )
  )(x)
  # Likewise the derivative 1 + c |x|**(q/2-1) eta may overflow only where its exact value does.
  dbound = 1.0 + max(q / 2, 1.0) * np.maximum(xf, 1e-12) ** (q / 2 - 1) * max(
    1.0, p / (1 - p) if p < 1 else 0.0
  )
  dinf_ok = dbound > float(jnp.finfo(x.dtype).max) / 2
  assert bool(np.all(np.isfinite(np.asarray(g, np.float64)) | dinf_ok))


@SETTINGS
@given(cases())
def test_q2_always_equals_flax_dropout(case):
  x, dims, p, _, _, seed = case
  key = jax.random.key(seed)
  want = nn.Dropout(p, broadcast_dims=dims, deterministic=False).apply({}, x, rng=key)
  got = sparseout(key, x, p, 2.0, broadcast_dims=dims)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_nan_in_nan_out_without_spreading():
  x = jnp.array([1.0, jnp.nan, -2.0, 0.0])
  y = sparseout(jax.random.key(0), x, 0.5, 1.5)
  assert bool(jnp.isnan(y[1])) and bool(jnp.isfinite(y[jnp.array([0, 2, 3])]).all())
