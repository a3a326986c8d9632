"""MNIST for the autoencoder: shipped t10k split (default), the four IDX files, or tfds.

Every IDX file with a standard name is checked against its known sha256 before it is parsed; a
missing, truncated or altered file raises :class:`DataError` naming the file and the expected
checksum (never a traceback from inside numpy or gzip).
"""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from train.common import data, errors

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED_DIR = REPO_ROOT / "data" / "mnist"

SHA256 = {
  "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
  "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
  "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
  "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
SHIPPED_TRAIN_SIZE = 8000
"""The shipped 10,000 t10k images are split: the first 8,000 train, the last 2,000 test."""


DataError = errors.DataError
sha256_of = data.sha256_of


def read_idx(path: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
  """Read a gzipped IDX file (MNIST format) into a uint8 array, checking its sha256 first.

  Args:
    path: the ``.gz`` IDX file.
    verify: check the sha256 when the file name is one of the four standard MNIST names.

  Returns:
    Images as (N, 28, 28) uint8 or labels as (N,) uint8.

  Raises:
    DataError: the file is missing, its checksum differs, or its header is not IDX uint8.
  """
  path = pathlib.Path(path)
  expected = SHA256.get(path.name)
  want = f" (expected sha256 {expected})" if expected else ""
  if not path.is_file():
    raise DataError(f"MNIST file not found: {path}{want}")
  if verify and expected is not None:
    got = sha256_of(path)
    if got != expected:
      raise DataError(
        f"MNIST file {path} is damaged or not the standard file: sha256 {got}, expected "
        f"{expected}. Replace it with the original (see ../shared/data/README.md)."
      )
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"MNIST file {path} is not a readable gzip file ({e}){want}") from None
  if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise DataError(f"MNIST file {path} has no IDX uint8 header{want}")
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(raw) - offset != int(np.prod(shape)):
    raise DataError(
      f"MNIST file {path} is truncated: header says {shape}, {len(raw) - offset} bytes{want}"
    )
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def _images(path: pathlib.Path) -> np.ndarray:
  x = read_idx(path)
  if x.ndim != 3:
    raise DataError(f"{path} holds labels of shape {x.shape}, expected images (N, 28, 28)")
  return (x.reshape(len(x), -1).astype(np.float32) / 255.0).astype(np.float32)


def load_mnist(source: str = "shipped", data_dir: str | None = None) -> dict[str, np.ndarray]:
  """Load MNIST images as float32 in [0, 1], flattened to 784.

  Args:
    source: ``"shipped"`` (the repo's t10k split, 8,000 train / 2,000 test), ``"idx"`` (the four
      standard files in ``data_dir``: 60,000 train / 10,000 test) or ``"tfds"`` (``tensorflow_datasets``
      ``mnist``, already prepared; never downloads).
    data_dir: folder of the IDX files for ``"idx"`` (or the tfds data dir for ``"tfds"``).

  Returns:
    ``{"train": (N, 784), "test": (M, 784)}`` float32 arrays.

  Raises:
    DataError: a file is missing or damaged; ValueError: an unknown source.
  """
  if source == "shipped":
    x = _images(SHIPPED_DIR / "t10k-images-idx3-ubyte.gz")
    return {"train": x[:SHIPPED_TRAIN_SIZE], "test": x[SHIPPED_TRAIN_SIZE:]}
  if source == "idx":
    if not data_dir:
      raise errors.ConfigError(
        "config.data_source 'idx' needs config.data_dir: the folder with the four MNIST .gz files"
      )
    d = pathlib.Path(data_dir).expanduser()
    if not d.is_dir():
      raise DataError(f"data_dir {d} is not a folder (it should hold the four MNIST .gz files)")
    return {
      "train": _images(d / "train-images-idx3-ubyte.gz"),
      "test": _images(d / "t10k-images-idx3-ubyte.gz"),
    }
  if source == "tfds":
    return _load_tfds(data_dir)
  raise errors.ConfigError(f"config.data_source must be 'shipped', 'idx' or 'tfds', got {source!r}")


def _load_tfds(data_dir: str | None) -> dict[str, np.ndarray]:
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError(
      "source 'tfds' needs tensorflow_datasets installed (pip install tensorflow-datasets)"
    ) from None
  try:
    out = {}
    for split in ("train", "test"):
      ds = tfds.as_numpy(
        tfds.load("mnist", split=split, batch_size=-1, data_dir=data_dir, download=False)
      )
      out[split] = ds["image"].reshape(len(ds["image"]), -1).astype(np.float32) / 255.0
    return out
  except Exception as e:  # tfds raises assorted errors when the data is not prepared
    raise DataError(
      f"tfds 'mnist' is not prepared in {data_dir or 'the default tfds data dir'}: {e}"
    ) from None
