"""Sparseout in existing models: replace_dropout (NNX, Linen), Linen's Dropout signature and
names, and the sparsity records. Tested on a model with the shape of a real one: a small
transformer encoder with several Dropouts, layers stacked by scan, an ensemble under vmap, remat."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import sparseout_jax.linen as so_linen
import sparseout_jax.nnx as so_nnx
from sparseout_jax import sparsity_records, sparsity_stats

D, HEADS, LAYERS, ENSEMBLE = 8, 2, 3, 2
X = jnp.sin(jnp.arange(2 * 5 * D, dtype=jnp.float32)).reshape(2, 5, D)


# --- NNX: an encoder block stacked with nnx.scan, an ensemble under nnx.vmap, remat. ---
class Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.attn = nnx.MultiHeadAttention(HEADS, D, dropout_rate=0.0, decode=False, rngs=rngs)
    self.attn_drop = nnx.Dropout(0.1, rngs=rngs)
    self.mlp = nnx.Linear(D, D, rngs=rngs)
    self.mlp_drop = nnx.Dropout(0.2, broadcast_dims=(1,), rngs=rngs)
    self.norm = nnx.LayerNorm(D, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn_drop(self.attn(x))
    return self.norm(x + self.mlp_drop(nnx.relu(self.mlp(x))))


class Encoder(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.embed_drop = nnx.Dropout(0.1, rngs=rngs)

    @nnx.split_rngs(splits=LAYERS)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return Block(rngs)

    self.blocks = make(rngs)

  def __call__(self, x):
    # Each stacked layer's rng stream was split when the stack was built: scan slices it.
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    @nnx.remat
    def body(x, block):
      return block(x)

    return body(self.embed_drop(x), self.blocks)


def _ensemble(seed: int):
  @nnx.split_rngs(splits=ENSEMBLE)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return Encoder(rngs)

  return make(nnx.Rngs(params=seed, dropout=seed + 1))


def _ensemble_loss(model, x):
  @nnx.vmap(in_axes=(0, None), out_axes=0)
  def apply(m, x):
    return m(x)

  y = apply(model, x)
  return jnp.sum(jnp.tanh(y) * jnp.cos(y)), y


def _run(model):
  (loss, y), grads = nnx.jit(nnx.value_and_grad(_ensemble_loss, has_aux=True))(model, X)
  return y, nnx.state(grads, nnx.Param)


def test_nnx_replace_dropout_bit_equal_at_q2():
  before, after = _ensemble(0), _ensemble(0)
  assert so_nnx.replace_dropout(after, q=2.0) == 3  # embed_drop, attn_drop, mlp_drop (stacked)
  kinds = {type(m).__name__ for _, m in nnx.iter_graph(after) if isinstance(m, nnx.Dropout)}
  assert kinds == {"Sparseout"}
  y0, g0 = _run(before)
  y1, g1 = _run(after)
  np.testing.assert_array_equal(np.asarray(y0), np.asarray(y1))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g0, g1)
  # The rng streams advanced identically, so the next step is bit-equal as well.
  np.testing.assert_array_equal(np.asarray(_run(before)[0]), np.asarray(_run(after)[0]))


def test_nnx_replace_dropout_keeps_settings_and_filters():
  model = _ensemble(0)
  model.eval()
  n = so_nnx.replace_dropout(
    model, q=1.5, gradient="reference", only=lambda path, m: "blocks" in path
  )
  assert n == 2
  assert type(model.embed_drop) is nnx.Dropout
  drop = model.blocks.mlp_drop
  assert isinstance(drop, so_nnx.Sparseout)
  assert (drop.rate, tuple(drop.broadcast_dims), drop.q, drop.gradient) == (
    0.2,
    (1,),
    1.5,
    "reference",
  )
  assert drop.deterministic is True  # eval() state carried over
  model.train()
  assert drop.deterministic is False
  assert so_nnx.replace_dropout(model, q=1.5) == 1  # only the Dropout left


def test_nnx_replace_dropout_changes_the_output_at_q_not_2():
  before, after = _ensemble(0), _ensemble(0)
  so_nnx.replace_dropout(after, q=1.5)
  assert not np.array_equal(np.asarray(_run(before)[0]), np.asarray(_run(after)[0]))


def test_nnx_record_sparsity_through_scan():
  model = Encoder(nnx.Rngs(params=0, dropout=1))
  so_nnx.replace_dropout(model, q=2.0, record_sparsity=True)
  model.eval()

  @nnx.jit
  def records(model, x):
    def apply(m, x):
      return m(x)

    _, captured = nnx.capture(apply, nnx.Intermediate)(model, x)
    return sparsity_records(captured)

  recs = records(model, X)
  assert set(recs) == {"embed_drop", "blocks/attn_drop", "blocks/mlp_drop"}
  # The embedding dropout sees X itself: its record is X's statistics.
  want = sparsity_stats(X)
  np.testing.assert_allclose(float(recs["embed_drop"]["hoyer"]), float(want["hoyer"]), rtol=1e-6)
  assert float(recs["blocks/mlp_drop"]["zero_fraction"]) > 0.2  # relu outputs


def test_record_sparsity_off_compiles_the_same_program():
  x = jnp.linspace(-1.0, 1.0, 16).reshape(2, 8)

  def hlo(**kw):
    graphdef, state = nnx.split(so_nnx.Sparseout(0.5, q=1.5, rngs=nnx.Rngs(0), **kw))

    def f(state, x, k):
      y, captured = nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate)(x, rngs=k)
      return y, captured

    return jax.jit(f).lower(state, x, jax.random.key(0)).as_text()

  assert hlo(record_sparsity=False) == hlo()
  assert hlo(record_sparsity=True) != hlo()


def _mnist(n: int) -> jax.Array:
  import gzip
  import pathlib

  path = (
    pathlib.Path(__file__).resolve().parents[1] / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
  )
  raw = np.frombuffer(gzip.open(path).read(), np.uint8, offset=16)[: n * 784]
  return jnp.asarray(raw.reshape(n, 784), jnp.float32) / 255.0


@pytest.mark.slow
def test_records_report_the_autoencoder_numbers_and_q_moves_them():
  import optax

  from models.autoencoder import Autoencoder

  x = _mnist(256)

  def build(q):
    model = Autoencoder(
      64, regularizer="sparseout", rate=0.5, q=q, gradient="reference", rngs=nnx.Rngs(0)
    )
    model.noise.record_sparsity = True
    return model

  def records(model):
    _, captured = nnx.capture(lambda m, x: m(x, jax.random.key(1)), nnx.Intermediate)(model, x)
    return sparsity_records(captured)

  model = build(1.5)
  ((path, rec),) = records(model).items()
  assert path == "noise"
  want = sparsity_stats(model.encode(x))  # the noise layer's input: the clean hidden units
  for k in ("hoyer", "zero_fraction"):
    np.testing.assert_allclose(float(rec[k]), float(want[k]), rtol=1e-6)

  def trained(q):
    model = build(q)
    opt = nnx.Optimizer(model, optax.sgd(0.5, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, key):
      def loss(m):
        # Recording under nnx.capture, as a training step should: outside it, Flax's sow appends a
        # record to the layer on every call, and nnx.jit retraces each step (5 min here, not 10 s).
        (logits, _), _ = nnx.capture(m, nnx.Intermediate)(x, key)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, x))

      opt.update(model, nnx.grad(loss)(model))

    for i in range(150):
      step(model, opt, jax.random.key(100 + i))
    return float(records(model)["noise"]["hoyer"])

  assert trained(1.0) > trained(3.0) + 0.02


# --- Linen: positional arguments, autonames, replace_dropout through scan, vmap, remat. ---
def test_linen_positional_arguments_mean_what_they_mean_for_dropout():
  a = so_linen.Sparseout(0.5, (1,), True, "noise")
  b = nn.Dropout(0.5, (1,), True, "noise")
  for f in ("rate", "broadcast_dims", "deterministic", "rng_collection"):
    assert getattr(a, f) == getattr(b, f)
  with pytest.raises(TypeError):
    so_linen.Sparseout(0.5, (1,), True, "noise", 1.5)  # q is keyword-only


class LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    y = nn.SelfAttention(HEADS, deterministic=True)(x)
    x = x + nn.Dropout(0.1, deterministic=False)(y)
    y = nn.relu(nn.Dense(D)(x))
    return nn.LayerNorm()(x + nn.Dropout(0.2, (1,), deterministic=False)(y)), None


class LinenEncoder(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dropout(0.1)(x, deterministic=False)
    stack = nn.scan(
      nn.remat(LinenBlock),
      variable_axes={"params": 0},
      split_rngs={"params": True, "dropout": True},
      length=LAYERS,
    )
    return stack(name="blocks")(x, None)[0]


LinenEnsemble = nn.vmap(
  LinenEncoder,
  variable_axes={"params": 0},
  split_rngs={"params": True, "dropout": True},
  in_axes=None,
  axis_size=ENSEMBLE,
)


def _linen_run(variables, mutable=False):
  def loss(params):
    out = LinenEnsemble().apply(
      {"params": params}, X, rngs={"dropout": jax.random.key(7)}, mutable=mutable
    )
    y = out[0] if mutable else out
    return jnp.sum(jnp.tanh(y) * jnp.cos(y)), (y, out[1] if mutable else None)

  return jax.value_and_grad(loss, has_aux=True)(variables["params"])


def test_linen_replace_dropout_bit_equal_at_q2_and_records():
  variables = LinenEnsemble().init(jax.random.key(0), X)
  (_, (y0, _)), g0 = _linen_run(variables)
  with so_linen.replace_dropout(q=2.0):
    (_, (y1, _)), g1 = _linen_run(variables)
  np.testing.assert_array_equal(np.asarray(y0), np.asarray(y1))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g0, g1)
  with so_linen.replace_dropout(q=1.5, record_sparsity=True):
    (_, (y2, state)), _ = _linen_run(variables, mutable=["intermediates"])
  assert not np.array_equal(np.asarray(y0), np.asarray(y2))
  # Records of a Dropout call under the context (outside scan, whose collections it declares).
  with so_linen.replace_dropout(q=1.5, record_sparsity=True):
    _, state = nn.Dropout(0.5, deterministic=True).apply({}, X, mutable=["intermediates"])
  np.testing.assert_allclose(
    float(sparsity_records(state)[""]["hoyer"]), float(sparsity_stats(X)["hoyer"]), rtol=1e-6
  )


def test_linen_swapped_layer_draws_dropouts_key():
  class WithDropout(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dropout(0.5, (0,))(nn.Dropout(0.3)(x, False), False)

  class WithSparseout(nn.Module):
    @nn.compact
    def __call__(self, x):
      return so_linen.Sparseout(0.5, (0,))(so_linen.Sparseout(0.3)(x, False), False)

  rngs = {"dropout": jax.random.key(3)}
  a = WithDropout().apply({}, X, rngs=rngs)
  b = WithSparseout().apply({}, X, rngs=rngs)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_linen_records_inside_nn_scan_need_intermediates_in_variable_axes():
  """README: with "intermediates" in the scan's variable_axes, one record per layer, averaged."""

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      x = nn.Dense(8)(x)
      return so_linen.Sparseout(0.3, q=1.5, record_sparsity=True)(x, deterministic=False), None

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      scan = nn.scan(
        Block,
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        length=3,
      )
      return scan()(x, None)[0]

  x = jax.random.normal(jax.random.key(0), (4, 8))
  model = Stack()
  variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)
  _, state = model.apply(
    variables, x, rngs={"dropout": jax.random.key(3)}, mutable=["intermediates"]
  )
  (stacked,) = state["intermediates"]["ScanBlock_0"]["Dropout_0"]["sparsity"]
  assert stacked["hoyer"].shape == (3,)  # one record per scanned layer
  assert len(set(np.asarray(stacked["hoyer"]).tolist())) == 3
  ((path, record),) = sparsity_records(state).items()
  assert path == "ScanBlock_0/Dropout_0"
  np.testing.assert_allclose(record["hoyer"], np.mean(stacked["hoyer"]), rtol=1e-6)
