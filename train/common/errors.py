"""Clear command-line errors: a failure about the user's input prints one message, not a traceback.

:func:`install` sets ``sys.excepthook`` so that an uncaught exception that is "about the input"
prints ``error: <message>`` on stderr and exits with status 1. Such an exception is either one of the
toolkit's own (:class:`~train.common.checkpoint.CheckpointError`,
:class:`~train.common.guard.NonFiniteError`), or a ``ValueError``/``OSError``/``RuntimeError`` raised
on purpose by this repository's code (its innermost frame is a ``raise`` statement in a file of the
repository, not a library call): a bad config value, a missing or damaged data file; or a config
file that ``ml_collections`` cannot load or that has a ``SyntaxError``. Anything else (a bug, an
error from deep inside a library) keeps Python's full traceback. ``SPARSEOUT_TRACEBACK=1`` in the
environment always shows the traceback.
"""

from __future__ import annotations

import linecache
import os
import sys
import traceback
import types

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ON_PURPOSE = (ValueError, OSError, RuntimeError, FloatingPointError)
_CONFIG_FLAGS = os.path.join("ml_collections", "config_flags", "config_flags.py")


def _innermost(tb: types.TracebackType | None) -> types.TracebackType | None:
  last = None
  while tb is not None:
    last, tb = tb, tb.tb_next
  return last


def _innermost_file(tb: types.TracebackType | None) -> str:
  last = _innermost(tb)
  return "" if last is None else os.path.abspath(last.tb_frame.f_code.co_filename)


def _raised_in_repo(tb: types.TracebackType | None) -> bool:
  """The innermost frame is a ``raise`` statement in a repository file (not a library call there)."""
  last, path = _innermost(tb), _innermost_file(tb)
  if last is None or not path.startswith(_REPO + os.sep) or "site-packages" in path:
    return False
  return linecache.getline(path, last.tb_lineno).lstrip().startswith("raise")


def is_user_error(exc: BaseException) -> bool:
  """True if ``exc`` reports bad input (config, data or checkpoint) rather than a bug.

  Args:
    exc: the uncaught exception.

  Returns:
    Whether a one-line message (no traceback) is the right report.
  """
  from train.common import checkpoint, guard

  if isinstance(exc, (checkpoint.CheckpointError, guard.NonFiniteError)):
    return True
  if isinstance(exc, SyntaxError):  # e.g. in a config file: file, line and text say it all
    return bool(exc.filename) and not exc.filename.startswith("<")
  if isinstance(exc, OSError) and _innermost_file(exc.__traceback__).endswith(_CONFIG_FLAGS):
    return True  # ml_collections reports a config file it could not load (missing, failing)
  return isinstance(exc, _ON_PURPOSE) and _raised_in_repo(exc.__traceback__)


def _hook(
  exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
  if os.environ.get("SPARSEOUT_TRACEBACK") or not is_user_error(exc):
    traceback.print_exception(exc_type, exc, tb)
    return
  if isinstance(exc, SyntaxError):
    text = (exc.text or "").strip()
    print(f"error: {exc.filename}, line {exc.lineno}: {exc.msg}: {text}", file=sys.stderr)
  else:
    print(f"error: {exc}", file=sys.stderr, flush=True)
  print("(set SPARSEOUT_TRACEBACK=1 to see the traceback)", file=sys.stderr, flush=True)


def install() -> None:
  """Make uncaught input errors print ``error: <message>`` (exit status 1) instead of a traceback."""
  sys.excepthook = _hook
