"""Doctest set-up: the docstring examples of sparseout_jax, models and train see `jax`, `jnp`, `np`.

pytest runs them with the fast suite (`--doctest-modules` over the packages in pyproject.toml).
"""

import pytest

# The programs' entry points define absl flags on import; two in one process collide, and they hold
# no examples (tests run them as subprocesses).
collect_ignore_glob = ["train/*/main.py", "train/autoencoder/sweep.py"]


@pytest.fixture(scope="session", autouse=True)
def _doctest_names(doctest_namespace: dict) -> None:
  # Imported here, not at the top: tests/conftest.py must set XLA_FLAGS before jax starts.
  import jax
  import jax.numpy as jnp
  import numpy as np

  doctest_namespace.update(jax=jax, jnp=jnp, np=np)
