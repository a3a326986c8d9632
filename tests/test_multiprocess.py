"""2 processes x 2 CPU devices (jax.distributed + gloo) train exactly like 1 process x 4 devices.

Each program's tiny config runs a few steps in both topologies on the same global batch, with the
noise on (the masks are drawn for the global batch, so both topologies draw the same ones); the
final checkpoints are compared leaf by leaf. The only arithmetic that may differ between the
topologies is the order in which the cross-device all-reduces (the gradients' sums over the
batch) add the 4 devices' values: XLA's in-process CPU all-reduce and gloo's cross-process one may
group them differently. A
probe measures that order; where both topologies round the probe alike the parameters must be
bit-equal, otherwise they must agree to float32 rounding (``RTOL``/``ATOL`` below) and differ by far
less than training moved them. A last test SIGTERMs one process of a 2-process job and resumes it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from data_root import DATA, need

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "mp_worker.py")
PTB = str(DATA / "ptb")
PROGRAMS = ("autoencoder", "lm", "wrn")
# A few float32 ulps of the gradients' all-reduce, carried through <= 5 optimizer steps (Adam divides
# by sqrt(v), so a 1-ulp change in a gradient moves an update by ~1 ulp of lr; SGD likewise). The LM
# steps at lr 30 through an LSTM: an ulp of its updates is ~30x larger (measured 2.4e-6 on a 0.09 bias).
RTOL = 1e-5
ATOL = {"autoencoder": 1e-6, "wrn": 1e-6, "lm": 1e-5}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env.update(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    TQDM_DISABLE="1",
    PYTHONPATH=REPO,
  )
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(k, None)
  env.update(extra)
  return env


def _launch(root: str, programs: str, devices: int, **extra: str) -> subprocess.Popen:
  log = open(os.path.join(root + ".log." + extra.get("JAX_PROCESS_ID", "single")), "w")
  return subprocess.Popen(
    [sys.executable, WORKER, root, programs],
    cwd=REPO,
    env=_env(devices, **extra),
    stdout=log,
    stderr=subprocess.STDOUT,
  )


def _wait(procs: list[subprocess.Popen], logs: list[str], timeout: float = 900) -> None:
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, f"worker exit {p.returncode}:\n" + open(log).read()[-4000:]


def _latest(directory: str) -> tuple[int, dict, dict]:
  """(step, state, meta) of the newest checkpoint in ``directory``, as numpy, without a target tree."""
  with ocp.CheckpointManager(directory, item_names=("state", "meta")) as m:
    step = m.latest_step()
    # Read onto this process's first device: the arrays were written from another topology's.
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    r = m.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=one), meta=ocp.args.JsonRestore()
      ),
    )
  return step, jax.tree.map(np.asarray, r.state), dict(r.meta)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
  """Run every ready program in 1 x 4 and 2 x 2 (the three jobs at once); return their roots."""
  base = tmp_path_factory.mktemp("mp")
  programs = ",".join(p for p in PROGRAMS if p != "lm" or os.path.isdir(PTB))
  one, two = str(base / "one"), str(base / "two")
  port = _free_port()
  coord = dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2")
  procs = [
    _launch(one, programs, 4),
    _launch(two, programs, 2, JAX_PROCESS_ID="0", **coord),
    _launch(two, programs, 2, JAX_PROCESS_ID="1", **coord),
  ]
  _wait(procs, [one + ".log.single", two + ".log.0", two + ".log.1"])
  return {"one": one, "two": two, "programs": programs}


def _probe(root: str) -> list[float]:
  with open(os.path.join(root, "probe.json")) as f:
    return json.load(f)["psum"]


def _initial(program: str):
  """The program's freshly initialised parameters (to check training moved them)."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  import importlib

  from mp_worker import tiny_config

  c = tiny_config(program)
  train = importlib.import_module(f"train.{program}.train")
  from flax import nnx

  if program == "autoencoder":
    _, params, _ = nnx.split(train.build_model(c), nnx.Param, ...)
  elif program == "lm":
    _, params = nnx.split(train.build_model(c, 10_000))
  else:
    _, params, _ = nnx.split(train.build_model(c, 10), nnx.Param, nnx.BatchStat)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(params))


