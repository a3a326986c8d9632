"""Forward + backward time of sparseout against Flax's Dropout, the identity and PyTorch.

Times y, dx = vjp(layer)(x)(w) for each layer on one array, in one process, alternating
the variants round by round, and writes ratios against Flax Dropout measured in the same
run. The PyTorch row is the authors' rule (SPEC 1) as a torch.autograd.Function.

  python -m benchmarks.sparseout_speed                # the README table
  python -m benchmarks.sparseout_speed --quick        # 2 sizes, float32 only
  python -m benchmarks.sparseout_speed --goal --out benchmarks/results/sparseout_speed_cpu_goal
                                                      # the goal cells only (q = 1.5, 2.5, mask)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import random

from benchmarks import _timing
from sparseout_jax import sparseout, sparseout_with_mask

SIZES = [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24]  # 64K .. 16M elements
RATE = 0.5
GOAL = 1.10  # the target: sparseout / Flax Dropout at every size, both clocks (docs/speed.md)


def _jax_variants(impl: str, dtype, residuals: tuple[str, ...], floors: bool) -> dict:
  """name -> (jitted f(key, x, w, *extra) returning what one forward + backward returns, extra)."""
  drop = nn.Dropout(RATE, deterministic=False)

  out = {
    "identity": (_timing.jitted_vjp(lambda k, x: x), ()),
    "flax_dropout": (_timing.jitted_vjp(lambda k, x: drop.apply({}, x, rng=k)), ()),
  }
  for q in (1.5, 2.5):
    for r in residuals:
      out[f"sparseout_q{q}_{r}"] = (
        _timing.jitted_vjp(lambda k, x, q=q, r=r: sparseout(k, x, RATE, q, residual=r)),
        (),
      )
  if floors:
    for q in (1.5, 2.5):  # a schedule's step: p and q are jit arguments (traced), not constants
      out[f"sparseout_q{q}_traced"] = (_traced_vjp(), (jnp.float32(RATE), jnp.float32(q)))
    # The floor of sparseout's time: its arithmetic alone (mask given) and the RNG alone.
    out["arith_q1.5"] = (_masked_vjp(1.5), "mask")
    out["rng_only"] = (jax.jit(lambda k, x, w: random.bernoulli(k, 1.0 - RATE, x.shape)), ())
  return {f"{name}[{impl}]": v for name, v in out.items()}


def _traced_vjp():
  def f(key, x, w, p, q):
    y, pull = jax.vjp(lambda x: sparseout(key, x, p, q), x)
    return y, pull(w)[0]

  return jax.jit(f)


def _masked_vjp(q: float):
  def f(key, x, w, mask):
    y, pull = jax.vjp(lambda x: sparseout_with_mask(x, mask, RATE, q), x)
    return y, pull(w)[0]

  return jax.jit(f)


def _torch_reference():
  """The authors' rule as a torch.autograd.Function, or None when torch is missing."""
  try:
    import torch
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)

  class SparseoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, q):
      noise = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p).sub_(1)
      ax = x.abs() + 1e-12
      ctx.save_for_backward(ax, noise)
      ctx.q = q
      return x + x.sign() * ax.pow(q / 2) * noise

    @staticmethod
    def backward(ctx, g):
      ax, noise = ctx.saved_tensors
      return g * (1 + ax.pow(ctx.q / 2 - 1) * noise), None, None

  return torch, SparseoutFn


def _call_jax(f, key, x, w, *extra):
  return jax.block_until_ready(f(key, x, w, *extra))


def _torch_variants(torch, fn, shape, dtype_name: str) -> dict:
  """The authors' rule at q = 1.5 and 2.5, and torch's own dropout, as timed callables."""
  tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
  tx = torch.randn(shape, dtype=tdt, requires_grad=True)
  tw = torch.randn(shape, dtype=tdt)

  def step(q):
    y = fn.apply(tx, RATE, q) if q else torch.nn.functional.dropout(tx, RATE, training=True)
    (dx,) = torch.autograd.grad(y, tx, tw)
    return y, dx

  return {
    "torch_reference_q1.5": functools.partial(step, 1.5),
    "torch_reference_q2.5": functools.partial(step, 2.5),
    "torch_dropout": functools.partial(step, None),
  }


