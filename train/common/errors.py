"""Clear command-line errors: a failure about the user's input prints one message, not a traceback.

The programs raise the explicit types below for what the user can fix: :class:`ConfigError` (a bad
config value), :class:`DataError` (a data file missing or damaged), and, defined beside the code
that raises them, :class:`~train.common.checkpoint.CheckpointError` and
:class:`~train.common.guard.NonFiniteError`; all derive from :class:`UserError`. :func:`install`
sets ``sys.excepthook`` so that an uncaught :class:`UserError`, or a config file that
``ml_collections`` cannot load or that has a ``SyntaxError``, prints ``error: <message>`` on stderr
and exits with status 1. Anything else (a bug, an error from deep inside a library) keeps Python's
full traceback. ``SPARSEOUT_TRACEBACK=1`` in the environment always shows the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
import types

_CONFIG_FLAGS = os.path.join("ml_collections", "config_flags", "config_flags.py")


class UserError(Exception):
  """An error whose message is the whole report: bad input, damaged files, a run that diverged."""


class ConfigError(UserError, ValueError):
  """A config value outside its allowed range (the message names the field and the range)."""


class DataError(UserError, FileNotFoundError, ValueError):
  """A data file is missing, damaged, or not what was expected (the message names the file).

  Also a ``ValueError``: the readers raised that for a malformed file before, and callers catching
  it still do.
  """


def _innermost_file(tb: types.TracebackType | None) -> str:
  last = None
  while tb is not None:
    last, tb = tb, tb.tb_next
  return "" if last is None else os.path.abspath(last.tb_frame.f_code.co_filename)


def is_user_error(exc: BaseException) -> bool:
  """True if ``exc`` reports bad input (config, data or checkpoint) rather than a bug.

  Args:
    exc: the uncaught exception.

  Returns:
    Whether a one-line message (no traceback) is the right report.

  Example:
    >>> is_user_error(ConfigError("config.rate must be in [0, 1), got 1.5"))
    True
    >>> is_user_error(ValueError("a bug"))
    False
  """
  if isinstance(exc, UserError):
    return True
  if isinstance(exc, SyntaxError):  # e.g. in a config file: file, line and text say it all
    return bool(exc.filename) and not exc.filename.startswith("<")
  # ml_collections reports a config file it could not load (missing, failing) as an OSError.
  return isinstance(exc, OSError) and _innermost_file(exc.__traceback__).endswith(_CONFIG_FLAGS)


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
