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

import contextlib
import errno
import logging
import os
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any

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


class OutOfSpaceError(UserError, OSError):
  """A write failed for lack of space (disk full, quota, file-size limit); the message says where."""


_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# Libraries that write from C++ (orbax's tensorstore) report the OS error as text only.
_SPACE_TEXT = ("No space left on device", "File too large", "Disk quota exceeded")


def out_of_space(exc: BaseException) -> str | None:
  """The OS's reason if ``exc``, or an error it was raised from or while handling, is a write that
  failed for lack of space (ENOSPC, EDQUOT, or EFBIG from a file-size limit); otherwise None.

  Args:
    exc: an exception.

  Returns:
    e.g. ``"File too large: '/w/metrics.jsonl'"``, or None.

  Example:
    >>> import errno
    >>> from train.common import errors
    >>> errors.out_of_space(OSError(errno.ENOSPC, "No space left on device", "/w/x"))
    "No space left on device: '/w/x'"
    >>> errors.out_of_space(ValueError("a bug")) is None
    True
  """
  stack, seen = [exc], set()
  while stack:
    e = stack.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
      return e.strerror + (f": {e.filename!r}" if e.filename else "")
    for text in _SPACE_TEXT:
      if text in str(e):
        return text
    stack.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
  return None


@contextlib.contextmanager
def reporting_full_disk(workdir: str) -> Iterator[None]:
  """Turn a write that fails for lack of space inside the block into an :class:`OutOfSpaceError`.

  The message says so and where (``workdir``), and that the checkpoints already written are intact
  (a checkpoint is written aside and renamed into place), so the same command resumes.

  Example:
    >>> import errno
    >>> from train.common import errors
    >>> try:
    ...   with errors.reporting_full_disk("/w"):
    ...     raise OSError(errno.EFBIG, "File too large")
    ... except errors.OutOfSpaceError as e:
    ...   str(e).startswith("out of disk space writing in /w (File too large)")
    True
  """
  try:
    yield
  except Exception as e:
    reason = out_of_space(e)
    if reason is None:
      raise
    raise OutOfSpaceError(
      f"out of disk space writing in {os.path.abspath(workdir)} ({reason}). The checkpoints "
      "already there are intact: free space (or raise the file-size limit) and run the same "
      "command again to resume."
    ) from None


def one_line(exc: BaseException, limit: int = 400) -> str:
  """``exc`` and the errors it was raised from, as one line: each one's type and first line.

  Library errors can span dozens of lines (orbax appends a whole TensorStore spec); the cause at
  the end of the chain usually says what is wrong with the file.

  Example:
    >>> from train.common import errors
    >>> try:
    ...   try:
    ...     raise ValueError("byte range [5, 9) is not valid\\nfor size 4")
    ...   except ValueError as inner:
    ...     raise RuntimeError("cannot read array. Details:\\n{spec}") from inner
    ... except RuntimeError as e:
    ...   errors.one_line(e)
    'RuntimeError: cannot read array. Details: <- ValueError: byte range [5, 9) is not valid'
  """
  parts, seen, e = [], set(), exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    first = (str(e).splitlines() or [""])[0]
    first = first.split(" See full TensorStore details")[0]  # the rest is the store's spec
    parts.append(f"{type(e).__name__}: {first}".strip())
    e = e.__cause__ or e.__context__
  text = " <- ".join(parts)
  return text if len(text) <= limit else text[: limit - 4] + " ..."


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


def is_late_callback(exc: BaseException | None, tb: types.TracebackType | None) -> bool:
  """True for ``RuntimeError: Event loop is closed`` raised inside asyncio (a callback too late).

  When orbax's restore fails on one read (a damaged checkpoint), it closes its asyncio loop while
  tensorstore still completes the other reads; their callbacks find the loop closed and are
  reported as unraisable errors, one traceback each. They are noise beside the real error.
  """
  return (
    isinstance(exc, RuntimeError)
    and str(exc) == "Event loop is closed"
    and _innermost_file(tb).endswith(os.path.join("asyncio", "base_events.py"))
  )


_reported = [False]  # an error: line was printed: the process is ending on it


def _unraisable_hook(args: Any) -> None:
  # After the error line, what is left is libraries' clean-up failing as the interpreter ends
  # (e.g. orbax's unfinished write coroutines after a failed save): noise, the error is reported.
  quiet = _reported[0] or is_late_callback(args.exc_value, args.exc_traceback)
  if quiet and not os.environ.get("SPARSEOUT_TRACEBACK"):
    return
  sys.__unraisablehook__(args)


def _hook(
  exc_type: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
  if os.environ.get("SPARSEOUT_TRACEBACK") or not is_user_error(exc):
    traceback.print_exception(exc_type, exc, tb)
    return
  _reported[0] = True
  if isinstance(exc, SyntaxError):
    text = (exc.text or "").strip()
    print(f"error: {exc.filename}, line {exc.lineno}: {exc.msg}: {text}", file=sys.stderr)
  else:
    print(f"error: {exc}", file=sys.stderr, flush=True)
  print("(set SPARSEOUT_TRACEBACK=1 to see the traceback)", file=sys.stderr, flush=True)


class _QuietOutOfSpace(logging.Filter):
  """Drops library log records (with tracebacks) about a write that failed for lack of space.

  Orbax's writer threads log such a failure at ERROR before it reaches the program, which then
  reports it in one line (:func:`reporting_full_disk`).
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if os.environ.get("SPARSEOUT_TRACEBACK"):
      return True
    text = record.getMessage()
    return not any(t in text for t in _SPACE_TEXT)


def install() -> None:
  """Make uncaught input errors print ``error: <message>`` (exit status 1) instead of a traceback."""
  sys.excepthook = _hook
  sys.unraisablehook = _unraisable_hook
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _QuietOutOfSpace) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietOutOfSpace())
