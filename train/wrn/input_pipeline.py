"""CIFAR-10/100 input pipeline for the WRN program: loading, WRN augmentation, shuffling, host sharding, batching.

Sources, in order of preference for `source="auto"`:
  * the official binary archives `cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz` (or their extracted folders
    `cifar-10-batches-bin/`, `cifar-100-binary/`) in `data_dir`, read with numpy. The Python-version archives are
    never opened: unpickling runs code.
  * TensorFlow Datasets `cifar10` / `cifar100` through `tfds.data_source` (ArrayRecord; needs no TensorFlow) when
    `tensorflow_datasets` is installed and the prepared data is in `data_dir` (or TFDS's default folder).
  * "synthetic": a small learnable stand-in of the right shape (class-dependent colour patterns plus noise), for CI
    and for throughput measurements where CIFAR is absent.

Batches are plain numpy dicts on the host: `image` float32 (B_local, 32, 32, 3) normalised per channel, `label`
int32 (B_local,), and for evaluation `mask` float32 (B_local,) that is 0 on padding rows.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
import textwrap
import zlib
from collections.abc import Iterator

import numpy as np
from absl import logging as absl_logging

from train.common import data, datafiles, errors

# Per-channel statistics of the CIFAR-10 training set on the 0..255 scale, as in the WRN reference.
MEAN = np.array([125.3, 123.0, 113.9], np.float32)
STD = np.array([63.0, 62.1, 66.7], np.float32)
PAD = 4
IMAGE_SHAPE = (32, 32, 3)
_PIXELS = 32 * 32 * 3

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
SOURCES = ("auto", "binary", "tfds", "synthetic")

# Official binary layout: per record `label_bytes` label bytes then 3072 pixel bytes (R plane, G plane, B plane,
# each 32x32 row-major). CIFAR-100 records hold (coarse label, fine label); we use the fine label.
# `known`: the archive's size and sha256 (as published with TFDS's download checksums), checked on every
# read; `records`: records per batch file, so an extracted batch of another size is named before decoding.
_BINARY = {
  "cifar10": {
    "archive": "cifar-10-binary.tar.gz",
    "known": datafiles.KnownFile(
      170_052_171, "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
    ),
    "records": {**{f"data_batch_{i}.bin": 10_000 for i in range(1, 6)}, "test_batch.bin": 10_000},
    "folder": "cifar-10-batches-bin",
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["test_batch.bin"],
    "label_bytes": 1,
    "label_index": 0,
  },
  "cifar100": {
    "archive": "cifar-100-binary.tar.gz",
    "known": datafiles.KnownFile(
      168_513_733, "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"
    ),
    "records": {"train.bin": 50_000, "test.bin": 10_000},
    "folder": "cifar-100-binary",
    "train": ["train.bin"],
    "test": ["test.bin"],
    "label_bytes": 2,
    "label_index": 1,
  },
}


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """An in-memory image classification split: uint8 images (N, 32, 32, 3) and int32 labels (N,)."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __post_init__(self) -> None:
    """Check shapes, dtypes and label range once, where the data enters."""
    if (
      self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[1:] != IMAGE_SHAPE
    ):
      raise ValueError(
        f"images must be uint8 (N, 32, 32, 3), got {self.images.dtype} {self.images.shape}"
      )
    if self.labels.shape != (self.images.shape[0],):
      raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {self.labels.shape}")
    if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
      raise ValueError(
        f"labels must lie in [0, {self.num_classes}), got [{self.labels.min()}, {self.labels.max()}]"
      )

  def __len__(self) -> int:
    """Number of examples."""
    return int(self.labels.shape[0])


def _check_name(name: str) -> None:
  if name not in NUM_CLASSES:
    raise ValueError(f"dataset must be one of {tuple(NUM_CLASSES)}, got {name!r}")


