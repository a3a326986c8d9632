"""Multi-process set-up: ``jax.distributed.initialize`` from flags or the environment, else one process.

Call :func:`initialize` once, first thing in ``main`` (before any JAX computation). Sources, in order:
explicit arguments (e.g. from absl flags defined by :func:`define_flags`), then the environment
variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and
``JAX_LOCAL_DEVICE_IDS``. With no coordinator address and at most one process the program runs
single-process and nothing is initialised. On CPU the cross-process collectives use gloo.
"""

from __future__ import annotations

import dataclasses
import os

import jax


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
  """Where this process sits in the job.

  Attributes:
    process_index: index of this process, 0 .. process_count - 1.
    process_count: number of processes in the job.
    local_device_count: devices this process drives (the pmap axis size).
    device_count: devices over all processes.
  """

  process_index: int
  process_count: int
  local_device_count: int
  device_count: int

  @property
  def is_main(self) -> bool:
    """True on process 0, the one that logs, plots and prints."""
    return self.process_index == 0


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError as e:
    raise ValueError(f"environment variable {name}={value!r} must be an integer") from e


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: str | list[int] | None = None,
) -> ProcessInfo:
  """Initialise ``jax.distributed`` when a multi-process job is described, else stay single-process.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator (env ``JAX_COORDINATOR_ADDRESS``).
    num_processes: total number of processes (env ``JAX_NUM_PROCESSES``).
    process_id: this process's index (env ``JAX_PROCESS_ID``).
    local_device_ids: devices this process uses, list or comma string (env ``JAX_LOCAL_DEVICE_IDS``).

  Returns:
    The resulting :class:`ProcessInfo`.

  Raises:
    ValueError: a multi-process job is described only in part (e.g. an address but no process id).
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  if isinstance(local_device_ids, str):
    local_device_ids = [int(i) for i in local_device_ids.split(",") if i.strip()] or None
  multi = coordinator_address is not None or (num_processes or 1) > 1
  if multi and not jax.distributed.is_initialized():
    if coordinator_address is None or num_processes is None or process_id is None:
      raise ValueError(
        "multi-process run needs coordinator_address, num_processes and process_id "
        f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}); set the flags "
        "or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID"
      )
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    # gloo is the CPU collective backend that works between processes on one host or many.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      local_device_ids=local_device_ids,
    )
  return process_info()


def process_info() -> ProcessInfo:
  """Return this process's :class:`ProcessInfo` (valid with or without ``jax.distributed``)."""
  return ProcessInfo(
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    local_device_count=jax.local_device_count(),
    device_count=jax.device_count(),
  )


def define_flags() -> None:
  """Define absl flags ``--coordinator_address --num_processes --process_id --local_device_ids`` once.

  Every program's ``main`` module calls this at import, before its flags (and config file) are
  parsed, so it also installs :func:`train.common.errors.install`: a bad config file or value, data
  file or checkpoint then ends the program with one ``error:`` line instead of a traceback.
  """
  from absl import flags

  from train.common import errors

  errors.install()
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_string("coordinator_address", None, "host:port of the jax.distributed coordinator.")
  flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process job.")
  flags.DEFINE_integer("process_id", None, "Index of this process in a multi-process job.")
  flags.DEFINE_string(
    "local_device_ids", None, "Comma-separated local device ids for this process."
  )


def initialize_from_flags() -> ProcessInfo:
  """Call :func:`initialize` with the values of the flags from :func:`define_flags`.

  Returns:
    The resulting :class:`ProcessInfo`.
  """
  from absl import flags

  f = flags.FLAGS
  return initialize(f.coordinator_address, f.num_processes, f.process_id, f.local_device_ids)
