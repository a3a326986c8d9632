"""The structure of the op's forward + backward program, lowered for CUDA and CPU without a GPU.

Counts, in the StableHLO of ``y, dx = vjp(sparseout)(g)`` on 1M float32 elements (q = 1.5,
rate 0.5), the optimization barriers and the platform switches (``stablehlo.case``) of the op as
it is ("after": rematerialisation chosen per platform) and of its CPU form alone on every
platform ("before": ``jax.checkpoint`` with its default barrier, the op's only form until the
per-platform choice). Then the work per element of the CPU-compiled programs of sparseout and
Flax Dropout: the passes over memory after the random bits (loop fusions of the array's shape)
and the elementwise operations in them.

  python -m benchmarks.op_lowering        # writes benchmarks/results/op_lowering.md
"""

from __future__ import annotations

import collections
import os
import pathlib
import platform
import re
import time

import jax
import jax.numpy as jnp
from flax import linen as nn

from sparseout_jax import core, sparseout

SHAPE = (1024, 1024)
PLATFORMS = ("cuda", "cpu")


def _after(key, x):
  return sparseout(key, x, 0.5, 1.5)


def _before(key, x):
  mask = core.draw_mask(key, 0.5, x, SHAPE)
  return core._rematerialised(True, "mask", 0.5, 1.5, SHAPE, True)(x, mask, 0.0, 0.0)


def counts(op, lowering_platform: str) -> dict[str, int]:
  """Barriers and switches in the lowered fwd + bwd program of ``op`` for one platform."""

  def step(key, x, g):
    y, pull = jax.vjp(lambda x: op(key, x), x)
    return y, pull(g)[0]

  x = jnp.ones(SHAPE, jnp.float32)
  lowered = (
    jax.jit(step).trace(jax.random.key(0), x, x).lower(lowering_platforms=(lowering_platform,))
  )
  text = lowered.as_text()
  return {"barriers": text.count("optimization_barrier"), "cases": text.count("stablehlo.case")}


def compiled_instructions(op) -> list[str]:
  """The CPU-compiled fwd + bwd program of ``op``, without metadata and stack-frame tables."""

  def step(key, x, g):
    y, pull = jax.vjp(lambda x: op(key, x), x)
    return y, pull(g)[0]

  x = jnp.ones(SHAPE, jnp.float32)
  text = jax.jit(step).lower(jax.random.key(0), x, x).compile().as_text()
  text = re.sub(r",? ?metadata=\{[^}]*\}|,? ?stack_frame_id=\d+", "", text)
  return [ln for ln in text.splitlines() if not re.match(r"^\d+ [{\"]", ln)]


# Operations that move or name data rather than compute on it.
_NOT_WORK = {"parameter", "constant", "broadcast", "bitcast", "tuple", "get-tuple-element", "slice"}
_ROOTS = ("sqrt", "rsqrt", "power", "exponential", "log")


def elementwise_work(layer) -> dict[str, int]:
  """Passes and per-element operations after the RNG in the CPU-compiled fwd + bwd of ``layer``.

  Every fusion the entry computation calls with a float array of x's shape is one pass; its
  operations (bit casts, broadcasts and constants aside) are counted, roots and transcendentals
  (sqrt, rsqrt, pow, exp, log) apart. The random bits come from one threefry loop
  (``while``), the same for both (counted as ``while``).
  """

  def step(key, x, g):
    y, pull = jax.vjp(lambda x: layer(key, x), x)
    return y, pull(g)[0]

  x = jnp.ones(SHAPE, jnp.float32)
  text = jax.jit(step).lower(jax.random.key(0), x, x).compile().as_text()
  comps, name = {}, None
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
    if head and line.rstrip().endswith("{"):
      name = "ENTRY" if line.startswith("ENTRY") else head.group(1)
      comps[name] = []
    elif name and line.strip() == "}":
      name = None
    elif name:
      comps[name].append(line)
  shape = f"[{','.join(map(str, SHAPE))}]"
  out = collections.Counter(passes=0, ops=0, roots=0)
  for line in comps["ENTRY"]:
    out["while"] += " while(" in line
    called = re.search(r"fusion\(.*calls=%([\w.\-]+)", line)
    if called and re.search(rf"= (f|bf)\d+{re.escape(shape)}", line):
      out["passes"] += 1
      for op_line in comps[called.group(1)]:
        op = re.search(r"= \S+ ([a-z\-]+)\(", op_line)
        if op and op.group(1) not in _NOT_WORK:
          out["ops"] += 1
          out["roots"] += op.group(1) in _ROOTS
  return dict(out)


def main() -> None:
  same = compiled_instructions(_before) == compiled_instructions(_after)
  rows = [(p, counts(_before, p), counts(_after, p)) for p in PLATFORMS]
  lines = [
    "# The op's program lowered per platform",
    "",
    "Command: `python -m benchmarks.op_lowering`  ",
    f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
    f"{platform.machine()}, {os.cpu_count()} cores, no GPU; JAX {jax.__version__}.",
    "StableHLO of y and dx = vjp(sparseout(key, x, 0.5, 1.5))(g), 1M float32 elements.",
    "",
    "| lowered for | before: optimization barriers | after: optimization barriers "
    "| after: stablehlo.case |",
    "|---|---|---|---|",
  ]
  lines += [f"| {p} | {b['barriers']} | {a['barriers']} | {a['cases']} |" for p, b, a in rows]
  lines += [
    "",
    "Compiled for this CPU, the program after equals the program before instruction for "
    f"instruction (metadata and stack frames stripped): {'yes' if same else 'NO'}.",
  ]
  drop = nn.Dropout(0.5, deterministic=False)
  layers = {
    "Flax Dropout": lambda k, x: drop.apply({}, x, rng=k),
    "sparseout q = 1.5": lambda k, x: sparseout(k, x, 0.5, 1.5),
    "sparseout q = 2.5": lambda k, x: sparseout(k, x, 0.5, 2.5),
  }
  work = {name: elementwise_work(f) for name, f in layers.items()}
  lines += [
    "",
    "The CPU-compiled y and dx (same shape and rate): passes over memory after the random bits "
    "(loop fusions with a float output of x's shape), the elementwise operations in them (all passes; "
    "constants, broadcasts and bit casts aside) and, of those, roots and transcendentals "
    "(sqrt, rsqrt, pow, exp, log). Each program draws its bits in one threefry loop.",
    "",
    "| program | threefry loops | passes | operations | roots, transcendentals |",
    "|---|---|---|---|---|",
  ]
  lines += [
    f"| {n} | {w.get('while', 0)} | {w['passes']} | {w['ops']} | {w['roots']} |"
    for n, w in work.items()
  ]
  out = pathlib.Path("benchmarks/results/op_lowering.md")
  out.write_text("\n".join(lines) + "\n")
  print(out.read_text())


if __name__ == "__main__":
  main()
