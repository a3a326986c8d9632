"""WRN input pipeline throughput: the host pipeline of today against host draws + on-device crop and flip.

Three producers of the same training batches (50,000 synthetic CIFAR-shaped images, batch 128),
timed in alternating rounds (``benchmarks._timing``):

- ``host``: ``input_pipeline.train_batches``, pad, crop, flip and normalise in numpy (today's path);
- ``host_raw``: ``augment.raw_train_batches``, the host's share when the device augments: gather the
  uint8 batch and draw the offsets and flips;
- ``device``: ``augment.on_device`` of one raw batch, jitted, with its transfer (``device_put``).

Against them, the rate one H100 would consume WRN-28-10 in bfloat16 at, from the FLOPs per image of
the train step (forward + backward) at an assumed model-FLOP utilisation of the 989 TFLOP/s dense
bfloat16 peak. Two counts: XLA's cost analysis of ``benchmarks._steps.wrn_program`` at batch 128,
28.6 GFLOP per image (a multiply-add is 2 FLOPs, as in the peak), and the issue's 15.6 GFLOP (about
the multiply-add count), which gives 1.8x higher rates.

  python -m benchmarks.wrn_pipeline                 # writes benchmarks/results/wrn_input_pipeline.{md,json}
"""

from __future__ import annotations

import argparse

import jax

from benchmarks import _timing, report
from train.wrn import augment, input_pipeline

# WRN-28-10 train step, GFLOP per image: XLA's cost analysis (CPU, float32, batch 128, 2026-11-25),
# and the figure the issue quotes.
GFLOP_PER_IMAGE = {"XLA count": 28.6, "issue's figure": 15.6}
H100_BF16_TFLOPS = 989.0  # dense peak, SXM
MFUS = (0.3, 0.5)


def _cycling(make):
  """``run(n)``: take n batches from ``make(epoch)``, moving to the next epoch when one ends."""
  state = {"epoch": 0, "it": make(0)}

  def run(n: int) -> None:
    for _ in range(n):
      b = next(state["it"], None)
      if b is None:
        state["epoch"] += 1
        state["it"] = make(state["epoch"])
        b = next(state["it"])

  return run


def runners(batch: int, num_examples: int = 50000) -> dict:
  """name -> ``run(n)`` producing n batches, for the three producers."""
  ds = input_pipeline.synthetic(num_examples, 10, seed=0)
  raw = next(augment.raw_train_batches(ds, global_batch=batch, seed=0, epoch=0))
  step = jax.jit(augment.on_device)

  def device(n: int) -> None:
    for _ in range(n):
      out = step(jax.device_put(raw))
    jax.block_until_ready(out)

  return {
    "host": _cycling(
      lambda e: input_pipeline.train_batches(ds, global_batch=batch, seed=0, epoch=e)
    ),
    "host_raw": _cycling(
      lambda e: augment.raw_train_batches(ds, global_batch=batch, seed=0, epoch=e)
    ),
    "device": device,
  }


def to_markdown(res: dict) -> str:
  """Images/s of each producer (wall and per CPU-second) and the H100 consumption estimate."""
  lines = [
    f"Batch {res['batch']}; medians of {res['rounds']} alternating rounds. Host producers run on one"
    " thread; 'per CPU-s' divides by this process's CPU time, the steadier figure on a shared"
    " machine.",
    "",
    report.table(
      ("producer", "images/s (wall)", "images per CPU-s"),
      [(n, f"{r['wall']:,.0f}", f"{r['cpu']:,.0f}") for n, r in res["images_per_s"].items()],
    ),
    "",
    f"One H100 training WRN-28-10 in bfloat16 ({H100_BF16_TFLOPS:.0f} TFLOP/s dense peak) consumes,"
    " in images/s:",
    "",
    report.table(
      ("GFLOP per image (fwd + bwd)", *(f"{int(100 * m)} % MFU" for m in MFUS)),
      [
        (f"{GFLOP_PER_IMAGE[name]} ({name})", *(f"{v:,.0f}" for v in by_mfu.values()))
        for name, by_mfu in res["h100_estimate"].items()
      ],
    ),
  ]
  return "\n".join(lines) + "\n"


def main() -> None:
  """Parse flags, time the producers, write the results files."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--batches", type=int, default=40, help="batches per producer per round")
  ap.add_argument("--out", default="benchmarks/results")
  a = ap.parse_args()
  run = runners(a.batch)
  for r in run.values():
    r(2)  # compile, warm
  med = _timing.medians(_timing.alternating_rounds(run, a.rounds, a.batches))
  res = {
    "batch": a.batch,
    "rounds": a.rounds,
    "images_per_s": {n: {c: a.batch / s for c, s in m.items()} for n, m in med.items()},
    "h100_estimate": {
      name: {m: m * H100_BF16_TFLOPS * 1e3 / g for m in MFUS} for name, g in GFLOP_PER_IMAGE.items()
    },
  }
  title = "WRN input pipeline, images/s"
  path = report.write(a.out, "wrn_input_pipeline", report.metadata(a), res, to_markdown(res), title)
  print(open(path).read())


if __name__ == "__main__":
  main()
