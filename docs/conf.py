"""Sphinx configuration of the manual (docs/): `bash scripts/docs.sh` builds it into build/docs/html/.

The guides and result pages are Markdown (myst-parser); the API reference is docs/api/*.rst.
"""

import inspect
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
  "myst_parser",  # the Markdown pages
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3  # links such as speed.md#gpu reach the section
myst_enable_extensions = ["dollarmath"]
autodoc_default_options = {"members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"  # hints under Args, the signature stays short
autodoc_typehints_description_target = "documented_params"  # not Linen's parent and name
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "sphinx_book_theme"  # the theme of the Flax and Optax docs
html_title = f"sparseout-jax {release}"
html_theme_options = {"show_toc_level": 2}
# The tables under results/ are data the result pages show and link to, not pages of their own.
exclude_patterns = ["_build", "results/*/*.md"]
# The result pages skip heading levels in places (a table under an H3 of an H1 page); that is style,
# not a broken page, so it does not fail the build.
suppress_warnings = ["myst.header"]


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


# Every Linen module takes Flax's `parent` (default: an internal sentinel object); it is not part of
# a layer's interface, so the signature on the page leaves it out.
_PARENT = re.compile(r",\s*parent=<[^>]*>")


def _drop_linen_parent(app, what, name, obj, options, signature, return_annotation):
  if signature and "parent=" in signature:
    return _PARENT.sub("", signature), return_annotation
  return None


# NNX modules are built by a metaclass whose __call__ takes (*args, **kwargs); show __init__'s
# parameters instead (their types are listed under Args, as for every function).
def _nnx_class_signature(app, what, name, obj, options, signature, return_annotation):
  if what != "class" or signature != "(*args, **kwargs)":
    return None
  params = list(inspect.signature(obj.__init__).parameters.values())[1:]  # without self
  bare = [param.replace(annotation=inspect.Parameter.empty) for param in params]
  return str(inspect.Signature(bare)), return_annotation


# A number's docstring is its type's ("Convert a string or number to a floating point number"):
# a constant is described by its directive's own text, not by float's.
def _drop_builtin_docstring(app, what, name, obj, options, lines: list[str]) -> None:
  if what == "data" and type(obj) in (int, float, str, bool) and obj.__doc__ == type(obj).__doc__:
    inherited = [line.strip() for line in (type(obj).__doc__ or "").splitlines() if line.strip()]
    if [line.strip() for line in lines if line.strip()][: len(inherited)] == inherited:
      del lines[:]


def setup(app):
  app.connect("autodoc-process-docstring", _drop_builtin_docstring)
  app.connect("autodoc-process-signature", _nnx_class_signature)
  app.connect("autodoc-process-docstring", _escape_bars)
  app.connect("autodoc-process-signature", _drop_linen_parent)
