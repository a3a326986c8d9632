"""The release: `python -m build` makes an sdist and a wheel that holds the library and nothing else,
and the wheel installed into a clean virtual environment (no extras) runs the README's quick starts."""

import os
import pathlib
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest

import sparseout_jax

REPO = pathlib.Path(__file__).resolve().parents[1]
VERSION = sparseout_jax.__version__
DIST_INFO = f"sparseout_jax-{VERSION}.dist-info"


def _run(*cmd, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("dist")
  # No argument: the sdist first, then the wheel built from the unpacked sdist (no stale build/).
  _run(sys.executable, "-m", "build", "--outdir", str(out), str(REPO))
  return out


@pytest.mark.slow
def test_wheel_holds_the_library_its_types_and_license_only(dist):
  (wheel,) = dist.glob("*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  modules = {f"sparseout_jax/{p.name}" for p in (REPO / "sparseout_jax").glob("*.py")}
  meta = {f"{DIST_INFO}/{n}" for n in ("METADATA", "WHEEL", "RECORD", "top_level.txt")}
  assert names == modules | meta | {"sparseout_jax/py.typed", f"{DIST_INFO}/licenses/LICENSE"}
  metadata = zipfile.ZipFile(wheel).read(f"{DIST_INFO}/METADATA").decode()
  assert f"\nVersion: {VERSION}\n" in metadata
  assert "\nLicense-Expression: Apache-2.0\n" in metadata
  assert "\nRequires-Python: >=3.11\n" in metadata


@pytest.mark.slow
def test_sdist_holds_the_library_and_no_programs(dist):
  (sdist,) = dist.glob("*.tar.gz")
  top = {n.split("/")[1] for n in tarfile.open(sdist).getnames() if n.count("/") >= 1}
  assert {"sparseout_jax", "LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml"} <= top
  assert not top & {"models", "train", "tests", "benchmarks", "data", "docs", "scripts"}


@pytest.mark.slow
def test_wheel_in_a_clean_venv_runs_the_readme_quick_starts(dist, tmp_path):
  (wheel,) = dist.glob("*.whl")
  venv = tmp_path / "venv"
  _run(sys.executable, "-m", "venv", str(venv))
  py = str(venv / "bin" / "python")
  # optax: the quick start's train step uses it, and says to install it (not a dependency).
  _run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel), "optax")
  blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
  script = tmp_path / "quick_starts.py"
  script.write_text(
    "import sparseout_jax\n"
    "print(sparseout_jax.__file__)\n"
    f"for i, block in enumerate({blocks!r}):\n"
    "  exec(compile(block, f'README block {i}', 'exec'), {})\n"
    "  print('block', i, 'ran')\n"
  )
  # Run outside the checkout, so only the installed wheel can be imported.
  out = _run(py, str(script), cwd=tmp_path).stdout.splitlines()
  assert out[0].startswith(str(venv)), out[0]
  assert [line for line in out if line.startswith("block ")] == [
    f"block {i} ran" for i in range(len(blocks))
  ]
  assert len(blocks) >= 3
  # No extras: the training dependencies stay out.
  listed = _run(py, "-m", "pip", "list", "--format=freeze").stdout.lower()
  assert "ml-collections" not in listed and "tensorboardx" not in listed