def run(sizes, dtypes, impls, residuals, rounds, floors: bool = True) -> list[dict]:
  rows = []
  torch_ref = _torch_reference() if floors else None
  for dtype_name in dtypes:
    dtype = jnp.dtype(dtype_name)
    for n in sizes:
      x = jax.random.normal(jax.random.key(0), (n // 1024, 1024)).astype(dtype)
      w = jax.random.normal(jax.random.key(1), x.shape).astype(dtype)
      mask = random.bernoulli(jax.random.key(4), 1.0 - RATE, x.shape)
      fns = {}
      for impl in impls:
        key = jax.random.key(2, impl=impl)
        variants = _jax_variants(impl, dtype, residuals, floors and impl == impls[0])
        for name, (f, extra) in variants.items():
          extra = (mask,) if extra == "mask" else extra
          fns[name] = functools.partial(_call_jax, f, key, x, w, *extra)
      if torch_ref is not None:
        fns.update(_torch_variants(*torch_ref, x.shape, dtype_name))
      runners = {k: _timing.repeat(fn) for k, fn in fns.items()}
      for r in runners.values():
        r(1)  # compile and warm
      units = {k: _timing.calibrate(r) for k, r in runners.items()}
      samples = _timing.alternating_rounds(runners, rounds, units)
      med = _timing.medians(samples)
      ref = f"flax_dropout[{impls[0]}]"
      for name, m in med.items():
        ratio = _timing.paired_ratio(samples, name, ref)
        rows.append(
          {
            "dtype": dtype_name,
            "elements": n,
            "variant": name,
            "ms": m["wall"] * 1e3,
            "cpu_ms": m["cpu"] * 1e3,
            "vs_dropout": ratio["wall"]["median"],
            "cpu_vs_dropout": ratio["cpu"]["median"],
            "vs_dropout_ci": ratio["wall"]["ci"],
            "cpu_vs_dropout_ci": ratio["cpu"]["ci"],
          }
        )
      print(
        f"{dtype_name} {n:>9,}: "
        + ", ".join(
          f"{r['variant']} {r['vs_dropout']:.2f}/{r['cpu_vs_dropout']:.2f}"
          for r in rows[-len(med) :]
        ),
        flush=True,
      )
  return rows


COLUMNS = [
  ("sparseout_q1.5_mask[threefry2x32]", "q=1.5"),
  ("sparseout_q2.5_mask[threefry2x32]", "q=2.5"),
  ("sparseout_q1.5_key[threefry2x32]", "q=1.5, key residual"),
  ("sparseout_q2.5_key[threefry2x32]", "q=2.5, key residual"),
  ("sparseout_q1.5_traced[threefry2x32]", "q=1.5, traced p, q"),
  ("sparseout_q2.5_traced[threefry2x32]", "q=2.5, traced p, q"),
  ("arith_q1.5[threefry2x32]", "q=1.5 arithmetic alone (mask given)"),
  ("rng_only[threefry2x32]", "RNG alone"),
  ("identity[threefry2x32]", "identity"),
  ("flax_dropout[rbg]", "dropout, rbg"),
  ("sparseout_q1.5_mask[rbg]", "q=1.5, rbg"),
  ("torch_reference_q1.5", "PyTorch ref. q=1.5"),
  ("torch_reference_q2.5", "PyTorch ref. q=2.5"),
  ("torch_dropout", "PyTorch dropout"),
]


def write_markdown(rows: list[dict], path: pathlib.Path, meta: dict) -> None:
  """The README table: wall / process-CPU ratio to Flax Dropout (threefry) of each variant."""
  by = {(r["dtype"], r["elements"], r["variant"]): r for r in rows}
  cols = [(v, label) for v, label in COLUMNS if any(k[2] == v for k in by)]
  keys = sorted(
    {(r["dtype"], r["elements"]) for r in rows}, key=lambda t: (t[0] != "float32", t[1])
  )
  lines = [
    f"Forward+backward (y and dx) time of each variant relative to Flax Dropout (threefry) in the "
    f"same run, as wall / process-CPU ratios (medians of alternating rounds). Machine: "
    f"{meta['machine']}; jax {meta['jax']}; rate {RATE}; sparseout keeps the mask unless 'key'."
    + (f" Command: `{meta['command']}`; {meta['date']}; {meta['load']}." if "load" in meta else ""),
    "",
    "| dtype | elements | Flax Dropout ms | " + " | ".join(label for _, label in cols) + " |",
    "|---|---|---|" + "---|" * len(cols),
  ]
  for d, n in keys:
    base = by[(d, n, "flax_dropout[threefry2x32]")]["ms"]
    cells = []
    for v, _ in cols:
      r = by.get((d, n, v))
      cells.append(f"{r['vs_dropout']:.2f} / {r['cpu_vs_dropout']:.2f}" if r else "-")
    lines.append(f"| {d} | {n:,} | {base:.2f} | " + " | ".join(cells) + " |")
  lines += [
    "",
    f"The goal cells with their spread: ratio to Flax Dropout, median over rounds of the per-round "
    f"ratio [95 % bootstrap interval], goal <= {GOAL}.",
    "",
    f"| dtype | elements | q=1.5 wall | q=1.5 CPU | q=2.5 wall | q=2.5 CPU | all <= {GOAL:.2f} |",
    "|---|---|---|---|---|---|---|",
  ]
  for d, n in keys:
    cells, ok = [], True
    for q in ("1.5", "2.5"):
      r = by.get((d, n, f"sparseout_q{q}_mask[threefry2x32]"))
      for clock in ("vs_dropout", "cpu_vs_dropout"):
        lo, hi = r[f"{clock}_ci"]
        cells.append(f"{r[clock]:.2f} [{lo:.2f}, {hi:.2f}]")
        ok = ok and r[clock] <= GOAL
    lines.append(f"| {d} | {n:,} | " + " | ".join(cells) + f" | {'yes' if ok else 'NO'} |")
  path.write_text("\n".join(lines) + "\n")


def _without_out(argv: list[str]) -> list[str]:
  """The arguments without ``--out PATH`` / ``--out=PATH`` (the results file names itself)."""
  out, skip = [], False
  for a in argv:
    if skip or a.startswith("--out="):
      skip = False
      continue
    skip = a == "--out"
    if not skip:
      out.append(a)
  return out


def main() -> None:
  ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--quick", action="store_true", help="two sizes, float32, threefry only")
  ap.add_argument(
    "--goal", action="store_true", help="every size and dtype, the goal columns only (shorter)"
  )
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--out", default="benchmarks/results/sparseout_speed_cpu")
  args = ap.parse_args()
  if args.quick:
    sizes, dtypes, impls, residuals = (
      [1 << 16, 1 << 22],
      ["float32"],
      ["threefry2x32"],
      ("mask", "key"),
    )
  elif args.goal:
    sizes, dtypes, impls, residuals = (SIZES, ["float32", "bfloat16"], ["threefry2x32"], ("mask",))
  else:
    sizes, dtypes, impls, residuals = (
      SIZES,
      ["float32", "bfloat16"],
      ["threefry2x32", "rbg"],
      ("mask", "key"),
    )
  load_before = os.getloadavg()[0]
  rows = run(sizes, dtypes, impls, residuals, args.rounds, floors=not args.goal)
  meta = {
    "command": "python -m benchmarks.sparseout_speed " + " ".join(_without_out(sys.argv[1:])),
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "load": f"1-min load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}",
    "jax": jax.__version__,
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
  write_markdown(rows, out.with_suffix(".md"), meta)
  print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
  main()
