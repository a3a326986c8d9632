"""The README's Python quick-start blocks run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_three_quick_starts():
  assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, capsys):
  namespace: dict = {}
  exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), namespace)
  if "hoyer_sparsity" in BLOCKS[i]:
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= printed <= 1.0
  if "model.eval()" in BLOCKS[i]:
    assert namespace["model"].sparseout.deterministic is True
    assert float(namespace["loss"]) > 0
