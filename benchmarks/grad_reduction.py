"""Where the autoencoder step's gradients are summed over the devices: XLA's partitioner against a psum.

The programs' step is one ``jax.jit`` over the ``("data",)`` mesh, and XLA's SPMD partitioner adds
the gradients' all-reduce itself. It places it straight after each kernel gradient's dot, in the
dot's output order: ``[784, 1024]`` for the ``[1024, 784]`` decoder kernel (and the reverse for the
encoder). The transpose that JAX's rule for ``x @ W`` puts after that dot then cannot be folded into
it, as it is in a per-device program, and is left to the consumers: the finite check and Adam's two
moment updates read each kernel gradient in transposed (strided) order.

This benchmark builds the autoencoder's noise-free step (default config: H = 1024, batch 128, Adam)
twice on the same mesh and batch: ``spmd``, the gradient of the global batch's loss under ``jit``
(the programs' form); ``psum``, the same loss's gradient taken per device inside ``jax.shard_map``
and summed there (the reduction then follows the transpose). It checks that both give the same
parameters after one step, lists each compiled step's all-reduces (the kernel gradients' shapes
tell the order), and times the two in alternating rounds (paired ratio, 95 % bootstrap CI).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.grad_reduction

Writes ``benchmarks/results/grad_reduction_<platform>.{md,json}``.
"""

from __future__ import annotations

import argparse
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from benchmarks import _timing, report
from models.autoencoder import reconstruction_loss
from train.autoencoder import input_pipeline, train
from train.autoencoder.configs import default
from train.common import parallel


def steps(mesh) -> tuple[dict, dict, dict]:
  """``({name: jitted (params, opt_state, batch) -> (params, opt_state, loss)}, params, opt_state)``."""
  c = default.get_config()
  c.regularizer = "none"
  graphdef, params, rest = nnx.split(train.build_model(c), nnx.Param, ...)
  tx = optax.adam(float(c.learning_rate))
  n = mesh.shape[parallel.AXIS]

  def loss(p, x):
    model = nnx.merge(graphdef, p, rest)
    (logits, _), _ = nnx.capture(model, nnx.Intermediate)(x, None)
    return jnp.mean(reconstruction_loss(logits, x, "mse"))

  def update(p, o, g):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def spmd(p, o, batch):
    value, g = jax.value_and_grad(loss)(p, batch["x"])
    return *update(p, o, g), value

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def psum(p, o, batch):
    def local(p, x):
      # The global mean loss is the sum over devices of (local mean) / n; the gradient with respect
      # to the replicated parameters is summed over the devices by shard_map's own transpose.
      value, g = jax.value_and_grad(lambda p: loss(p, x) / n)(p)
      return jax.lax.psum(value, parallel.AXIS), g

    value, g = jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=(P(), P())
    )(p, batch["x"])
    return *update(p, o, g), value

  return {"spmd": spmd, "psum": psum}, params, tx.init(params)


def all_reduces(compiled_text: str) -> list[str]:
  """The operand shapes of each all-reduce in a compiled module's entry computation."""
  entry = compiled_text[compiled_text.index("\nENTRY") :]
  out = []
  for line in entry.splitlines():
    if " all-reduce(" in line:
      shape = line.split(" = ", 1)[1].split(" all-reduce(")[0]
      out.append(re.sub(r"\{[0-9,]*\}", "", shape))
  return out


def main() -> None:
  """Parse flags, compile, check, time, write the results files."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rounds", type=int, default=15)
  ap.add_argument("--target_s", type=float, default=0.3, help="seconds per sample")
  ap.add_argument("--out", default="benchmarks/results")
  a = ap.parse_args()
  mesh = parallel.make_mesh()
  fns, params, opt_state = steps(mesh)
  x = input_pipeline.load_mnist("shipped")["train"][: default.get_config().batch_size]
  batch = parallel.put_batch({"x": x}, mesh)

  def fresh():
    return parallel.put_replicated(params, mesh), parallel.put_replicated(opt_state, mesh)

  results, runners, after = {}, {}, {}
  for name, f in fns.items():
    results[name] = {"all_reduces": all_reduces(f.lower(*fresh(), batch).compile().as_text())}
    after[name] = parallel.to_host(f(*fresh(), batch)[0])
    box = list(fresh())

    def run(k: int, f=f, box=box) -> None:
      for _ in range(k):
        box[0], box[1], value = f(box[0], box[1], batch)
      jax.block_until_ready(value)

    run(1)
    runners[name] = run
  diff = max(
    float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
    for u, v in zip(jax.tree.leaves(after["spmd"]), jax.tree.leaves(after["psum"]), strict=True)
  )
  units = {k: _timing.calibrate(r, a.target_s) for k, r in runners.items()}
  samples = _timing.alternating_rounds(runners, a.rounds, units)
  med = _timing.medians(samples)
  ratio = _timing.paired_ratio(samples, "spmd", "psum")
  summary = {
    "steps": results,
    "max_param_diff_after_one_step": diff,
    "median_s": med,
    "ratio_spmd_over_psum": {
      c: {k: v for k, v in r.items() if k != "rounds"} for c, r in ratio.items()
    },
  }
  md = (
    f"Autoencoder H 1024, batch 128, Adam, no noise, on {mesh.shape[parallel.AXIS]} devices. Both"
    f" steps give the same parameters after one step (max difference {diff:.2g}).\n\n"
    + report.table(
      ("step", "all-reduces (operand shapes)", "ms/step (wall)", "ms/step (process CPU)"),
      [
        (
          n,
          "; ".join(results[n]["all_reduces"]),
          f"{1e3 * med[n]['wall']:.1f}",
          f"{1e3 * med[n]['cpu']:.1f}",
        )
        for n in fns
      ],
    )
    + "\n\nspmd / psum, paired rounds [95 % CI]: wall "
    + report.ratio_cell(ratio["wall"])
    + ", process CPU "
    + report.ratio_cell(ratio["cpu"])
    + "."
  )
  stem = f"grad_reduction_{jax.default_backend()}"
  print(open(report.write(a.out, stem, report.metadata(a), summary, md, __doc__)).read())


if __name__ == "__main__":
  main()
