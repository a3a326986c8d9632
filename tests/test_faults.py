"""Bad files and bad numbers: clear errors naming the file and what is wrong, nothing else lost.

In-process tests cover every way a checkpoint can be damaged (truncated data file, flipped bytes,
broken metadata JSON, missing item). The slow ones run the autoencoder's real command line and check
what a user sees: one ``error:`` line naming the file or field, exit status 1, no traceback; a
non-finite loss stops naming the step and the last good checkpoint (which stays as it was), and the
skip flag counts the skipped steps in the metrics.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from train.common import checkpoint, errors, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(REPO, "data", "mnist", "t10k-images-idx3-ubyte.gz")
TINY = [
  "--config.hidden=16",
  "--config.batch_size=800",  # 10 steps per epoch on the 8,000 shipped training images
  "--config.train_eval_size=800",
  "--config.eval_batch_size=1000",
  "--config.progress=False",
]


# ----------------------------------------------------------------------------- in-process


def _biggest_state_file(step_dir: str) -> str:
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  return max(files, key=os.path.getsize)


def _truncate(step_dir: str) -> None:
  f = _biggest_state_file(step_dir)
  with open(f, "r+b") as fh:
    fh.truncate(os.path.getsize(f) // 2)


def _flip_bytes(step_dir: str) -> None:
  f = _biggest_state_file(step_dir)
  b = bytearray(open(f, "rb").read())
  for i in range(len(b) // 2, len(b) // 2 + 64):
    b[i] ^= 0xFF
  open(f, "wb").write(bytes(b))


def _break_meta(step_dir: str) -> None:
  with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
    f.write('{"epoch": 1, "hist')


def _drop_state(step_dir: str) -> None:
  shutil.rmtree(os.path.join(step_dir, "state"))


@pytest.mark.parametrize(
  "damage, reason",
  [
    (_truncate, "cannot restore"),
    (_flip_bytes, "does not match the sha256"),  # orbax alone restores these as wrong numbers
    (_break_meta, "JSONDecodeError"),
    (_drop_state, "not found"),
  ],
)
def test_damaged_checkpoint_is_named_and_kept(tmp_path, damage, reason) -> None:
  state = {"w": np.arange(20_000, dtype=np.float32).reshape(100, 200), "b": np.ones(3, np.float32)}
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(3, state, meta={"epoch": 1})
  ckpt.close()
  step_dir = str(tmp_path / "3")
  damage(step_dir)
  before = sorted(os.listdir(step_dir))
  with pytest.raises(checkpoint.CheckpointError, match=reason) as e:
    checkpoint.Checkpointer(tmp_path).restore(state)
  assert step_dir in str(e.value)
  assert sorted(os.listdir(step_dir)) == before  # nothing deleted: the user decides


def test_undamaged_checkpoint_passes_the_digest(tmp_path) -> None:
  state = {"w": np.linspace(-1, 1, 600, dtype=np.float32).reshape(20, 30)}
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, state)
  got, meta = ckpt.restore(state)
  np.testing.assert_array_equal(got["w"], state["w"])
  assert meta["state_sha256"] == checkpoint.state_digest(state)
  assert checkpoint.state_digest({"w": state["w"][::-1].copy()}) != meta["state_sha256"]


def test_user_errors_are_told_apart_from_bugs() -> None:
  from train.autoencoder import train

  c = _ae_config(rate=1.5)
  try:
    train.validate_config(c)
  except errors.ConfigError as e:  # raised on purpose by the repository: a one-line message
    assert errors.is_user_error(e) and "config.rate" in str(e)
  try:
    np.zeros(3).reshape(4)
  except ValueError as e:  # raised inside a library: keeps its traceback
    assert not errors.is_user_error(e)
  assert errors.is_user_error(checkpoint.CheckpointError("x"))


def _ae_config(**kw):
  from train.autoencoder.configs import default

  c = default.get_config()
  for k, v in kw.items():
    c[k] = v
  return c


# ----------------------------------------------------------------------------- command line


def _env() -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env.pop("SPARSEOUT_TRACEBACK", None)
  return env


def _cmd(workdir: str, *args: str, module: str = "train.autoencoder.main") -> list[str]:
  tiny = TINY if module == "train.autoencoder.main" else []
  return [sys.executable, "-m", module, f"--workdir={workdir}", *tiny, *args]


def _run(
  workdir: str, *args: str, module: str = "train.autoencoder.main", **kwargs
) -> subprocess.CompletedProcess:
  """The program's command line in a subprocess (``kwargs`` to ``subprocess.run``)."""
  kwargs.setdefault("timeout", 600)
  cmd = _cmd(workdir, *args, module=module)
  return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, **kwargs)


