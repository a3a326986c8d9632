"""Sphinx configuration of the API reference: `bash scripts/docs.sh` builds it into build/docs/."""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # document the checkout, installed or not

import sparseout_jax  # noqa: E402

project = "sparseout-jax"
author = "sparseout-jax authors"
copyright = "2026, sparseout-jax authors"
release = version = sparseout_jax.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",  # Google-style Args / Returns / Example sections
  "sphinx.ext.mathjax",  # the `.. math::` blocks of the docstrings
  "sphinx.ext.viewcode",
]
autodoc_default_options = {"members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"  # hints under Args, the signature stays short
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "sphinx_book_theme"  # the theme of the Flax and Optax docs
html_title = f"sparseout-jax {release}"
html_theme_options = {"show_toc_level": 2}
exclude_patterns = ["_build"]


# A docstring's plain-text formula such as |x|**(q/2) reads as an RST substitution |x|; escape
# its bars, except in math blocks, doctest blocks and backtick spans, so `help()` text and the
# pages show the same formula.
_SPAN_OR_BAR = re.compile(r"``.*?``|`[^`]*`|\|")


def _escape_bars(app, what, name, obj, options, lines: list[str]) -> None:
  block_indent = None  # indent of the `.. math::` line, or -1 inside a doctest block
  for i, line in enumerate(lines):
    stripped = line.lstrip()
    indent = len(line) - len(stripped)
    if block_indent == -1 and not stripped:
      block_indent = None
    elif block_indent is not None and block_indent >= 0 and stripped and indent <= block_indent:
      block_indent = None
    if block_indent is not None:
      continue
    if stripped.startswith(".. math::"):
      block_indent = indent
    elif stripped.startswith(">>>"):
      block_indent = -1
    else:
      lines[i] = _SPAN_OR_BAR.sub(lambda m: "\\|" if m[0] == "|" else m[0], line)


def setup(app):
  app.connect("autodoc-process-docstring", _escape_bars)
