"""Bad input raises an error that names the argument and the allowed range."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import sparseout_jax.linen as so_linen
import sparseout_jax.nnx as so_nnx
from sparseout_jax import bridgeout_dense, embedding_sparseout, hoyer_sparsity, sparseout

K = jax.random.key(0)
X = jnp.ones((3, 4))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf")])
def test_rate_out_of_range(p):
  with pytest.raises(ValueError, match=r"`p` is the drop probability and must lie in \[0, 1\]"):
    sparseout(K, X, p, 1.5)
  with pytest.raises(ValueError, match=r"`rate`.*\[0, 1\]"):
    so_nnx.Sparseout(p, 1.5)
  with pytest.raises(ValueError, match=r"`rate`.*\[0, 1\]"):
    so_linen.Sparseout(p, q=1.5)


@pytest.mark.parametrize("q", [0.0, -1.0, float("nan"), float("inf")])
def test_q_not_positive_or_not_finite(q):
  with pytest.raises(ValueError, match=r"`q` .* must be finite and > 0"):
    sparseout(K, X, 0.5, q)
  with pytest.raises(ValueError, match=r"`q`"):
    so_nnx.Sparseout(0.5, q)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_non_float_input(dtype):
  with pytest.raises(TypeError, match=r"`x` must have a floating dtype.*got"):
    sparseout(K, jnp.ones(3, dtype), 0.5, 1.5)


@pytest.mark.parametrize("dims", [(2,), (-3,), (0, 5)])
def test_broadcast_dim_out_of_range(dims):
  with pytest.raises(ValueError, match=r"`broadcast_dims` entry -?\d+ is out of range .* rank 2"):
    sparseout(K, X, 0.5, 1.5, broadcast_dims=dims)


def test_unknown_gradient_and_residual():
  with pytest.raises(ValueError, match=r"`gradient` must be one of \('exact', 'reference'\)"):
    sparseout(K, X, 0.5, 1.5, gradient="straight-through")
  with pytest.raises(ValueError, match=r"`residual` must be one of"):
    sparseout(K, X, 0.5, 1.5, residual="noise")
  with pytest.raises(ValueError, match=r"`gradient`"):
    so_linen.Sparseout(0.5, q=1.5, gradient="nope")


@pytest.mark.parametrize("name", ["p", "q"])
def test_traced_p_or_q_must_be_a_real_scalar(name):
  def f(v):
    args = {"p": 0.5, "q": 1.5, name: v}
    return sparseout(K, X, args["p"], args["q"])

  with pytest.raises(TypeError, match=rf"`{name}` must be a real scalar, got a traced value"):
    jax.jit(f)(jnp.ones(2))
  # A concrete array scalar outside jit takes the static path.
  np.testing.assert_array_equal(
    f(jnp.float32(0.25 if name == "p" else 1.5)), f(0.25 if name == "p" else 1.5)
  )


@pytest.mark.parametrize("bad", [3, np.uint32(7), jnp.zeros(3, jnp.uint32), jnp.zeros(2)])
def test_bad_key_names_rng(bad):
  with pytest.raises(TypeError, match=r"`rng` must be a PRNG key"):
    sparseout(bad, X, 0.5, 1.5)
  with pytest.raises(ValueError, match=r"`rng` must be a single PRNG key"):
    sparseout(jax.random.split(K, 2), X, 0.5, 1.5)


def test_embedding_checks_q_even_at_p_zero():
  with pytest.raises(ValueError, match=r"`q`"):
    embedding_sparseout(K, jnp.ones((5, 2)), jnp.arange(3), 0.0, -1.0)


def test_nnx_no_deterministic_message_gives_the_view_hint():
  layer = so_nnx.Sparseout(0.5, 1.5, deterministic=None, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"nnx\.view\(model, deterministic=True/False\)"):
    layer(X)


def test_layer_misuse_messages():
  with pytest.raises(ValueError, match="no `rngs` argument was provided to Sparseout"):
    so_nnx.Sparseout(0.5, 1.5)(X)
  with pytest.raises(Exception, match="deterministic"):
    so_linen.Sparseout(0.5, q=1.5).apply({}, X)
  assert nn.Dropout  # the Linen error is Flax's own merge_param message
  with pytest.raises(TypeError, match="rngs must be"):
    so_nnx.Sparseout(0.5, 1.5, rngs=3)
  with pytest.raises(TypeError, match="rngs must be"):
    so_nnx.Sparseout(0.5, 1.5)(X, rngs="key")
  assert isinstance(so_nnx.Sparseout(0.5, rngs=nnx.Rngs(0)), nnx.Dropout)


def test_variant_and_metric_errors():
  with pytest.raises(TypeError, match="`ids` must be integer"):
    embedding_sparseout(K, jnp.ones((5, 2)), jnp.ones(3), 0.1, 1.5)
  with pytest.raises(ValueError, match="`table` must be a"):
    embedding_sparseout(K, jnp.ones(5), jnp.ones(3, jnp.int32), 0.1, 1.5)
  with pytest.raises(ValueError, match=r"`x` must be \(batch, in\)"):
    bridgeout_dense(K, jnp.ones((2, 3)), jnp.ones((4, 5)), 0.5, 1.5)
  with pytest.raises(ValueError, match="length >= 2"):
    hoyer_sparsity(jnp.ones((4, 1)))


# The training programs' command line (train/common/cli.py): one `error:` line for bad flags.
AE_DEFAULT = "train/autoencoder/configs/default.py"


@pytest.mark.parametrize(
  ("argv", "expected"),
  [
    (
      ["--config.rat=0.3"],
      r"^error: --config\.rat: no such field in .*; did you mean --config\.rate\?$",
    ),
    (["--config.nonexistent=1"], r"^error: --config\.nonexistent: no such field in .*default\.py"),
    (["--config", "/no/such.py"], r"^error: --config: no config file at /no/such\.py \(expected"),
    (["--config=/no/such.py"], r"^error: --config: no config file at /no/such\.py"),
  ],
)
def test_cli_bad_config_is_one_error_line(argv, expected):
  from train.common import cli

  message = cli.config_error(["--workdir", "/tmp/w", *argv], AE_DEFAULT)
  assert "\n" not in message
  assert re.match(expected, message), message


def test_cli_good_overrides_pass():
  from train.common import cli

  argv = ["--config.q=1.0", "--config.model.hidden=8"]
  assert cli._config_argv(argv) == (None, ["q", "model.hidden"])
  assert cli.config_error(["--config.q=1.0", "--config.rate=0.3"], AE_DEFAULT) is None


def test_program_from_another_directory_finds_its_default_config(tmp_path):
  # The default config path is resolved from the package, not the working directory; a typo in a
  # field then exits non-zero with the one line (the program never starts training).
  repo = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, "PYTHONPATH": str(repo), "JAX_PLATFORMS": "cpu"}
  cmd = [
    sys.executable,
    "-m",
    "train.autoencoder.main",
    "--workdir",
    str(tmp_path),
    "--config.rat=1",
  ]
  out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert out.stderr.strip().splitlines() == [
    f"error: --config.rat: no such field in {repo / AE_DEFAULT}; did you mean --config.rate?"
  ]