def _assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
  assert p.returncode == 1, (p.returncode, p.stderr[-3000:])
  assert "Traceback" not in p.stderr, p.stderr[-3000:]
  line = [x for x in p.stderr.splitlines() if x.startswith("error: ")]
  assert line, p.stderr[-3000:]
  for n in needles:
    assert n in line[0], (n, line[0])


def _tree_sha(folder: str) -> dict[str, str]:
  out = {}
  for r, _, fs in os.walk(folder):
    for f in fs:
      p = os.path.join(r, f)
      out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> str:
  """A workdir with one finished epoch (checkpoint at step 10), trained by the real command."""
  workdir = str(tmp_path_factory.mktemp("ae") / "run")
  p = _run(workdir, "--config.num_epochs=1")
  assert p.returncode == 0, p.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
  return workdir


def _copy(src: str, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


@pytest.mark.slow
def test_cli_bad_config_value_and_file(tmp_path) -> None:
  _assert_clean_error(_run(str(tmp_path / "a"), "--config.rate=1.5"), "config.rate", "[0, 1)")
  bad = tmp_path / "bad_config.py"
  bad.write_text("import ml_collections\ndef get_config(:\n")
  p = _run(str(tmp_path / "b"), f"--config={bad}")
  assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
  assert str(bad) in p.stderr, p.stderr[-3000:]


@pytest.mark.slow
def test_cli_damaged_data_file(tmp_path) -> None:
  data = tmp_path / "mnist"
  data.mkdir()
  raw = gzip.open(MNIST).read()
  with gzip.open(data / "train-images-idx3-ubyte.gz", "wb") as f:
    f.write(raw[: len(raw) // 2])  # a download cut short
  shutil.copy(MNIST, data / "t10k-images-idx3-ubyte.gz")
  p = _run(str(tmp_path / "w"), "--config.data_source=idx", f"--config.data_dir={data}")
  _assert_clean_error(p, str(data / "train-images-idx3-ubyte.gz"), "damaged")


@pytest.mark.slow
def test_cli_corrupted_checkpoint(one_epoch, tmp_path) -> None:
  workdir = _copy(one_epoch, tmp_path / "run")
  step_dir = os.path.join(workdir, "checkpoints", "10")
  _flip_bytes(step_dir)
  before = _tree_sha(workdir + "/checkpoints")
  p = _run(workdir, "--config.num_epochs=2")
  _assert_clean_error(p, step_dir, "corrupted")
  assert _tree_sha(workdir + "/checkpoints") == before  # nothing written, nothing deleted


@pytest.mark.slow
def test_cli_nonfinite_loss_stops_or_skips(one_epoch, tmp_path) -> None:
  # lr = inf: step 11 (from the finite checkpoint) is finite but leaves inf/nan parameters, so
  # step 12 is the first non-finite step.
  workdir = _copy(one_epoch, tmp_path / "stop")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  before = _tree_sha(ckpt_dir)
  p = _run(workdir, "--config.num_epochs=3", "--config.learning_rate=inf")
  _assert_clean_error(p, "step 12", "non-finite", os.path.join(ckpt_dir, "10"))
  assert _tree_sha(ckpt_dir) == before  # the last good checkpoint is untouched, none added

  workdir = _copy(one_epoch, tmp_path / "skip")
  p = _run(
    workdir, "--config.num_epochs=3", "--config.learning_rate=inf", "--config.skip_nonfinite=True"
  )
  assert p.returncode == 0, p.stderr[-3000:]
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  skipped = [r["epoch/skipped_steps"] for r in rows if "eval/loss" in r]
  assert skipped == [0, 0, 9, 19]  # epochs 0, 1 | 2 (11 ok), 3


def _truncated_checkpoint(one_epoch, tmp_path) -> tuple[str, str]:
  workdir = _copy(one_epoch, tmp_path / "run")
  step_dir = os.path.join(workdir, "checkpoints", "10")
  _truncate(step_dir)
  return workdir, step_dir


@pytest.mark.slow
def test_cli_truncated_checkpoint_exits_cleanly(one_epoch, tmp_path) -> None:
  # orbax closes its event loop while tensorstore still completes reads: their late callbacks
  # used to print 'RuntimeError: Event loop is closed' tracebacks beside the error line.
  workdir, step_dir = _truncated_checkpoint(one_epoch, tmp_path)
  for _ in range(2):  # it happened in about half the runs
    p = _run(workdir, "--config.num_epochs=2")
    _assert_clean_error(p, step_dir, "cannot restore")
    assert "Event loop" not in p.stderr and len(p.stderr.splitlines()) <= 3, p.stderr[-3000:]


def _start(workdir: str, *args: str) -> subprocess.Popen:
  return subprocess.Popen(
    _cmd(workdir, *args), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )


def _wait_for(path: str, proc: subprocess.Popen, timeout: float = 300) -> None:
  t0 = time.monotonic()
  while not os.path.exists(path):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.monotonic() - t0 < timeout
    time.sleep(0.05)


@pytest.mark.slow
def test_cli_one_writer_and_a_launch_after_sigkill(tmp_path) -> None:
  """Two launches at once: the second refuses, naming the first; after SIGKILL of the holder the
  same command proceeds, and the log holds every row once."""
  workdir = str(tmp_path / "run")
  first = _start(workdir, "--config.num_epochs=3")
  _wait_for(os.path.join(workdir, ".lock"), first)
  second = _run(workdir, "--config.num_epochs=3")
  _assert_clean_error(second, f"workdir {workdir} is in use", f"pid {first.pid} on host")
  _wait_for(os.path.join(workdir, "checkpoints", "10"), first)  # killed after a checkpoint
  first.kill()  # SIGKILL: the lock stays behind, its holder dead
  first.wait()
  assert os.path.exists(os.path.join(workdir, ".lock"))
  third = _run(workdir, "--config.num_epochs=3")
  assert third.returncode == 0, third.stderr[-3000:]
  assert not os.path.exists(os.path.join(workdir, ".lock"))  # released at the end
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r["step"] for r in rows if "eval/loss" in r]
  assert evals == [0, 10, 20, 30]  # each evaluation once: nothing doubled, nothing missing
  assert len(rows) == len({(r["step"], "eval/loss" in r) for r in rows})


def _limited(limit_bytes: int):
  def preexec() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

  return preexec


@pytest.mark.slow
@pytest.mark.parametrize("what", ["checkpoint", "metrics"])
def test_cli_out_of_space_is_one_line_and_resumable(one_epoch, tmp_path, what) -> None:
  """A file-size limit (writes fail with EFBIG, as on a full disk): one line naming the workdir,
  the earlier checkpoint untouched, and the same command without the limit finishes."""
  workdir = _copy(one_epoch, tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  before = _tree_sha(ckpt_dir)
  # checkpoint: the state file (~270 kB) hits the limit, metrics and plots (< 60 kB) do not;
  # metrics: the next row of metrics.jsonl does.
  size = os.path.getsize(os.path.join(workdir, "metrics.jsonl"))
  limit = {"checkpoint": 100_000, "metrics": size + 50}[what]
  p = _run(workdir, "--config.num_epochs=2", preexec_fn=_limited(limit))
  _assert_clean_error(p, "out of disk space writing in", workdir, "File too large")
  assert len(p.stderr.splitlines()) <= 3, p.stderr[-3000:]
  assert {k: v for k, v in _tree_sha(ckpt_dir).items() if k.startswith("10/")} == before
  if what == "metrics":
    return  # the same rerun as below (kept to one, for the suite's time)
  again = _run(workdir, "--config.num_epochs=2")
  assert again.returncode == 0, again.stderr[-3000:]
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows if "eval/loss" in r] == [0, 10, 20]


@pytest.mark.slow
def test_cli_damaged_corpus_and_missing_cifar_folder(tmp_path) -> None:
  """The LM on a truncated PTB copy and the WRN on a folder that does not exist: one line each."""
  from data_root import DATA, need

  need("ptb")
  data = tmp_path / "ptb"
  shutil.copytree(DATA / "ptb", data)
  train_txt = data / "ptb.train.txt"
  train_txt.chmod(0o644)
  with open(train_txt, "r+b") as f:
    f.truncate(int(os.path.getsize(train_txt) * 0.6))
  lm = ("--config=train/lm/configs/tiny.py", "--config.max_steps=2", f"--config.data_dir={data}")
  p = _run(str(tmp_path / "lm"), *lm, module="train.lm.main")
  _assert_clean_error(p, str(train_txt), "truncated")
  assert not os.path.exists(tmp_path / "lm" / "metrics.jsonl")
  p = _run(str(tmp_path / "wrn"), f"--config.data_dir={tmp_path / 'nope'}", module="train.wrn.main")
  _assert_clean_error(p, f"--config.data_dir={tmp_path / 'nope'} does not exist")
