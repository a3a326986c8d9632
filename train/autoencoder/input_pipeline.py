"""MNIST for the autoencoder: shipped t10k split (default), the four IDX files, or tfds.

Every IDX file with a standard name is checked against its known size and sha256 each time it is
read (:mod:`train.common.datafiles`; ``--config.verify_data=False`` skips that for a modified
copy); a missing, truncated or altered file raises :class:`DataError` naming the file (never a
traceback from inside numpy or gzip).
"""

from __future__ import annotations

import pathlib

import numpy as np

from train.common import data, datafiles, errors

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED_DIR = REPO_ROOT / "data" / "mnist"
SHA256 = {name: known.sha256 for name, known in datafiles.MNIST.items()}
SHIPPED_TRAIN_SIZE = 8000
"""The shipped 10,000 t10k images are split: the first 8,000 train, the last 2,000 test."""


DataError = errors.DataError
sha256_of = data.sha256_of
read_idx = datafiles.read_idx


def _images(path: pathlib.Path, verify: bool) -> np.ndarray:
  x = read_idx(path, verify=verify)
  if x.ndim != 3:
    raise DataError(f"{path} holds labels of shape {x.shape}, expected images (N, 28, 28)")
  return (x.reshape(len(x), -1).astype(np.float32) / 255.0).astype(np.float32)


def load_mnist(
  source: str = "shipped", data_dir: str | None = None, *, verify: bool = True
) -> dict[str, np.ndarray]:
  """Load MNIST images as float32 in [0, 1], flattened to 784.

  Args:
    source: ``"shipped"`` (the repo's t10k split, 8,000 train / 2,000 test), ``"idx"`` (the four
      standard files in ``data_dir``: 60,000 train / 10,000 test) or ``"tfds"`` (``tensorflow_datasets``
      ``mnist``, already prepared; never downloads).
    data_dir: folder of the IDX files for ``"idx"`` (or the tfds data dir for ``"tfds"``).
    verify: check the IDX files' sizes and sha256 (``config.verify_data``).

  Returns:
    ``{"train": (N, 784), "test": (M, 784)}`` float32 arrays.

  Raises:
    DataError: a file is missing or damaged; ValueError: an unknown source.
  """
  if source == "shipped":
    x = _images(SHIPPED_DIR / "t10k-images-idx3-ubyte.gz", verify)
    return {"train": x[:SHIPPED_TRAIN_SIZE], "test": x[SHIPPED_TRAIN_SIZE:]}
  if source == "idx":
    if not data_dir:
      raise errors.ConfigError(
        "config.data_source 'idx' needs --config.data_dir=<the folder with the four MNIST .gz files>"
      )
    d = pathlib.Path(data_dir).expanduser()
    if not d.is_dir():
      raise DataError(
        f"--config.data_dir={d} is not a folder (it should hold the four MNIST .gz files)"
      )
    return {
      "train": _images(d / "train-images-idx3-ubyte.gz", verify),
      "test": _images(d / "t10k-images-idx3-ubyte.gz", verify),
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
