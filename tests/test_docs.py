"""The API reference documents every public name of sparseout_jax, .nnx and .linen, once."""

import pathlib
import re

import sparseout_jax
import sparseout_jax.linen
import sparseout_jax.nnx

PAGES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api"
DIRECTIVE = re.compile(r"^\.\. auto(?:function|class|data|module)::\s+(\S+)", flags=re.M)


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


def test_every_page_is_in_the_table_of_contents():
  index = (PAGES / "index.rst").read_text()
  for page in PAGES.glob("*.rst"):
    assert page.name == "index.rst" or re.search(rf"^\s+{page.stem}$", index, flags=re.M), page.name
