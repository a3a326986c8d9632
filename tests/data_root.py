"""Where the tests find the benchmark data (PTB, WikiText-2, full MNIST): one setting.

``SPARSEOUT_DATA`` names the folder holding ``ptb/``, ``wikitext-2/`` and ``mnist/``; without it,
``../shared/data`` beside the checkout. A test that needs a missing folder skips with one line that
says what is missing and how to get it, except in CI (``CI`` set), where missing data fails.
"""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("SPARSEOUT_DATA") or REPO.parent / "shared" / "data")


def need(name: str) -> pathlib.Path:
  """``DATA / name`` if it is a folder; otherwise skip (fail in CI) with one line saying why."""
  path = DATA / name
  if not path.is_dir():
    message = (
      f"no {name} data at {path}: set SPARSEOUT_DATA to the folder holding {name}/ "
      "(docs/data.md says how to get it)"
    )
    if os.environ.get("CI"):
      pytest.fail(message)  # CI must run every test: missing data is a failure there
    pytest.skip(message)
  return path
