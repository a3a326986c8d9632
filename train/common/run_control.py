"""The run-control config fields every program shares, set and checked in one place."""

from __future__ import annotations

import jax
import ml_collections

from train.common import errors, parallel


def add_run_control(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Set the run-control fields every program's config has (defaults shown), and return ``c``.

  Example:
    >>> add_run_control(ml_collections.ConfigDict()).log_every
    20
  """
  c.checkpoint_every_epochs = 1  # also at the last epoch, at max_steps and on SIGTERM/SIGINT
  c.skip_nonfinite = False  # True: skip non-finite steps (counted) instead of stopping
  c.max_steps = -1  # > 0: stop after this many steps with a resumable checkpoint
  c.log_every = 20  # steps between train/* rows and non-finite checks (one host sync each)
  c.progress = True  # progress bar (also off with TQDM_DISABLE=1)
  c.record_sparsity = True  # eval/sparsity/<layer>/{hoyer,zero_fraction} at every evaluation
  c.verify_data = True  # check standard data files' size and sha256 on every load (docs/faults.md)
  c.num_devices = 0  # 0: every device of every process; n: the first n (single process only)
  c.param_sharding = "replicated"  # or "fsdp": params and optimizer state split over the devices
  return c


def validate_run_control(config: ml_collections.ConfigDict) -> None:
  """Raise :class:`~train.common.errors.ConfigError` naming a run-control field out of range."""
  for name in ("checkpoint_every_epochs", "log_every"):
    if int(config[name]) <= 0:
      raise errors.ConfigError(f"config.{name} must be a positive integer, got {config[name]}")
  n = int(config.get("num_devices", 0))
  if n < 0 or (n and (jax.process_count() > 1 or n > jax.local_device_count())):
    raise errors.ConfigError(
      f"config.num_devices must be 0 (every device) or at most the {jax.local_device_count()} "
      f"local devices of a single-process run, got {n}"
    )
  sharding = config.get("param_sharding", "replicated")
  if sharding not in parallel.PARAM_SHARDINGS:
    raise errors.ConfigError(
      f"config.param_sharding must be one of {parallel.PARAM_SHARDINGS}, got {sharding!r}"
    )
  if int(config.max_steps) == 0:
    raise errors.ConfigError("config.max_steps must be > 0, or -1 for no limit; got 0")
