"""The README is a front page that runs: its Python blocks run as written, in the order a user reads."""

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
SECTIONS = [
  "Install",
  "Quick start",
  "API",
  "Choosing q and the backward rule",
  "Sparseout in an existing model",
  "The two commands",
  "Training on one device or many",
  "What the experiments show",
  "Documentation",
]


def test_sections_in_reading_order():
  assert re.findall(r"^## (.+)$", README, flags=re.M) == SECTIONS


def test_the_two_commands():
  commands = re.findall(r"^(bash scripts/\S+)", README, flags=re.M)
  assert commands == ["bash scripts/figure1.sh", "bash scripts/test.sh"]


def test_no_block_leans_on_another():
  # Each block is whole: it imports what it uses, so it runs pasted alone.
  assert len(BLOCKS) == 3
  for block in BLOCKS:
    assert block.lstrip().startswith(("import", "from")), block[:60]


def _run(i, capsys) -> tuple[dict, str]:
  namespace: dict = {}
  exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), namespace)
  return namespace, capsys.readouterr().out


def test_quick_start_train_step_learns(capsys):
  namespace, out = _run(0, capsys)
  losses = namespace["losses"]
  # 20 Adam steps on one batch of 32: the loss must fall by far more than the noise of the masks.
  assert losses[-1] < 0.5 * losses[0]
  assert namespace["model"].sparseout.deterministic is True  # model.eval() switched it off
  assert out.startswith("loss ")


def test_function_block_prints_a_hoyer_sparsity(capsys):
  _, out = _run(1, capsys)
  assert 0.0 <= float(out.strip().splitlines()[-1]) <= 1.0


def test_replace_dropout_block_replaces_one_layer(capsys):
  namespace, out = _run(2, capsys)
  assert out.strip() == "1"
  assert type(namespace["model"].layers[2]).__name__ == "Sparseout"


@pytest.mark.parametrize(
  "phrase", ["this CPU", "this machine", "issue", "was not installed in this run"]
)
def test_front_page_speaks_of_the_product(phrase):
  assert phrase not in README
