"""One writer per workdir: a second holder is refused by name, a dead holder's lock is taken over.

The in-process tests cover every staleness rule (dead pid, reused pid, another host's heartbeat) and
launches racing for one stale lock; one command-line test checks what a user sees when the workdir
is taken: one ``error:`` line naming the holder, exit status 1, nothing written. The slow test in
tests/test_faults.py runs two real trainings at once and a launch after SIGKILL of the holder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from train.common import errors, lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(workdir, holder: lock.Holder, age_s: float = 0.0) -> str:
  path = os.path.join(workdir, lock.LOCK_NAME)
  with open(path, "w") as f:
    json.dump(dataclasses.asdict(holder), f)
  t = time.time() - age_s
  os.utime(path, (t, t))
  return path


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_second_holder_is_refused_naming_the_first(tmp_path) -> None:
  with lock.hold(str(tmp_path)) as held:
    assert os.path.isfile(held.path)
    with pytest.raises(lock.LockError) as e:
      lock.WorkdirLock(str(tmp_path)).acquire()
    msg = str(e.value)
    me = held.holder
    assert f"pid {os.getpid()} on host {me.host}, since " in msg and " UTC" in msg
    assert str(tmp_path) in msg and "\n" not in msg
    assert errors.is_user_error(e.value)
  assert not os.path.exists(held.path)  # released


def test_released_when_the_block_raises(tmp_path) -> None:
  with pytest.raises(ZeroDivisionError), lock.hold(str(tmp_path)):
    1 / 0  # noqa: B018
  assert os.listdir(tmp_path) == []
  with lock.hold(str(tmp_path)):  # free again
    pass


def test_dead_or_reused_pid_is_stale_and_taken_over(tmp_path) -> None:
  me = lock.me()
  dead = dataclasses.replace(me, pid=_dead_pid(), start=None, token="dead")
  assert "not running" in lock.stale_reason(dead, age_s=0.0)
  _write(tmp_path, dead)
  with lock.hold(str(tmp_path)) as held:
    assert held.holder.pid == os.getpid()
  # Our own pid, but a process that started at another time: the pid was reused.
  reused = dataclasses.replace(me, start=(me.start or 0) + 1, token="reused")
  if me.start is not None:
    assert "another process" in lock.stale_reason(reused, age_s=0.0)
  rebooted = dataclasses.replace(me, boot_id="another-boot", token="rebooted")
  if me.boot_id:
    assert "restarted" in lock.stale_reason(rebooted, age_s=0.0)


def test_other_host_is_stale_only_without_heartbeat(tmp_path) -> None:
  other = dataclasses.replace(lock.me(), host="elsewhere", pid=1, token="other")
  _write(tmp_path, other, age_s=5.0)
  with pytest.raises(lock.LockError, match="host elsewhere.*last heartbeat 5 s ago"):
    lock.WorkdirLock(str(tmp_path), stale_after_s=60.0).acquire()
  _write(tmp_path, other, age_s=61.0)
  with lock.hold(str(tmp_path), heartbeat_s=1.0, stale_after_s=60.0) as held:
    assert held.holder.host != "elsewhere"


def test_holder_heartbeat_touches_the_lock(tmp_path) -> None:
  with lock.hold(str(tmp_path), heartbeat_s=0.05, stale_after_s=1.0) as held:
    t = time.time() - 100
    os.utime(held.path, (t, t))
    time.sleep(0.5)
    assert time.time() - os.stat(held.path).st_mtime < 5  # touched again


RACER = """
import sys, time
from train.common import lock
try:
  with lock.hold(sys.argv[1]):
    print("got", flush=True)
    time.sleep(1.0)
except lock.LockError:
  print("refused", flush=True)
"""


def test_racing_launches_take_a_stale_lock_once(tmp_path) -> None:
  _write(tmp_path, dataclasses.replace(lock.me(), pid=_dead_pid(), start=None, token="dead"))
  env = dict(os.environ, PYTHONPATH=REPO)
  racers = [
    subprocess.Popen(
      [sys.executable, "-c", RACER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    for _ in range(6)
  ]
  outs = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
  assert outs == ["got"] + ["refused"] * 5, outs
  assert os.listdir(tmp_path) == []  # the winner released it; no stale copies left behind


@pytest.mark.parametrize(
  "command",
  ["train.autoencoder.main", "train.autoencoder.sweep", "train.lm.study", "train.wrn.study"],
)
def test_cli_refuses_a_taken_workdir_in_one_line(tmp_path, command) -> None:
  """A second launch on a workdir held by a running process stops before writing anything:
  the programs, the Figure 1 sweep and the studies alike."""
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    me = lock.me()
    live = dataclasses.replace(
      me, pid=holder.pid, start=lock._start_ticks(holder.pid), token="live"
    )
    _write(tmp_path, live)
    before = sorted(os.listdir(tmp_path))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("SPARSEOUT_TRACEBACK", None)
    cmd = [sys.executable, "-m", command, f"--workdir={tmp_path}"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [x for x in p.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and f"pid {holder.pid} on host {me.host}" in lines[0], p.stderr
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The holder is dead now: the same lock is stale and the next launch would take it.
  assert "not running" in lock.stale_reason(live, age_s=0.0)


def test_break_removes_only_the_stale_lock_it_read(tmp_path) -> None:
  """A launch that read a stale lock must not remove the lock another launch took meanwhile."""
  me = lock.me()
  fresh = _write(tmp_path, dataclasses.replace(me, token="fresh"))
  stale = dataclasses.replace(me, pid=_dead_pid(), token="dead")
  assert lock._break(fresh, stale) and os.path.exists(fresh)
  _write(tmp_path, stale)
  assert lock._break(fresh, stale) and not os.path.exists(fresh)
  guard = _write(
    tmp_path, me
  )  # another launch is breaking (its guard is fresh): wait, touch nothing
  os.rename(guard, guard + ".break")
  _write(tmp_path, stale)
  assert not lock._break(fresh, stale) and os.path.exists(fresh)


def test_unwritable_workdir_is_one_line(tmp_path) -> None:
  (tmp_path / "file").write_text("")  # a workdir under a file cannot be made (even by root)
  with pytest.raises(lock.LockError, match="cannot write the lock file .*file/run/.lock: "):
    lock.WorkdirLock(str(tmp_path / "file" / "run")).acquire()


def test_another_pid_namespace_counts_as_another_host() -> None:
  """A container on this host sees other pids: its holder's liveness is judged by the heartbeat."""
  other = dataclasses.replace(lock.me(), pid=_dead_pid(), pid_ns="pid:[1]", token="container")
  assert lock.stale_reason(other, age_s=5.0, stale_after_s=60.0) is None
  assert "no heartbeat" in lock.stale_reason(other, age_s=61.0, stale_after_s=60.0)
