"""MNIST loading: shipped split shapes, and clear errors for missing or damaged files."""

import gzip
import shutil

import numpy as np
import pytest

from train.autoencoder import input_pipeline as ip


def test_shipped_split_shapes_and_range():
  d = ip.load_mnist("shipped")
  assert d["train"].shape == (8000, 784) and d["test"].shape == (2000, 784)
  assert d["train"].dtype == np.float32 and 0.0 == d["train"].min() and d["train"].max() == 1.0


def test_shipped_files_match_the_published_checksums():
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    assert ip.sha256_of(ip.SHIPPED_DIR / name) == ip.SHA256[name]


def test_damaged_file_names_file_and_expected_checksum(tmp_path):
  for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
    shutil.copy(ip.SHIPPED_DIR / "t10k-images-idx3-ubyte.gz", tmp_path / name)
  # train-images has the wrong content (it is the t10k file): checksum mismatch.
  with pytest.raises(ip.DataError) as e:
    ip.load_mnist("idx", str(tmp_path))
  msg = str(e.value)
  assert "train-images-idx3-ubyte.gz" in msg and ip.SHA256["train-images-idx3-ubyte.gz"] in msg


def test_missing_file_names_file_and_checksum(tmp_path):
  with pytest.raises(ip.DataError, match="train-images-idx3-ubyte.gz.*expected sha256 440fcabf"):
    ip.load_mnist("idx", str(tmp_path))
  with pytest.raises(ip.DataError, match="not a folder"):
    ip.load_mnist("idx", str(tmp_path / "nope"))


def test_truncated_idx_is_reported(tmp_path):
  raw = gzip.open(ip.SHIPPED_DIR / "t10k-images-idx3-ubyte.gz").read()
  bad = tmp_path / "images.gz"
  with gzip.open(bad, "wb") as f:
    f.write(raw[:5000])
  with pytest.raises(ip.DataError, match="truncated"):
    ip.read_idx(bad)
  notgz = tmp_path / "x.gz"
  notgz.write_bytes(b"hello")
  with pytest.raises(ip.DataError, match="gzip"):
    ip.read_idx(notgz)
