"""The structure of the op's forward + backward program, lowered for CUDA and CPU without a GPU.

Counts, in the StableHLO of ``y, dx = vjp(sparseout)(g)`` on 1M float32 elements (q = 1.5,
rate 0.5), the optimization barriers and the platform switches (``stablehlo.case``) of the op as
it is ("after": rematerialisation chosen per platform) and of its CPU form alone on every
platform ("before": ``jax.checkpoint`` with its default barrier, the op's only form until the
per-platform choice).

  python -m benchmarks.op_lowering        # writes benchmarks/results/op_lowering.md
"""

from __future__ import annotations

import os
import pathlib
import platform
import re
import time

import jax
import jax.numpy as jnp

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
  out = pathlib.Path("benchmarks/results/op_lowering.md")
  out.write_text("\n".join(lines) + "\n")
  print(out.read_text())


if __name__ == "__main__":
  main()
