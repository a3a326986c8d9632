"""Tests of models/wrn.py: size, shapes, dtypes, Dropout equivalence at q = 2, cross-device BN statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.params import param_count
from models.wrn import WideResNet


def _tiny(**kw) -> WideResNet:
  """WRN-10-1 (one block per group) with a 16 -> 16 identity block and two width-changing blocks."""
  kw.setdefault("num_classes", 10)
  return WideResNet(10, kw.pop("width", 1), rngs=nnx.Rngs(0), **kw)


def _images(n: int, seed: int = 0, size: int = 8) -> jax.Array:
  """Small images keep eager CPU tests fast; the network is fully convolutional up to the pool."""
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3), jnp.float32)


@pytest.mark.parametrize(
  "depth,width,classes,expected",
  [
    (28, 10, 10, 36_479_194),  # the WRN paper's 36.5M (PyTorch reference counts the same)
    (28, 10, 100, 36_536_884),
    (16, 4, 10, 2_748_890),
  ],
)
def test_parameter_count(depth: int, width: int, classes: int, expected: int) -> None:
  model = nnx.eval_shape(lambda: WideResNet(depth, width, classes, rngs=nnx.Rngs(0)))
  assert param_count(model) == expected
  if (depth, width, classes) == (28, 10, 10):
    assert abs(param_count(model) / 1e6 - 36.5) < 0.05


def test_output_shapes_and_block_shapes() -> None:
  model = _tiny(num_classes=7)
  x = _images(4)
  assert model(x, train=True, key=jax.random.key(1)).shape == (4, 7)
  assert model(x).shape == (4, 7)
  assert model(_images(2, size=32)).shape == (2, 7)
  h = model.stem(x)
  shapes = []
  for block in model.blocks:
    h = block(h, train=False, key=None)
    shapes.append(h.shape)
  assert shapes == [(4, 8, 8, 16), (4, 4, 4, 32), (4, 2, 2, 64)]
  # A 1x1 shortcut conv exactly where the width changes (16 -> 16 is an identity shortcut).
  assert [b.shortcut is not None for b in model.blocks] == [False, True, True]
  assert [b.conv0.strides for b in model.blocks] == [(1, 1), (2, 2), (2, 2)]
  wide = nnx.eval_shape(lambda: WideResNet(10, 2, rngs=nnx.Rngs(0)))
  assert [b.shortcut is not None for b in wide.blocks] == [True, True, True]


def test_bfloat16_compute_keeps_float32_params_and_stats() -> None:
  model = _tiny(dtype=jnp.bfloat16)
  out = model(_images(4), train=True, key=jax.random.key(0))
  assert out.dtype == jnp.float32
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param)) + jax.tree.leaves(
    nnx.state(model, nnx.BatchStat)
  )
  assert all(leaf.dtype == jnp.float32 for leaf in leaves)
  # The running statistics moved away from their (0, 1) initial values.
  assert not np.allclose(np.asarray(model.bn.mean[...]), 0.0)
  f32 = _tiny()
  ref = f32(_images(4), train=False)
  got = _tiny(dtype=jnp.bfloat16)(_images(4), train=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=0.15, rtol=0.1)


@pytest.mark.parametrize("placement", ["after_relu", "before_bn"])
def test_q2_sparseout_model_equals_flax_dropout_model(placement: str) -> None:
  so = _tiny(regularizer="sparseout", q=2.0, rate=0.3, placement=placement)
  do = _tiny(regularizer="dropout", rate=0.3, placement=placement)
  x, key = _images(4), jax.random.key(42)

  def loss(model: WideResNet) -> jax.Array:
    return jnp.sum(model(x, train=True, key=key) ** 2)

  l_so, g_so = nnx.value_and_grad(loss)(so)
  l_do, g_do = nnx.value_and_grad(loss)(do)
  assert np.array_equal(np.asarray(l_so), np.asarray(l_do))
  for a, b in zip(jax.tree.leaves(g_so), jax.tree.leaves(g_do), strict=True):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(
    jax.tree.leaves(nnx.state(so, nnx.BatchStat)),
    jax.tree.leaves(nnx.state(do, nnx.BatchStat)),
    strict=True,
  ):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  # Noise really is on: a different key changes the output; evaluation is deterministic and noise-free.
  assert not np.array_equal(np.asarray(so(x, train=True, key=jax.random.key(0))), np.asarray(l_so))
  fresh = _tiny(regularizer="sparseout", q=2.0, rate=0.3, placement=placement)
  plain = _tiny(regularizer="none", placement=placement)
  assert np.array_equal(np.asarray(fresh(x)), np.asarray(plain(x)))


@pytest.mark.parametrize("placement,expect_negative", [("after_relu", False), ("before_bn", True)])
def test_regulariser_placement(placement: str, expect_negative: bool) -> None:
  """After the 2nd ReLU the noise sees non-negative inputs; before BN it sees raw conv outputs (with negatives)."""
  model = _tiny(regularizer="sparseout", q=3.0, placement=placement)
  seen = []

  class Spy(nnx.Module):
    def __init__(self, inner: nnx.Module) -> None:
      self.inner = inner

    def __call__(self, x, *, deterministic=None, rngs=None):
      seen.append(float(jnp.min(x)))
      return self.inner(x, deterministic=deterministic, rngs=rngs)

  for block in model.blocks:
    block.noise = Spy(block.noise)
  model(_images(4), train=True, key=jax.random.key(0))
  assert len(seen) == 3
  assert (min(seen) < 0) == expect_negative


def test_q_other_than_2_differs_from_dropout() -> None:
  x, key = _images(4), jax.random.key(3)
  a = _tiny(regularizer="sparseout", q=4.0)(x, train=True, key=key)
  b = _tiny(regularizer="dropout")(x, train=True, key=key)
  assert not np.allclose(np.asarray(a), np.asarray(b))


def test_bn_statistics_identical_across_4_devices_after_pmap_step() -> None:
  ndev = 4
  assert jax.local_device_count() >= ndev, "tests/conftest.py should give 8 CPU devices"
  # No noise here, so the per-device statistics can be compared with a one-device run on the global batch.
  model = _tiny(axis_name="batch", regularizer="none")
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  x = _images(ndev * 4, seed=5).reshape(ndev, 4, 8, 8, 3) * jnp.arange(1, ndev + 1).reshape(
    ndev, 1, 1, 1, 1
  )

  def step(params, stats, x, key):
    key = jax.random.fold_in(key, jax.lax.axis_index("batch"))

    def loss_fn(params):
      m = nnx.merge(graphdef, params, stats, copy=True)
      logits = m(x, train=True, key=key)
      return jnp.mean(logits**2), nnx.state(m, nnx.BatchStat)

    grads, new_stats = jax.grad(loss_fn, has_aux=True)(params)
    return jax.lax.pmean(grads, "batch"), new_stats

  rep = jax.tree.map(lambda a: jnp.stack([a] * ndev), (params, stats, jax.random.key(0)))
  grads, new_stats = jax.pmap(step, axis_name="batch", devices=jax.devices()[:ndev])(
    rep[0], rep[1], x, rep[2]
  )
  for leaf in jax.tree.leaves(new_stats):
    leaf = np.asarray(leaf)
    assert leaf.shape[0] == ndev
    for d in range(1, ndev):
      np.testing.assert_array_equal(leaf[d], leaf[0])
  # ...and equal to the statistics one device computes over the whole global batch.
  single = _tiny(regularizer="none")
  single(x.reshape(-1, 8, 8, 3), train=True, key=jax.random.key(0))
  for got, want in zip(
    jax.tree.leaves(new_stats), jax.tree.leaves(nnx.state(single, nnx.BatchStat)), strict=True
  ):
    np.testing.assert_allclose(np.asarray(got)[0], np.asarray(want), rtol=2e-4, atol=2e-5)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
  "kwargs,name",
  [
    ({"depth": 12}, "depth"),
    ({"width": 0}, "width"),
    ({"rate": 1.0}, "rate"),
    ({"q": 0.0}, "q"),
    ({"regularizer": "bridgeout"}, "regularizer"),
    ({"placement": "middle"}, "placement"),
    ({"dtype": jnp.float16}, "dtype"),
  ],
)
def test_bad_arguments_are_named(kwargs: dict, name: str) -> None:
  args = {"depth": 10, "width": 1, "num_classes": 10, **kwargs}
  with pytest.raises(ValueError, match=name):
    WideResNet(
      args.pop("depth"), args.pop("width"), args.pop("num_classes"), rngs=nnx.Rngs(0), **args
    )


def test_train_without_key_is_a_clear_error() -> None:
  with pytest.raises(ValueError, match="key"):
    _tiny()(_images(1), train=True)


# (remat_noise, remat_output) -> tensors of the first block's shape no longer kept, by regulariser:
# the output remat recomputes Sparseout's output only (dropout has no named output); the noise
# remat recomputes the noised activation and the mask.
_REMATS = {"plain": (False, False), "output": (False, True), "noise": (True, False)}
_FEWER = {"sparseout": {"output": 1, "noise": 2}, "dropout": {"output": 0, "noise": 2}}


@pytest.mark.parametrize("regularizer", ["sparseout", "dropout"])
def test_remat_noise_same_values_fewer_saved_activations(regularizer: str, capsys) -> None:
  from jax.ad_checkpoint import print_saved_residuals

  x, key = _images(2), jax.random.key(42)
  results, saved = {}, {}
  for name, (remat_noise, remat_output) in _REMATS.items():
    model = _tiny(
      regularizer=regularizer,
      q=1.5,
      rate=0.3,
      remat_noise=remat_noise,
      remat_output=remat_output,
      record_sparsity=True,
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, graphdef=graphdef, rest=rest):
      m = nnx.merge(graphdef, p, rest, copy=True)
      out, records = nnx.capture(m, nnx.Intermediate)(x, train=True, key=key)
      return jnp.sum(out**2), records

    results[name] = jax.value_and_grad(loss, has_aux=True)(params)
    print_saved_residuals(lambda p, loss=loss: loss(p)[0], params)
    # The first block's noised activation: (2, 8, 8, 16), float32 and its bool mask.
    saved[name] = sum("[2,8,8,16]" in line for line in capsys.readouterr().out.splitlines())
  # Eagerly, a rematerialised region runs as one compiled program and the plain path op by op:
  # XLA may fuse and round them differently (the loss was seen one ulp apart on one CPU), so
  # the values agree to float32 rounding, which is all remat promises.
  for name in ("output", "noise"):
    for a, b in zip(jax.tree.leaves(results["plain"]), jax.tree.leaves(results[name]), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert saved[name] == saved["plain"] - _FEWER[regularizer][name], saved
