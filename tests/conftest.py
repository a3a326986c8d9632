"""Test set-up: 8 CPU devices for the pmap tests (set before JAX initialises its backend)."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The benchmark data folder beside the checkout (`../shared/data`)."""
  if not SHARED_DATA.is_dir():
    pytest.fail(f"expected the shared data at {SHARED_DATA} (CI has ../shared beside the checkout)")
  return SHARED_DATA
