"""config.param_sharding="fsdp": the train state split over 4 devices trains as the replicated one.

FSDP changes where the parameters and optimizer state live, not the step's arithmetic: the noise
masks are drawn for the global batch as before, and XLA gathers the parameters where the step uses
them. What may change is the order in which the gradient's per-device partial sums are added (a
reduce-scatter instead of an all-reduce), so the parameters after a few steps agree to float32
rounding carried through those steps: 1e-5, and 2e-5 for the LM (measured 3.4e-6; the
device-count test allows the LM 5e-5, for 8 devices' sums).
"""

from __future__ import annotations

import jax
import program_steps
import pytest
from data_root import need

from train.common import errors, parallel, run_control

DEVICES = 4


def _split(tree) -> list[bool]:
  """For each leaf: is it split over the mesh (each device holding a part)?"""
  return [not x.sharding.is_fully_replicated for x in jax.tree.leaves(tree)]


def test_fsdp_sharding_takes_the_largest_divisible_axis() -> None:
  mesh = parallel.make_mesh(DEVICES)
  spec = lambda shape: tuple(parallel.fsdp_sharding(shape, mesh).spec)  # noqa: E731
  assert spec((784, 32)) == ("data",)
  assert spec((30, 64)) == (None, "data")  # 30 is not divisible by 4
  assert spec((7,)) == spec(()) == ()  # nothing divisible: replicated
  assert spec((2, 8)) == (None, "data")


def test_bad_param_sharding_is_one_line_naming_the_field() -> None:
  c = run_control.add_run_control(__import__("ml_collections").ConfigDict())
  c.param_sharding = "zero3"
  with pytest.raises(errors.ConfigError, match=r"^config.param_sharding must be one of .*'zero3'$"):
    run_control.validate_run_control(c)


def test_autoencoder_fsdp_trains_as_replicated_with_the_state_split() -> None:
  fsdp, initial = program_steps.autoencoder(DEVICES, 5, "fsdp")
  repl, _ = program_steps.autoencoder(DEVICES, 5, "replicated")
  # Both kernels (784 x 32, 32 x 784) and Adam's moments of them are split; the step's output
  # keeps that layout.
  kernels = {k: fsdp["params"][k]["kernel"] for k in ("encoder", "decoder")}
  assert not any(_split(repl["params"])) and all(_split(kernels))
  assert sum(_split(fsdp["opt_state"])) >= 4
  for k in kernels.values():
    assert {s.data.shape[k.ndim - 2] for s in k.addressable_shards} <= {784 // DEVICES, 32}
  got, want = parallel.to_host(fsdp["params"]), parallel.to_host(repl["params"])
  print(f"autoencoder: max |fsdp - replicated| {program_steps.max_diff(got, want):.3g}")
  # 5 Adam steps at lr 1e-3 with Sparseout noise: at most ~1 ulp of an update per step (measured
  # 0 on this CPU: XLA kept the order of the additions); training moved the parameters far more.
  assert program_steps.max_diff(got, want) <= 1e-5
  assert program_steps.max_diff(want, initial) > 1e-3


def _ae_config(**kw):
  from train.autoencoder.configs import default

  c = default.get_config()
  c.hidden, c.batch_size, c.num_epochs, c.num_devices = 32, 64, 1, DEVICES
  c.train_eval_size, c.eval_batch_size, c.progress = 200, 200, False
  c.update(kw)
  return c


@pytest.mark.slow
def test_a_replicated_checkpoint_resumes_with_fsdp(tmp_path) -> None:
  from train.autoencoder import train

  full = train.train_and_evaluate(_ae_config(), str(tmp_path / "full"))
  train.train_and_evaluate(_ae_config(max_steps=20), str(tmp_path / "cut"))
  resumed = train.train_and_evaluate(_ae_config(param_sharding="fsdp"), str(tmp_path / "cut"))
  assert resumed["steps"] == full["steps"]
  print(
    f"resume: max |fsdp-resumed - replicated| {program_steps.max_diff(resumed['final_params'], full['final_params']):.3g}"
  )
  # The orbax checkpoint holds global arrays; restored into the FSDP layout, the run goes on. Only
  # the steps after the resume add their partial sums in another order (tolerance as above).
  assert program_steps.max_diff(resumed["final_params"], full["final_params"]) <= 1e-5


@pytest.mark.slow
def test_lm_fsdp_trains_as_replicated_with_the_weight_drop_on() -> None:
  # The LM's weight drop draws a mask shaped as the hidden-to-hidden weights: with FSDP it is drawn
  # with the weights' sharding, and must still be the same draw.
  need("ptb")
  fsdp, initial = program_steps.lm(DEVICES, 3, "fsdp")
  repl, _ = program_steps.lm(DEVICES, 3, "replicated")
  assert sum(_split(fsdp["params"])) >= len(jax.tree.leaves(fsdp["params"])) // 2
  got, want = parallel.to_host(fsdp["params"]), parallel.to_host(repl["params"])
  print(f"lm: max |fsdp - replicated| {program_steps.max_diff(got, want):.3g}")
  # As tests/test_device_count.py's LM: 3 clipped SGD steps at lr 30 (measured 3.4e-6).
  assert program_steps.max_diff(got, want) <= 2e-5
  assert program_steps.max_diff(want, initial) > 2e-3
