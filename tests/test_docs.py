"""The manual (docs/): the API reference documents every public name once, the guides' examples run,
every quoted figure equals its results file, and the examples use no injected name."""

import pathlib
import re

import pytest

import sparseout_jax
import sparseout_jax.linen
import sparseout_jax.nnx

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = DOCS / "api"
DIRECTIVE = re.compile(r"^\.\. auto(?:function|class|data|module)::\s+(\S+)", flags=re.M)
GUIDES = sorted((DOCS / "guides").glob("*.md"))
GUIDE_BLOCKS = [
  (page, i, block)
  for page in GUIDES
  for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
]
# <!-- figure: FILE | ROW | COLUMN --> after a quoted number: FILE is a Markdown table in the repo,
# ROW the text of its first cell, COLUMN a header; the cell (without its significance star) must
# appear on the marker's line.
FIGURE = re.compile(r"^(.*?)<!-- figure: (\S+) \| (.+?) \| (.+?) -->", flags=re.M)
# The pages this project writes about itself speak of the product, not of how it was made.
OWN_PAGES = [REPO / "README.md", DOCS / "index.md", DOCS / "install.md", DOCS / "data.md", *GUIDES]
OWN_PAGES.append(DOCS / "autoencoder" / "INVESTIGATION.md")


def _public_names() -> list[str]:
  return [
    f"{module.__name__}.{name}"
    for module in (sparseout_jax, sparseout_jax.nnx, sparseout_jax.linen)
    for name in module.__all__
  ]


def _documented_names() -> list[str]:
  return [
    name for page in sorted(PAGES.glob("*.rst")) for name in DIRECTIVE.findall(page.read_text())
  ]


def test_every_public_name_has_exactly_one_entry():
  documented = _documented_names()
  missing = sorted(set(_public_names()) - set(documented))
  assert not missing, f"add these to a page in docs/api/: {missing}"
  assert sorted(documented) == sorted(set(documented)), "a name is documented twice"


def test_every_entry_is_a_public_name():
  assert sorted(set(_documented_names()) - set(_public_names())) == []


def test_every_api_page_is_in_the_table_of_contents():
  index = (PAGES / "index.rst").read_text()
  for page in PAGES.glob("*.rst"):
    assert page.name == "index.rst" or re.search(rf"^\s+{page.stem}$", index, flags=re.M), page.name


def test_docstring_examples_get_no_injected_names():
  # Every example imports what it uses (run as pasted into a fresh interpreter): no conftest
  # fills the doctest namespace.
  for conftest in [REPO / "conftest.py", *REPO.glob("tests/conftest.py")]:
    assert "doctest_namespace" not in conftest.read_text(), conftest


@pytest.mark.parametrize(
  ("page", "i", "block"), GUIDE_BLOCKS, ids=[f"{p.stem}-{i}" for p, i, _ in GUIDE_BLOCKS]
)
def test_guide_example_runs(page, i, block):
  assert block.lstrip().startswith(("import", "from")), f"{page.name} block {i} imports nothing"
  exec(compile(block, f"{page.name} block {i}", "exec"), {})


def _table_cell(path: pathlib.Path, row: str, column: str) -> str:
  lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  for line in lines[2:]:
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    if cells[0] == row:
      return cells[header.index(column)].rstrip("*")
  raise AssertionError(f"no row {row!r} in {path}")


def _figures():
  pages = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
  return [(page, *m.groups()) for page in pages for m in FIGURE.finditer(page.read_text())]


def test_readme_quotes_its_figures_from_files():
  assert sum(page.name == "README.md" for page, *_ in _figures()) >= 2


@pytest.mark.parametrize(("page", "line", "source", "row", "column"), _figures())
def test_quoted_figure_equals_its_results_file(page, line, source, row, column):
  cell = _table_cell(REPO / source, row, column)
  assert cell in line, f"{page.name} quotes {line.strip()!r}; {source} [{row}, {column}] is {cell}"


@pytest.mark.parametrize("page", OWN_PAGES, ids=lambda p: p.name)
def test_page_speaks_of_the_product(page):
  text = page.read_text()
  for pattern in [r"\bissue\b", r"this CPU", r"\b[0-9a-f]{7,40}\b commit", r"commit [0-9a-f]{7}"]:
    assert not re.search(pattern, text), f"{page.name}: {pattern}"


def test_citation_matches_the_version():
  cff = (REPO / "CITATION.cff").read_text()
  assert f"version: {sparseout_jax.__version__}\n" in cff
  assert 'title: "Sparseout: Controlling Sparsity in Deep Networks"' in cff


def _conf():
  import importlib.util

  spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_reference_shows_the_layers_real_signatures():
  conf = _conf()
  nnx_sig, _ = conf._nnx_class_signature(
    None, "class", "", sparseout_jax.nnx.Sparseout, {}, "(*args, **kwargs)", None
  )
  assert nnx_sig.startswith("(rate, q=2.0, *, broadcast_dims=()") and "rngs=None" in nnx_sig
  linen_sig = (
    "(rate, broadcast_dims=(), *, q=2.0, parent=<flax.linen.module._Sentinel object>, name=None)"
  )
  assert conf._drop_linen_parent(None, "class", "", None, {}, linen_sig, None) == (
    "(rate, broadcast_dims=(), *, q=2.0, name=None)",
    None,
  )


def test_a_constant_does_not_show_its_types_docstring():
  conf = _conf()
  lines = float.__doc__.splitlines()
  conf._drop_builtin_docstring(None, "data", "", sparseout_jax.ABS_FLOOR, {}, lines)
  assert lines == []
