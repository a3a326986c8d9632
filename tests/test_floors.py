"""The floors CI step (scripts/floors.sh) installs exactly the lowest versions pyproject.toml
declares, and the install page and CHANGELOG state the same range."""

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
  "floor_requirements", REPO / "scripts/floor_requirements.py"
)
floor_requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floor_requirements)


def test_the_library_floors_are_the_core_requirements_only():
  assert floor_requirements.floor_pins() == [
    "jax==0.8.1",
    "jaxlib==0.8.1",
    "flax==0.12.6",
    "numpy==2.0",
  ]


def test_the_train_extra_runs_at_the_library_floors_and_adds_its_own():
  pins = floor_requirements.floor_pins(("train",))
  names = [pin.split("==")[0] for pin in pins]
  assert len(names) == len(set(names))
  assert pins[:4] == floor_requirements.floor_pins()  # the programs raise no core floor
  assert {"optax", "orbax-checkpoint", "ml_collections", "chex"} <= set(names)


def test_a_requirement_without_a_floor_is_refused(tmp_path):
  toml = tmp_path / "pyproject.toml"
  toml.write_text(
    '[project]\ndependencies = ["jax>=0.7"]\n[project.optional-dependencies]\ntrain = ["optax"]\n'
  )
  assert floor_requirements.floor_pins((), toml) == ["jax==0.7"]
  toml.write_text(toml.read_text().replace('"optax"', '"optax>=0.2", "JAX>=0.10", "jax>=0.9"'))
  assert floor_requirements.floor_pins(("train",), toml) == ["jax==0.10", "optax==0.2"]
  toml.write_text(toml.read_text().replace('"optax>=0.2"', '"optax"'))
  with pytest.raises(ValueError, match="'optax' declares no `>=` floor"):
    floor_requirements.floor_pins(("train",), toml)


def test_install_page_states_the_tested_floors():
  page = (REPO / "docs" / "install.md").read_text()
  for pin in floor_requirements.floor_pins() + floor_requirements.floor_pins(("train",)):
    name, version = pin.split("==")
    assert f"{name} {version}" in page, f"docs/install.md's tested range lacks {name} {version}"
