"""The GPU table in one run: the op's bandwidth, WRN-28-10 images/s, AWD-LSTM tokens/s, train-step memory.

Needs only jax, flax and optax (and this repository). Five tables, each written as soon as it is done
(``gpu_suite.sh`` runs each part in its own process, under one deadline):

- ``gpu_op.md``: forward + backward (y and dx of one jitted call) of Sparseout (q = 1.5, 2.5), Flax
  Dropout and the identity, float32 and bfloat16, 1M to 256M elements; achieved bandwidth = minimal
  bytes (x and the cotangent read, y and dx written: 4 n itemsize) over time, against a
  device-to-device copy (2 n itemsize) timed in the same run.
- ``gpu_wrn.md``: WRN-28-10 train step at batch 128, bfloat16 and float32: images/s, ms/step,
  Sparseout / dropout (median of paired rounds, 95 % bootstrap CI), XLA's FLOPs per image and the
  achieved TFLOP/s.
- ``gpu_lstm.md``: AWD-LSTM (PTB size) train step at 20 x 70, scan backend (float32, bfloat16):
  tokens/s, Sparseout / dropout.
- ``gpu_lstm_cudnn.md``: the same on the cuDNN backend (float32), and the cuDNN path checked against
  the scan path on the same weights (logits and gradients, at matmul precision "highest").
- ``gpu_memory.md``: ``memory_analysis()`` of the same compiled steps (temp and argument bytes).

Every step is compiled once (ahead of time) and that executable is both measured and timed. A time
budget (``--budget_s`` or ``--deadline``) skips what would not fit, and says so in the tables.

  bash benchmarks/gpu_suite.sh                 # on the GPU machine: writes benchmarks/results/gpu_*.md
  bash benchmarks/gpu_suite.sh --smoke         # CPU, tiny sizes, cuDNN replaced by jax's reference LSTM
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from benchmarks import _steps, _timing, memory, report
from sparseout_jax import core, sparseout

RATE = 0.5  # the op table's drop probability (the README's CPU table uses the same)

FULL = {
  "op_sizes": [1 << k for k in range(20, 29, 2)],  # 1M, 4M, 16M, 64M, 256M elements
  "wrn": dict(depth=28, width=10, batch=128),
  "lstm": dict(vocab=10000, emb=400, hidden=1150, layers=3, batch=20, bptt=70),
  "rounds": 7,
  "target_s": 0.2,
  "est_s": {"lstm": 60, "wrn": 180},  # compile + timing of one group on an H100, a guess
}
SMOKE = {
  "op_sizes": [1 << 12, 1 << 14],
  "wrn": dict(depth=10, width=1, batch=4),
  "lstm": dict(vocab=50, emb=8, hidden=16, layers=2, batch=2, bptt=5),
  "rounds": 3,
  "target_s": 0.01,
  "est_s": {"lstm": 5, "wrn": 5},
  # The smoke run checks the code path, not every variant: without "sparseout_keep".
  "wrn_noises": ("none", "dropout", "sparseout", "sparseout_remat"),
}
DTYPES = ("float32", "bfloat16")


class Budget:
  """Wall-clock budget to a deadline: ``left()`` seconds remain; ``skip(need)``: ``need`` won't fit."""

  def __init__(self, deadline: float) -> None:
    self.deadline = deadline  # time.time() seconds

  def left(self) -> float:
    return self.deadline - time.time()

  def skip(self, need: float) -> bool:
    return self.left() < need


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- op


def op_functions() -> dict:
  """name -> jitted f(key, x, w) returning (y, dx = vjp(w)); plus "copy": f(key, x, w) = copy of x."""
  drop = nn.Dropout(RATE, deterministic=False)

  return {
    "identity": _timing.jitted_vjp(lambda k, x: x),
    "dropout": _timing.jitted_vjp(lambda k, x: drop.apply({}, x, rng=k)),
    "sparseout_q1.5": _timing.jitted_vjp(lambda k, x: sparseout(k, x, RATE, 1.5)),
    "sparseout_q2.5": _timing.jitted_vjp(lambda k, x: sparseout(k, x, RATE, 2.5)),
    # The CPU's formulation (an optimization barrier between forward and recomputation), forced
    # on this device: what the per-platform choice gains here.
    "sparseout_q1.5_barrier": _timing.jitted_vjp(lambda k, x: _barrier_op(k, x, 1.5)),
    "copy": jax.jit(lambda k, x, w: jnp.copy(x)),
  }