def _check_split(split: str) -> None:
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def decode_binary_records(
  raw: bytes, label_bytes: int, label_index: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
  """Decode concatenated official CIFAR binary records.

  Args:
    raw: the file's bytes; each record is `label_bytes` label bytes then 3072 pixel bytes (R, G, B planes).
    label_bytes: 1 for CIFAR-10, 2 for CIFAR-100 (coarse, fine).
    label_index: which label byte to keep.
    what: file name for error messages.

  Returns:
    (images uint8 (N, 32, 32, 3), labels int32 (N,)).

  Raises:
    DataError: the size is not a positive multiple of the record size (a truncated or foreign file).
  """
  record = label_bytes + _PIXELS
  if len(raw) == 0 or len(raw) % record:
    raise errors.DataError(
      f"{what}: {len(raw):,} bytes is not a positive multiple of the {record}-byte CIFAR record "
      "(truncated, or not an official CIFAR binary batch)"
    )
  rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
  labels = rows[:, label_index].astype(np.int32)
  images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def read_cifar_binary(data_dir: str, name: str, split: str, *, verify: bool = True) -> ArrayDataset:
  """Read a CIFAR split from the official binary archive (or its extracted folder) in `data_dir`.

  The archive is checked against its published size and sha256 on every read (~0.3 s for 170 MB,
  docs/faults.md); an extracted batch against its size (its own sha256 is not published), and its
  labels against the class count.

  Args:
    data_dir: folder holding `cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz` or the extracted folder.
    name: "cifar10" or "cifar100".
    split: "train" or "test".
    verify: check sizes and the sha256; None: the process default (``config.verify_data``); the
      record layout and labels are checked always.

  Returns:
    The split as an ArrayDataset (CIFAR-100: fine labels).

  Raises:
    DataError: a file is missing, damaged, of the wrong size, or the archive cannot be read.
  """
  _check_name(name)
  _check_split(split)
  spec = _BINARY[name]
  folder = os.path.join(data_dir, spec["folder"])
  archive = os.path.join(data_dir, spec["archive"])
  parts: list[tuple[np.ndarray, np.ndarray]] = []
  if os.path.isdir(folder):
    for fname in spec[split]:
      path = os.path.join(folder, fname)
      if not os.path.isfile(path):
        raise errors.DataError(
          f"{path} is missing (expected the files of the official {spec['archive']})"
        )
      _check_batch_size(path, os.path.getsize(path), spec, fname, verify)
      with open(path, "rb") as f:
        parts.append(
          decode_binary_records(f.read(), spec["label_bytes"], spec["label_index"], path)
        )
  elif os.path.isfile(archive):
    datafiles.verify_file(
      archive, spec["known"], verify=verify, hint=" (from https://www.cs.toronto.edu/~kriz/)"
    )
    parts = _read_archive(archive, spec, split, verify)
  else:
    raise errors.DataError(
      f"no CIFAR data for {name!r} in {data_dir!r}: expected {spec['archive']} (from "
      f"https://www.cs.toronto.edu/~kriz/) or its extracted folder {spec['folder']}/"
    )
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  if labels.max() >= NUM_CLASSES[name]:  # garbled bytes in a label position
    raise errors.DataError(
      f"CIFAR {split} data in {data_dir} has label {labels.max()}, but {name} has "
      f"{NUM_CLASSES[name]} classes (a damaged file, or the other CIFAR)"
    )
  return ArrayDataset(images, labels, NUM_CLASSES[name])


def _check_batch_size(where: str, size: int, spec: dict, fname: str, verify: bool) -> None:
  record = spec["label_bytes"] + _PIXELS
  want = spec["records"][fname] * record
  if verify and size != want:
    raise errors.DataError(
      f"{where} is {size:,} bytes, expected {want:,} (truncated, or not the official batch); "
      f"{datafiles.OPT_OUT}"
    )


def _read_archive(
  archive: str, spec: dict, split: str, verify: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
  parts = []
  try:
    with tarfile.open(archive, "r:gz") as tar:
      members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
      for fname in spec[split]:
        if fname not in members:
          raise errors.DataError(
            f"{archive} is damaged: no member {fname!r} (or it is not the official archive)"
          )
        where = f"{archive}: member {members[fname].name}"
        _check_batch_size(where, members[fname].size, spec, fname, verify)
        f = tar.extractfile(members[fname])
        assert f is not None
        parts.append(
          decode_binary_records(f.read(), spec["label_bytes"], spec["label_index"], where)
        )
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    if isinstance(e, errors.DataError):
      raise
    raise errors.DataError(
      f"{archive} is not a readable .tar.gz archive ({type(e).__name__}: {e})"
    ) from None
  return parts


def read_tfds(name: str, split: str, data_dir: str | None = None) -> ArrayDataset:
  """Read a CIFAR split through `tfds.data_source` (ArrayRecord files; TensorFlow is not needed).

  Args:
    name: "cifar10" or "cifar100" (TFDS names; cifar100's `label` is the fine label).
    split: "train" or "test".
    data_dir: TFDS data folder; None for TFDS's default.

  Returns:
    The split as an ArrayDataset.
  """
  _check_name(name)
  _check_split(split)
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError("source='tfds' needs `pip install tensorflow-datasets`") from e
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # its warnings on a missing dataset: see below
  try:
    # download=False: use prepared data only; a missing dataset is an error here, not a silent download.
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises assorted types for missing/unprepared data
    archive, folder = _BINARY[name]["archive"], _BINARY[name]["folder"]
    reason = textwrap.shorten(f"{type(e).__name__}: {e}", 200, placeholder=" ...")
    if data_dir:
      head = (
        f"no CIFAR data for {name!r} in --config.data_dir={data_dir}: no {archive}, no {folder}/"
      )
    else:
      head = (
        f"no CIFAR data for {name!r}: set --config.data_dir to the folder holding {archive} (from "
        "https://www.cs.toronto.edu/~kriz/); TFDS's default folder has none either"
      )
    raise errors.DataError(
      f"{head}, and no TFDS data prepared with `tfds build {name} --file_format=array_record` "
      f"(TFDS says {reason})"
    ) from None
  finally:
    absl_logging.set_verbosity(verbosity)
  n = len(source)
  images = np.empty((n,) + IMAGE_SHAPE, np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):  # ArrayRecord random access; ~1 min for 50k records, done once per run.
    ex = source[i]
    images[i] = ex["image"]
    labels[i] = ex["label"]
  return ArrayDataset(images, labels, NUM_CLASSES[name])


def synthetic(num_examples: int, num_classes: int, seed: int) -> ArrayDataset:
  """A learnable CIFAR-shaped stand-in: each class has its own colour pattern, plus uniform pixel noise.

  Args:
    num_examples: N.
    num_classes: number of classes (labels are i mod num_classes, then shuffled).
    seed: numpy seed.

  Returns:
    An ArrayDataset of N uint8 images.
  """
  rng = np.random.default_rng(seed)
  patterns = rng.integers(0, 256, size=(num_classes, 4, 4, 3)).astype(np.float32)
  labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int32)
  base = np.repeat(np.repeat(patterns[labels], 8, axis=1), 8, axis=2)
  noise = rng.uniform(-64, 64, size=(num_examples,) + IMAGE_SHAPE)
  images = np.clip(base + noise, 0, 255).astype(np.uint8)
  return ArrayDataset(images, labels, num_classes)


def load(
  name: str,
  split: str,
  data_dir: str | None,
  source: str = "auto",
  *,
  synthetic_size: int = 512,
  seed: int = 0,
  verify: bool = True,
) -> ArrayDataset:
  """Load a split from the configured source.

  Args:
    name: "cifar10" or "cifar100".
    split: "train" or "test".
    data_dir: folder with the binary archives / TFDS data (may be None for TFDS's default or synthetic).
    source: "auto" (binary archives if present in data_dir, else TFDS), "binary", "tfds" or "synthetic".
    synthetic_size: number of examples for the synthetic source (test split: a quarter, at least 1).
    seed: seed of the synthetic source (the test split uses seed + 1 and the same class patterns' seed).
    verify: check the binary archive's size and sha256 (see :func:`read_cifar_binary`).

  Returns:
    The split as an ArrayDataset.
  """
  _check_name(name)
  _check_split(split)
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
  if source == "synthetic":
    full = synthetic(synthetic_size + max(1, synthetic_size // 4), NUM_CLASSES[name], seed)
    sl = slice(0, synthetic_size) if split == "train" else slice(synthetic_size, None)
    return ArrayDataset(full.images[sl], full.labels[sl], full.num_classes)
  if data_dir and not os.path.isdir(data_dir):
    raise errors.DataError(
      f"--config.data_dir={data_dir} does not exist: it should be the folder holding "
      f"{_BINARY[name]['archive']} (or its extracted folder {_BINARY[name]['folder']}/)"
    )
  if source == "binary" or (source == "auto" and data_dir and _has_binary(data_dir, name)):
    if not data_dir:
      raise errors.ConfigError(
        f"config.data_source 'binary' needs --config.data_dir=<folder holding "
        f"{_BINARY[name]['archive']}>"
      )
    return read_cifar_binary(data_dir, name, split, verify=verify)
  try:
    return read_tfds(name, split, data_dir)
  except ImportError:
    where = f"--config.data_dir={data_dir}" if data_dir else "no --config.data_dir set"
    raise errors.DataError(
      f"no CIFAR data ({where}): set --config.data_dir to the folder holding "
      f"{_BINARY[name]['archive']} (from https://www.cs.toronto.edu/~kriz/); reading TFDS data "
      "instead needs tensorflow-datasets installed"
    ) from None


def _has_binary(data_dir: str, name: str) -> bool:
  spec = _BINARY[name]
  return os.path.isfile(os.path.join(data_dir, spec["archive"])) or os.path.isdir(
    os.path.join(data_dir, spec["folder"])
  )


def normalize(images: np.ndarray) -> np.ndarray:
  """(x - mean) / std per channel on the 0..255 scale; uint8 (..., 3) -> float32."""
  return (images.astype(np.float32) - MEAN) / STD


def augment(
  images: np.ndarray, rng: np.random.Generator, offset: int = 0, total: int | None = None
) -> np.ndarray:
  """WRN augmentation: reflect-pad 4 pixels, random 32x32 crop, random horizontal flip (p = 1/2).

  Args:
    images: uint8 (B, 32, 32, 3).
    rng: numpy generator (one draw of offsets and flips per image).
    offset: position of ``images`` in a larger batch of ``total`` images whose draws are made at once
      (a host's share of a global batch), so an image's augmentation does not depend on the host count.
    total: size of that larger batch (default: B).

  Returns:
    uint8 (B, 32, 32, 3) augmented images.
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
  oy, ox, flip = augment_draws(rng, b, offset, total)
  rows = oy[:, None] + np.arange(h)[None, :]
  cols = ox[:, None] + np.arange(w)[None, :]
  cols = np.where(flip[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
  """The generator of global batch ``batch``'s augmentation draws: seeded (seed, epoch, batch, 0).

  The trailing 0 keeps single-host runs' draws as they were before hosts shared a batch's draws.
  """
  return np.random.default_rng([seed, epoch, batch, 0])


def augment_draws(
  rng: np.random.Generator, size: int, offset: int = 0, total: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Crop offsets and flips of ``size`` images at ``offset`` in a batch of ``total``, drawn at once.

  oy, ox ~ U{0..2 PAD} and flip = U[0, 1) < 1/2, each drawn for all ``total`` images in that
  order, then ``[offset, offset + size)`` kept: the one definition of the WRN augmentation's
  randomness, for the host pipeline (:func:`augment`) and the on-device one (``augment.py``).

  Returns:
    (oy, ox, flip): int64, int64 and bool arrays of length ``size``.
  """
  total = size if total is None else total
  oy = rng.integers(0, 2 * PAD + 1, size=total)[offset : offset + size]
  ox = rng.integers(0, 2 * PAD + 1, size=total)[offset : offset + size]
  flip = (rng.random(total) < 0.5)[offset : offset + size]
  return oy, ox, flip


def _check_hosts(global_batch: int, host_id: int, num_hosts: int) -> int:
  if global_batch < 1:
    raise ValueError(f"global batch size must be >= 1, got {global_batch}")
  if num_hosts < 1 or not 0 <= host_id < num_hosts:
    raise ValueError(f"need 0 <= host_id < num_hosts, got host_id={host_id}, num_hosts={num_hosts}")
  if global_batch % num_hosts:
    raise ValueError(
      f"global batch size {global_batch} must be divisible by the number of hosts {num_hosts}"
    )
  return global_batch // num_hosts


def train_steps_per_epoch(num_examples: int, global_batch: int) -> int:
  """Training batches per epoch, floor(N / B): the last partial batch is dropped explicitly.

  N mod B examples (different ones each epoch, as the order is reshuffled) are left out of each epoch.
  """
  return data.steps_per_epoch(num_examples, global_batch)


def epoch_batches(
  ds: ArrayDataset,
  *,
  global_batch: int,
  seed: int,
  epoch: int,
  host_id: int = 0,
  num_hosts: int = 1,
  start_batch: int = 0,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """(global batch index b, this host's raw uint8 slice of batch b) for one shuffled epoch.

  The order is `train.common.data`'s: a permutation from (seed, epoch), global batch b = slice b of
  it, this host reading its contiguous share. Args as :func:`train_batches`.
  """
  _check_hosts(global_batch, host_id, num_hosts)
  batches = data.iterate_epoch(
    {"image": ds.images, "label": ds.labels},
    global_batch,
    seed,
    epoch,
    start_step=start_batch,
    process_index=host_id,
    process_count=num_hosts,
  )
  yield from enumerate(batches, start=start_batch)


def train_batches(
  ds: ArrayDataset,
  *,
  global_batch: int,
  seed: int,
  epoch: int,
  host_id: int = 0,
  num_hosts: int = 1,
  start_batch: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of augmented, shuffled training batches for this host.

  The global order is `train.common.data`'s: a permutation from (seed, epoch), global batch b = slice b of it,
  this host reading its contiguous share. Batch b's augmentation comes from a generator seeded with
  (seed, epoch, b) and is drawn for the whole global batch (each host uses its slice), so an epoch can
  resume at any batch and see exactly what an uninterrupted run saw, with any number of hosts.

  Args:
    ds: training split.
    global_batch: batch size summed over all hosts and devices.
    seed: run seed.
    epoch: epoch number (0-based); selects the permutation.
    host_id: this host's index (jax.process_index()).
    num_hosts: number of hosts (jax.process_count()).
    start_batch: first batch to yield (for mid-epoch resume).

  Yields:
    {"image": float32 (B_local, 32, 32, 3), "label": int32 (B_local,)} with B_local = global_batch / num_hosts.
  """
  for b, batch in epoch_batches(
    ds,
    global_batch=global_batch,
    seed=seed,
    epoch=epoch,
    host_id=host_id,
    num_hosts=num_hosts,
    start_batch=start_batch,
  ):
    # Draws for the whole global batch, this host using its slice: 2 hosts x 2 devices augment every
    # example as 1 host x 4 does.
    offset = host_id * (global_batch // num_hosts)  # num_hosts checked by epoch_batches
    image = augment(batch["image"], batch_rng(seed, epoch, b), offset=offset, total=global_batch)
    yield {"image": normalize(image), "label": batch["label"]}