@pytest.mark.slow
@pytest.mark.parametrize("program", PROGRAMS)
def test_two_processes_train_like_one(runs, program) -> None:
  if program not in runs["programs"].split(","):
    need("ptb")  # the one program left out is the LM, for want of PTB
  bit_equal = _probe(runs["one"]) == _probe(runs["two"])
  s1, state1, meta1 = _latest(os.path.join(runs["one"], program, "checkpoints"))
  s2, state2, meta2 = _latest(os.path.join(runs["two"], program, "checkpoints"))
  assert s1 == s2 and s1 > 0
  for k in ("epoch", "step_in_epoch", "window", "step", "skipped_steps"):
    assert meta1.get(k) == meta2.get(k), k
  worst = 0.0
  for (path, a), (_, b) in zip(
    jax.tree.leaves_with_path(state1), jax.tree.leaves_with_path(state2), strict=True
  ):
    where = f"{program}{jax.tree_util.keystr(path)}"
    if bit_equal or not np.issubdtype(a.dtype, np.floating):
      np.testing.assert_array_equal(a, b, err_msg=where)
    else:
      np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL[program], err_msg=where)
      worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
  # The comparison means something only if training moved the parameters far more than the tolerance.
  moved = max(
    float(np.max(np.abs(np.asarray(a) - b)))
    for a, b in zip(
      jax.tree.leaves(_initial(program)), jax.tree.leaves(state1["params"]), strict=True
    )
  )
  assert moved > 100 * ATOL[program], moved
  print(f"{program}: probe bit-equal={bit_equal}, max |1x4 - 2x2| = {worst:.3g}, moved {moved:.3g}")


def test_all_reduce_probe_values() -> None:
  """The probe's two possible answers really differ in float32 (so it can tell the orders apart)."""
  p = np.asarray([1.0, 2.0**-24, 2.0**-24, 2.0**-24], np.float32)
  left = ((p[0] + p[1]) + p[2]) + p[3]
  pairs = (p[0] + p[1]) + (p[2] + p[3])
  assert left == np.float32(1.0) and pairs == np.float32(1.0 + 2.0**-23)


def test_process_pieces_are_the_one_process_batch_in_order() -> None:
  """Process p's piece is slice p of the 1-process batch, element for element (so device d of the
  job gets the same examples in 1 x 4 and 2 x 2), and likewise WRN's augmented images."""
  from train.common import data
  from train.wrn import input_pipeline as wrn_ip

  arrays = {"x": np.arange(103)}
  for step, one in enumerate(
    data.iterate_epoch(arrays, 12, 7, 3, process_index=0, process_count=1)
  ):
    pieces = [
      list(data.iterate_epoch(arrays, 12, 7, 3, process_index=p, process_count=2))[step]["x"]
      for p in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate(pieces), one["x"])
  ds = wrn_ip.synthetic(40, 10, seed=0)
  one = list(wrn_ip.train_batches(ds, global_batch=8, seed=1, epoch=2))
  two = [
    list(wrn_ip.train_batches(ds, global_batch=8, seed=1, epoch=2, host_id=h, num_hosts=2))
    for h in (0, 1)
  ]
  for b in range(len(one)):
    for k in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([two[0][b][k], two[1][b][k]]), one[b][k])


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_and_they_resume(tmp_path) -> None:
  """SIGTERM to process 1 only: both agree to stop after the same step, process 0 checkpoints
  through orbax's multi-process save and prints the resume line, both exit 0; started again, the
  pair finishes the run bit-equal to a pair never interrupted."""
  args = [
    "--config.hidden=16",
    "--config.batch_size=800",
    "--config.num_epochs=4",
    "--config.train_eval_size=800",
    "--config.eval_batch_size=1000",
    "--config.progress=False",
  ]
  cut, ref = str(tmp_path / "cut"), str(tmp_path / "ref")

  def pair(workdir: str) -> list[subprocess.Popen]:
    coord = dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
    cmd = [sys.executable, "-m", "train.autoencoder.main", f"--workdir={workdir}", *args]
    return [
      subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(2, JAX_PROCESS_ID=str(i), **coord),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      for i in (0, 1)
    ]

  def steps() -> list[int]:
    d = os.path.join(cut, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []

  def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    return [o for o, _ in outs]

  reference = pair(ref)
  procs = pair(cut)
  t0 = time.time()
  while not steps():
    assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs]
    assert time.time() - t0 < 600, "no checkpoint"
    time.sleep(0.05)
  time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  out0 = finish(procs, 300)[0]
  m = re.search(r"Stopped by \S+ after step (\d+); checkpoint: (\S+)", out0)
  assert m and "resume with:" in out0, out0[-2000:]
  stopped = int(m.group(1))
  assert stopped in steps() and stopped < 40, (stopped, steps())

  finish(pair(cut))
  finish(reference)
  s_cut, state_cut, meta_cut = _latest(os.path.join(cut, "checkpoints"))
  s_ref, state_ref, meta_ref = _latest(os.path.join(ref, "checkpoints"))
  assert s_cut == s_ref == 40
  for a, b in zip(jax.tree.leaves(state_ref), jax.tree.leaves(state_cut), strict=True):
    np.testing.assert_array_equal(a, b)
  assert meta_cut["history"] == meta_ref["history"]
  print(f"SIGTERM to process 1 of 2: both stopped after step {stopped}; resumed bit-equal")
