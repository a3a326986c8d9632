"""Test set-up: 8 CPU devices for the pmap tests (set before JAX initialises its backend)."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest
from data_root import need


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The benchmark data folder (``SPARSEOUT_DATA``, else ``../shared/data``); skips if absent."""
  return need("ptb").parent