def _barrier_op(key: jax.Array, x: jax.Array, q: float) -> jax.Array:
  """sparseout(key, x, RATE, q) with the CPU's rematerialisation (barrier) on any platform."""
  mask = core.draw_mask(key, 1.0 - RATE, x, x.shape)
  return core._rematerialised(True, "mask", RATE, q, x.shape, True)(x, mask, 0.0, 0.0)


def op_table(sizes: list[int], rounds: int, target_s: float, budget: Budget) -> list[dict]:
  """Time every op function per (dtype, size); rows with ms, ratios to dropout and GB/s."""
  rows = []
  for dtype in DTYPES:
    fns = op_functions()
    for n in sizes:
      if budget.skip(30):
        rows.append({"dtype": dtype, "elements": n, "skipped": "time budget"})
        continue
      x = jax.random.normal(jax.random.key(0), (n // 1024, 1024), jnp.float32).astype(dtype)
      w = jax.random.normal(jax.random.key(1), x.shape, jnp.float32).astype(dtype)
      key = jax.random.key(2)
      runners = {k: _pipelined(f, key, x, w) for k, f in fns.items()}
      for run in runners.values():
        run(2)  # compile, warm
      units = {k: _timing.calibrate(run, target_s) for k, run in runners.items()}
      samples = _timing.alternating_rounds(runners, rounds, units)
      med = _timing.medians(samples)
      item = jnp.dtype(dtype).itemsize
      row = {"dtype": dtype, "elements": n, "ms": {k: m["wall"] * 1e3 for k, m in med.items()}}
      row["gbps"] = {k: (2 if k == "copy" else 4) * n * item / med[k]["wall"] / 1e9 for k in med}
      row["vs_dropout"] = {
        k: _timing.paired_ratio(samples, k, "dropout")["wall"] for k in med if k != "copy"
      }
      rows.append(row)
      del x, w
      log(f"op {dtype} {n:,}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in row["ms"].items()))
  return rows


def _pipelined(f, *args) -> _timing.Runner:
  """``run(n)``: n calls dispatched back to back, then one wait (the device never idles between)."""

  def run(n: int) -> None:
    for _ in range(n):
      out = f(*args)
    jax.block_until_ready(out)

  return run


def op_markdown(rows: list[dict], meta: dict) -> str:
  """Op table: ms, ratio to dropout (with CI) and GB/s of each variant; copy GB/s as the ceiling."""
  names = ["sparseout_q1.5", "sparseout_q2.5", "identity"]
  lines = [
    *_header("Sparseout op, forward + backward", meta),
    f"One jitted call returns y and dx = vjp(w) (rate {RATE}; Sparseout keeps a 1-byte mask). Ratios:"
    " median over alternating rounds of the per-round ratio to Flax Dropout [95 % bootstrap CI]."
    " GB/s: minimal bytes (x, w read; y, dx written = 4 n itemsize) / time; copy: 2 n itemsize / time"
    " of a device-to-device copy in the same run; % of copy = op GB/s over copy GB/s.",
    "",
    "| dtype | elements | dropout ms | "
    + " | ".join(f"{n} / dropout" for n in names)
    + " | sparseout_q1.5 GB/s | dropout GB/s | copy GB/s | sparseout_q1.5 % of copy"
    + " | sparseout_q1.5_barrier / dropout |",
    "|---|---|---|" + "---|" * (len(names) + 5),
  ]
  for r in rows:
    if "skipped" in r:
      lines.append(f"| {r['dtype']} | {r['elements']:,} | skipped ({r['skipped']}) |")
      continue
    cells = [report.ratio_cell(r["vs_dropout"][n]) for n in names]
    g = r["gbps"]
    lines.append(
      f"| {r['dtype']} | {r['elements']:,} | {r['ms']['dropout']:.4g} | "
      + " | ".join(cells)
      + f" | {g['sparseout_q1.5']:.3g} | {g['dropout']:.3g} | {g['copy']:.3g} "
      f"| {100 * g['sparseout_q1.5'] / g['copy']:.0f} "
      f"| {report.ratio_cell(r['vs_dropout']['sparseout_q1.5_barrier'])} |"
    )
  return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- train steps


def run_programs(
  programs: dict[str, _steps.StepProgram],
  rounds: int,
  target_s: float,
  budget: Budget,
  est_s: float,
) -> dict:
  """Compile each program once, read its memory, then time all in alternating rounds.

  Args:
    programs: name -> StepProgram (one model and dtype; names "none", "dropout", "sparseout").
    rounds, target_s: alternating rounds, and about how long one sample should take.
    budget: skips the group when fewer than ``est_s`` seconds remain.
    est_s: a guess of the group's compile + run time.

  Returns:
    {"memory": {name: stats}, "ms": {name: ms/step}, "units_per_s": {...},
     "vs_dropout": {name: paired wall ratio}} or {"skipped": why}.
  """
  if budget.skip(est_s):
    return {"skipped": f"time budget ({budget.left():.0f} s left, about {est_s:.0f} s needed)"}
  try:
    return _run_programs(programs, rounds, target_s)
  except Exception as e:  # one failing group (a first cuDNN run, memory) must not lose the others
    log(f"  failed: {type(e).__name__}: {e}")
    return {"skipped": f"error: {type(e).__name__}: {str(e)[:300]}"}


def _run_programs(programs: dict[str, _steps.StepProgram], rounds: int, target_s: float) -> dict:
  mem, runners, units, flops = {}, {}, {}, {}
  for name, p in programs.items():
    t0 = time.perf_counter()
    stats, compiled = memory.measure(p)
    mem[name] = stats
    flops[name] = _flops(compiled)
    state, batch, key = p.init()
    box = [state]

    def run(n, compiled=compiled, box=box, batch=batch, key=key):
      for _ in range(n):
        box[0], loss = compiled(box[0], batch, key)
      jax.block_until_ready((box[0], loss))

    run(2)
    runners[name], units[name] = run, p.units
    log(f"  {name}: compiled and warm in {time.perf_counter() - t0:.1f} s, memory {stats}")
  per = {n: _timing.calibrate(r, target_s, max_n=64) for n, r in runners.items()}
  samples = _timing.alternating_rounds(runners, rounds, per)
  med = _timing.medians(samples)
  out = {
    "memory": mem,
    "ms": {n: m["wall"] * 1e3 for n, m in med.items()},
    "units_per_s": {n: units[n] / m["wall"] for n, m in med.items()},
    "flops_per_step": flops,
    "tflops_per_s": {n: flops[n] / m["wall"] / 1e12 for n, m in med.items()},
  }
  if "dropout" in runners:
    out["vs_dropout"] = {
      n: _timing.paired_ratio(samples, n, "dropout")["wall"] for n in runners if n != "dropout"
    }
  return out


def _flops(compiled) -> float:
  """XLA's count of floating-point operations of one call (NaN where the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))
  except Exception:  # best effort: backend dependent
    return float("nan")


def step_markdown(title: str, unit: str, groups: dict, meta: dict, note: str) -> str:
  """One row per (group, noise): ms/step, units/s, ratio to dropout [CI], XLA's FLOPs per unit, TFLOP/s."""
  lines = [
    *_header(title, meta),
    note + " Ratios: median over alternating rounds of the per-round ratio to dropout [95 % CI].",
    "",
    f"| setting | noise | ms/step | {unit}/s | / dropout | GFLOP per {unit[:-1]} | TFLOP/s |",
    "|---|---|---|---|---|---|---|",
  ]
  for g, res in groups.items():
    if "skipped" in res:
      lines.append(f"| {g} | | skipped: {res['skipped'].replace('|', '/')} | | | | |")
      continue
    for n, ms in res["ms"].items():
      ratio = res.get("vs_dropout", {}).get(n)
      cell = report.ratio_cell(ratio) if ratio else ("1" if n == "dropout" else "")
      per_unit = res["flops_per_step"][n] / (res["units_per_s"][n] * ms / 1e3) / 1e9
      lines.append(
        f"| {g} | {n} | {ms:.3f} | {res['units_per_s'][n]:,.0f} | {cell} | {per_unit:.3g} "
        f"| {res['tflops_per_s'][n]:.3g} |"
      )
  return "\n".join(lines) + "\n"


@contextlib.contextmanager
def cudnn_stand_in(active: bool):
  """Without a GPU, route ``jax.experimental.rnn.lstm`` to jax's reference LSTM (smoke runs only)."""
  if not active:
    yield
    return
  from jax.experimental import rnn

  real = rnn.lstm

  def ref(x, h0, c0, w, seq, *, input_size, hidden_size, num_layers, dropout, bidirectional):
    wi, wh, bi, bh = rnn.unpack_lstm_weights(w, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(
      x, h0, c0, wi, wh, bi, bh, seq, input_size, hidden_size, num_layers, dropout, bidirectional
    )

  rnn.lstm = ref
  try:
    yield
  finally:
    rnn.lstm = real


def cudnn_check(size: dict) -> dict:
  """cuDNN against scan on the same weights: max |difference| / max |scan| of logits and gradients.

  Runs the Sparseout model (noise on, same key) at matmul precision "highest" so that neither path
  uses TF32, and compares the logits of one forward pass and the gradients of the step's loss.
  """
  from flax import nnx

  from models import lstm_lm

  kw = {k: size[k] for k in ("vocab", "emb", "hidden", "layers")}
  reg = _steps.lstm_regularisation("sparseout")
  models = {
    b: lstm_lm.LSTMLM(
      kw["vocab"], kw["emb"], kw["hidden"], kw["layers"], reg, backend=b, rngs=nnx.Rngs(0)
    )
    for b in ("scan", "cudnn")
  }
  ids = jax.random.randint(jax.random.key(1), (size["bptt"] + 1, size["batch"]), 0, kw["vocab"])
  x, y = ids[:-1], ids[1:]
  key = jax.random.key(3)
  out = {}
  with jax.default_matmul_precision("highest"):
    res = {}
    for b, m in models.items():
      graphdef, params = nnx.split(m)
      carry = m.init_carry(size["batch"])

      def loss_fn(p, graphdef=graphdef, carry=carry):
        logits, _, aux = nnx.merge(graphdef, p)(x, carry, key=key)
        ones = jnp.ones(x.shape, jnp.float32)
        loss = lstm_lm.lm_losses(logits, y, ones, aux["raw"], aux["dropped"])["loss"]
        return loss, logits

      (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
      res[b] = (np.asarray(logits), [np.asarray(g) for g in jax.tree.leaves(grads)], float(loss))
  (ls, gs, lo_s), (lc, gc, lo_c) = res["scan"], res["cudnn"]
  out["logits_rel"] = float(np.max(np.abs(ls - lc)) / np.max(np.abs(ls)))
  out["grads_rel"] = max(
    float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
    for a, b in zip(gs, gc, strict=True)
  )
  out["loss_scan"], out["loss_cudnn"] = lo_s, lo_c
  out["ok"] = out["logits_rel"] < 1e-4 and out["grads_rel"] < 1e-3
  return out


# ------------------------------------------------------------------------------------------ helpers


def _header(title: str, meta: dict) -> list[str]:
  """The results head (:func:`benchmarks.report.header`), saying so when it is a smoke run."""
  lines = report.header(title, meta).splitlines()
  if meta["smoke"]:
    lines += ["**Smoke run (tiny sizes, no GPU): these numbers only show the suite works.**", ""]
  return lines


def _write(out: str, name: str, text: str) -> None:
  log(f"wrote {report.write_text(os.path.join(out, name), text)}")


def main(argv: list[str] | None = None) -> int:
  """Run the suite; returns 0 when every table was written (cuDNN mismatch: 1)."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (CI)")
  ap.add_argument("--out", default=None, help="default: benchmarks/results (smoke: a temp folder)")
  ap.add_argument("--budget_s", type=float, default=540.0, help="wall-clock budget from now")
  ap.add_argument("--deadline", type=float, default=0.0, help="time.time() to end by (wins)")
  ap.add_argument("--parts", default=",".join(PARTS), help="which tables to make, in this order")
  a = ap.parse_args(argv)
  cfg = SMOKE if a.smoke else FULL
  out = a.out or ("/tmp/sparseout_gpu_suite_smoke" if a.smoke else "benchmarks/results")
  os.makedirs(out, exist_ok=True)
  budget = Budget(a.deadline or time.time() + a.budget_s)
  platform = jax.devices()[0].platform
  if not a.smoke and platform != "gpu":
    log(f"warning: running the full suite on {platform}, not a GPU")
  meta = report.metadata(
    a,
    command=os.environ.get("GPU_SUITE_COMMAND")
    or "python -m benchmarks.gpu_suite " + " ".join(sys.argv[1:] if argv is None else argv),
    smoke=a.smoke,
  )
  parts = a.parts.split(",")
  for part in parts:
    if part not in PARTS:
      ap.error(f"--parts: unknown {part!r}; choose from {tuple(PARTS)}")
  ok = True
  for part in PARTS:  # in this order: the cheap tables first, WRN-28-10 (long compiles) last
    if part in parts:
      log(f"{part} table")
      res = PARTS[part](cfg, budget, meta, out, platform)
      report.write_json(os.path.join(out, f"gpu_{part}.json"), {"meta": meta, **res})
      ok = ok and res.get("cudnn_check", {}).get("ok", True)
  write_memory_table(out, meta)
  log(f"done, {budget.left():.0f} s of the budget left")
  return 0 if ok else 1


def part_op(cfg: dict, budget: Budget, meta: dict, out: str, platform: str) -> dict:
  """The op table (gpu_op.md)."""
  rows = op_table(cfg["op_sizes"], cfg["rounds"], cfg["target_s"], budget)
  _write(out, "gpu_op.md", op_markdown(rows, meta))
  return {"op": rows}


def part_lstm(cfg: dict, budget: Budget, meta: dict, out: str, platform: str) -> dict:
  """AWD-LSTM steps on the scan backend, float32 and bfloat16 (gpu_lstm.md)."""
  s = cfg["lstm"]
  groups, mem = {}, {}
  for dtype in ("float32", "bfloat16"):
    label = f"scan, {dtype}"
    log(f"LSTM {label}")
    progs = {n: _steps.lstm_program(n, dtype, **s) for n in _steps.NOISES}
    groups[label] = run_programs(
      progs, cfg["rounds"], cfg["target_s"], budget, cfg["est_s"]["lstm"]
    )
    if "memory" in groups[label]:
      mem.setdefault("AWD-LSTM scan", {})[dtype] = groups[label]["memory"]
  _write(out, "gpu_lstm.md", step_markdown(_lstm_title(s), "tokens", groups, meta, _lstm_note(s)))
  return {"groups": groups, "memory": mem}


def part_lstm_cudnn(cfg: dict, budget: Budget, meta: dict, out: str, platform: str) -> dict:
  """AWD-LSTM steps on the cuDNN backend (float32), and cuDNN checked against scan (gpu_lstm_cudnn.md).

  Without a GPU the cuDNN call is replaced by jax's reference LSTM, so the code path still runs.
  """
  s = cfg["lstm"]
  with cudnn_stand_in(platform != "gpu"):
    try:
      c = cudnn_check(s)
    except Exception as e:  # report it in the table; the timing rows below may still work
      c = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    log("LSTM cudnn, float32")
    try:  # the model refuses a JAX whose cuDNN LSTM is wrong (lstm_lm.check_cudnn_backend)
      progs = {n: _steps.lstm_program(n, "float32", backend="cudnn", **s) for n in _NOISED}
      group = run_programs(progs, cfg["rounds"], cfg["target_s"], budget, cfg["est_s"]["lstm"])
    except RuntimeError as e:
      group = {"skipped": f"{e}"[:300]}
  check = (
    f"cuDNN vs scan, same weights and key, precision highest: logits max|diff|/max|scan| "
    f"{c['logits_rel']:.2e}, gradients {c['grads_rel']:.2e}, loss {c['loss_scan']:.6f} vs "
    f"{c['loss_cudnn']:.6f}: {'OK' if c['ok'] else 'MISMATCH'}."
    if "error" not in c
    else f"cuDNN check FAILED: {c['error']}"
  )
  if platform != "gpu":
    check += " (No GPU: the cuDNN call was replaced by jax.experimental.rnn.lstm_ref.)"
  groups = {"cudnn, float32": group}
  note = f"{_lstm_note(s)} {check}"
  _write(out, "gpu_lstm_cudnn.md", step_markdown(_lstm_title(s), "tokens", groups, meta, note))
  mem = {"AWD-LSTM cudnn": {"float32": group["memory"]}} if "memory" in group else {}
  return {"groups": groups, "cudnn_check": c, "memory": mem}


_NOISED = ("dropout", "sparseout")


def _lstm_title(s: dict) -> str:
  return f"AWD-LSTM train step, {s['batch']} x {s['bptt']} tokens"


def _lstm_note(s: dict) -> str:
  return (
    f"V {s['vocab']}, E {s['emb']}, H {s['hidden']}, {s['layers']} layers, q 1.5 at every site."
  )


def part_wrn(cfg: dict, budget: Budget, meta: dict, out: str, platform: str) -> dict:
  """WRN steps, bfloat16 then float32 (gpu_wrn.md)."""
  s = cfg["wrn"]
  name = f"WRN-{s['depth']}-{s['width']}"
  groups, mem = {}, {}
  for dtype in ("bfloat16", "float32"):
    label = f"{name}, {dtype}"
    log(label)
    noises = cfg.get("wrn_noises", _steps.WRN_NOISES)
    progs = {n: _steps.wrn_program(n, dtype, **s) for n in noises}
    groups[label] = run_programs(progs, cfg["rounds"], cfg["target_s"], budget, cfg["est_s"]["wrn"])
    if "memory" in groups[label]:
      mem.setdefault(name, {})[dtype] = groups[label]["memory"]
  note = (
    "Rate 0.3, q 1.5, noise after the second ReLU of each block; nesterov SGD, weight decay;"
    " sparseout: the default on a GPU (Sparseout's output recomputed from input and mask,"
    " remat_output=True);"
    " sparseout_keep: remat_output=False (the output kept);"
    " sparseout_remat: the model's remat_noise=True (noise and conv input recomputed in backward)."
  )
  title = f"{name} train step, batch {s['batch']}"
  _write(out, "gpu_wrn.md", step_markdown(title, "images", groups, meta, note))
  return {"groups": groups, "memory": mem}


PARTS = {
  "op": part_op,
  "lstm": part_lstm,
  "lstm_cudnn": part_lstm_cudnn,
  "wrn": part_wrn,
}


def write_memory_table(out: str, meta: dict) -> None:
  """gpu_memory.md from the memory in the parts' json files in ``out`` (this run's or older ones)."""
  table, dates = {}, []
  for part in ("lstm", "lstm_cudnn", "wrn"):
    path = os.path.join(out, f"gpu_{part}.json")
    if os.path.isfile(path):
      with open(path) as f:
        res = json.load(f)
      table.update(res["memory"])
      dates.append(f"{part}: {res['meta']['date']}")
  if table:
    title = "Train-step memory (from gpu_lstm.json, gpu_lstm_cudnn.json and gpu_wrn.json)"
    head = "\n".join(_header(title, {**meta, "date": "; ".join(dates)}))
    _write(out, "gpu_memory.md", head + "\n" + memory.to_markdown(table))


if __name__ == "__main__":
  sys.exit(main())
