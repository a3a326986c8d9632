"""One writer per workdir: a lock file that a second launch on the same workdir refuses to pass.

Two processes training into one workdir (a second launch of the same command, a scheduler's retry)
would both append to ``metrics.jsonl`` and race on the checkpoints. :func:`hold` takes
``<workdir>/.lock`` before anything is written and removes it on every exit Python sees (normal end,
an error, SIGTERM/SIGINT through the preemption handler). A process killed outright (SIGKILL, a
crashed host) cannot remove it, so a lock is *stale*, and is taken over, when its holder is dead:

- same host (the same boot and pid namespace): the holder's pid is gone, or now belongs to a process
  that started later (a reused pid);
- same host name but another boot: the machine restarted since;
- another host sharing the workdir (a network file system), or another container of this one: the
  holder touches the lock file every ``heartbeat_s`` seconds (default 30); a lock not touched for
  ``stale_after_s`` seconds (default 300) is stale.
  This assumes the hosts' clocks agree to well within that time, and that a living holder is never
  paused for that long (a suspended job on another host would lose its lock).

The lock file is created whole and atomically (written aside, then hard-linked into place, which
fails if the name exists, also on NFS); a stale one is removed only under a second, short-lived
guard file taken the same way, after reading it again, so two launches that find the same stale
lock cannot both take it. In a multi-process job only process
0 takes the lock, for the whole job (:func:`hold_for_job`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from train.common import errors

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class LockError(errors.UserError, RuntimeError):
  """The workdir is in use by another running process (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock: host, pid, boot and process start (to tell a reused pid), since when, token."""

  host: str
  pid: int
  since: float
  boot_id: str = ""
  start: int | None = None  # the process's start time in clock ticks after boot (Linux)
  token: str = ""
  pid_ns: str = ""  # containers on one host share its boot but not their pids (Linux)

  def describe(self) -> str:
    """``'pid 123 on host h, since 2026-12-03 09:41:07 UTC'``."""
    when = datetime.datetime.fromtimestamp(self.since, datetime.UTC)
    return f"pid {self.pid} on host {self.host}, since {when:%Y-%m-%d %H:%M:%S} UTC"


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return ""


def _pid_namespace() -> str:
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return ""


def _start_ticks(pid: int) -> int | None:
  """Field 22 of ``/proc/<pid>/stat`` (start time after boot), None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  return int(stat[stat.rindex(")") + 2 :].split()[19])


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def me() -> Holder:
  """This process as a :class:`Holder` (a fresh token each call)."""
  pid = os.getpid()
  return Holder(
    socket.gethostname(),
    pid,
    time.time(),
    _boot_id(),
    _start_ticks(pid),
    uuid.uuid4().hex,
    _pid_namespace(),
  )


def stale_reason(holder: Holder, age_s: float, stale_after_s: float = STALE_AFTER_S) -> str | None:
  """Why ``holder``'s lock is stale (its process is dead), or None if it may be running.

  Args:
    holder: the lock's holder.
    age_s: seconds since the lock file was last touched (its heartbeat).
    stale_after_s: heartbeat age after which a holder on another host counts as dead.

  Returns:
    A short reason, or None.

  Example:
    >>> from train.common import lock
    >>> lock.stale_reason(lock.me(), age_s=0.0) is None  # this process is alive
    True
  """
  here = me()
  same_pids = holder.boot_id == here.boot_id and holder.pid_ns == here.pid_ns
  if holder.host == here.host and same_pids:
    if not _alive(holder.pid):
      return f"pid {holder.pid} is not running"
    start = _start_ticks(holder.pid)
    if holder.start is not None and start is not None and start != holder.start:
      return f"pid {holder.pid} is now another process"
    return None
  if holder.host == here.host and holder.boot_id and here.boot_id != holder.boot_id:
    return "the host restarted since"
  if age_s > stale_after_s:
    return f"no heartbeat for {age_s:.0f} s (> {stale_after_s:.0f} s)"
  return None


def _read(path: str) -> tuple[Holder, float] | None:
  """The holder and the heartbeat age of the lock at ``path``; None if there is no lock."""
  try:
    with open(path) as f:
      text = f.read()
    age = time.time() - os.stat(path).st_mtime
  except FileNotFoundError:
    return None
  try:
    return Holder(**json.loads(text)), age
  except (ValueError, TypeError):  # not written by this module: keep it, name it
    return Holder(host="?", pid=-1, since=time.time() - age, token="?"), age


def _create(path: str, holder: Holder) -> bool:
  """Atomically create ``path`` holding ``holder``; False if it exists."""
  aside = f"{path}.{holder.token}"
  with open(aside, "w") as f:
    json.dump(dataclasses.asdict(holder), f)
    f.flush()
    os.fsync(f.fileno())
  try:
    os.link(aside, path)  # fails if path exists: the atomic step (NFS too)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(aside)


def _break(path: str, stale: Holder) -> bool:
  """Remove ``stale``'s lock at ``path``; False if another launch is breaking it at this moment.

  Breakers take ``<path>.break`` first (atomically, like the lock), so only one re-reads the lock
  and removes it, and only if it still is ``stale``'s: a lock another launch has just taken is
  never removed. A break guard left by a launch that died while breaking is stale after 10 s.
  """
  guard = path + ".break"
  if not _create(guard, me()):
    found = _read(guard)
    if found is not None and stale_reason(found[0], found[1], stale_after_s=10.0) is not None:
      with contextlib.suppress(FileNotFoundError):
        os.remove(guard)
    return False
  try:
    found = _read(path)
    if found is not None and found[0].token == stale.token:
      os.remove(path)
  finally:
    os.remove(guard)
  return True


class WorkdirLock:
  """The lock of one workdir, held by this process between :meth:`acquire` and :meth:`release`.

  Args:
    workdir: the run's output folder (created if missing).
    heartbeat_s: seconds between touches of the lock file.
    stale_after_s: a lock untouched this long, held from another host, is taken over.
  """

  def __init__(
    self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S
  ):
    if not 0 < heartbeat_s < stale_after_s:
      raise ValueError(
        f"need 0 < heartbeat_s < stale_after_s, got {heartbeat_s} and {stale_after_s}"
      )
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
    self.holder: Holder | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> None:
    """Take the lock, taking over a stale one.

    Raises:
      LockError: a running process holds it (the message names host, pid and since when), or the
        lock file cannot be written (a read-only folder, a full disk).
    """
    try:
      self._acquire()
    except OSError as e:
      raise LockError(f"cannot write the lock file {self.path}: {e.strerror}") from None

  def _acquire(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    holder = me()
    for _ in range(100):  # each pass takes the lock, refuses, or clears (or waits out) a stale one
      if _create(self.path, holder):
        self.holder = holder
        self._start_heartbeat()
        return
      found = _read(self.path)
      if found is None:
        continue
      other, age = found
      if stale_reason(other, age, self.stale_after_s) is None:
        beat = "" if other.host == holder.host else f"; last heartbeat {age:.0f} s ago"
        raise LockError(
          f"workdir {self.workdir} is in use by another run: {other.describe()}{beat} "
          f"(lock {self.path}). Wait for it to end, or use another --workdir."
        )
      if not _break(self.path, other):
        time.sleep(0.01)  # another launch is clearing it: look again
    raise LockError(f"could not take the lock {self.path}: other launches keep taking it")

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      with contextlib.suppress(OSError):  # a full disk must not kill the run here
        os.utime(self.path)

  def release(self) -> None:
    """Stop the heartbeat and remove the lock file if it is still this process's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    found = _read(self.path)
    if self.holder is not None and found is not None and found[0].token == self.holder.token:
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
    self.holder = None


@contextlib.contextmanager
def hold(workdir: str, **kwargs: float) -> Iterator[WorkdirLock]:
  """Hold ``workdir``'s lock for the block (released on any exit of the block).

  Args:
    workdir: the run's output folder.
    **kwargs: ``heartbeat_s``, ``stale_after_s`` of :class:`WorkdirLock`.

  Raises:
    LockError: another running process holds it.

  Example:
    >>> import os, tempfile
    >>> from train.common import lock
    >>> with tempfile.TemporaryDirectory() as d, lock.hold(d) as held:
    ...   held.holder.pid == os.getpid()
    True
  """
  held = WorkdirLock(workdir, **kwargs)
  held.acquire()
  try:
    yield held
  finally:
    held.release()


@contextlib.contextmanager
def hold_for_job(workdir: str, process_index: int, process_count: int) -> Iterator[None]:
  """Process 0 holds ``workdir``'s lock for the whole job; every process learns whether it got it.

  Args:
    workdir: the job's output folder.
    process_index: this process (``jax.process_index()``).
    process_count: processes in the job.

  Raises:
    LockError: on every process, when process 0 could not take the lock.
  """
  held, error = None, None
  if process_index == 0:
    held = WorkdirLock(workdir)
    try:
      held.acquire()
    except LockError as e:
      error = e
  if process_count > 1:  # the others must not train (and wait forever on process 0) alone
    import numpy as np
    from jax.experimental import multihost_utils

    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = LockError(f"workdir {workdir} is in use by another run (process 0 has the details)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if held is not None:
      held.release()
