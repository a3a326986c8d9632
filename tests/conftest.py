"""Test set-up: 8 CPU devices for the multi-device tests (set before JAX initialises its backend),
and a skip for a float16 case that fails only because this CPU's XLA cannot convert to float16."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools
import pathlib

import pytest
from data_root import need


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The benchmark data folder (``SPARSEOUT_DATA``, else ``../shared/data``); skips if absent."""
  return need("ptb").parent


@functools.cache
def _float16_compiles() -> bool:
  """Whether XLA's CPU backend here converts float32 to float16 in a compiled program.

  Without F16C (e.g. ``XLA_FLAGS=--xla_cpu_max_isa=SSE4_2``) it fails to link ``__truncsfhf2``
  with an INTERNAL error for any float16 program: a limit of the backend, not of the library.
  """
  import jax
  import jax.numpy as jnp

  try:
    jax.jit(lambda x: (x * 3).astype(jnp.float16))(jnp.ones(4)).block_until_ready()
  except jax.errors.JaxRuntimeError:
    return False
  return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  # Only that backend failure becomes a skip, only where the probe fails too: everywhere else a
  # float16 case runs and must pass.
  report = yield
  e = call.excinfo
  if (
    report.failed
    and e is not None
    and "Failed to materialize symbols" in str(e.value)
    and not _float16_compiles()
  ):
    report.outcome = "skipped"
    report.longrepr = (
      str(item.path),
      item.location[1],
      "this CPU's XLA cannot compile float16 (no F16C)",
    )
  return report
