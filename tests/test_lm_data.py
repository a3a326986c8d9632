"""PTB / WikiText-2 readers and AWD-LSTM batching (train/lm/input_pipeline.py)."""

import os

import numpy as np
import pytest
from data_root import DATA, need

from train.lm import input_pipeline as ip

PTB = str(DATA / "ptb")
WT2 = str(DATA / "wikitext-2")


@pytest.fixture(scope="module")
def ptb():
  need("ptb")
  return ip.load_corpus("ptb", PTB)


def test_ptb_counts_match_data_readme(ptb):
  assert len(ptb.train) == 929_589
  assert len(ptb.valid) == 73_760
  assert len(ptb.test) == 82_430
  assert len(ptb.vocab) == 10_000
  # Train alone already holds the whole vocabulary (Mikolov's PTB is closed-vocabulary).
  assert len(np.unique(ptb.train)) == 10_000


def test_wt2_counts_match_data_readme():
  need("wikitext-2")
  c = ip.load_corpus("wt2", WT2)
  assert (len(c.train), len(c.valid), len(c.test)) == (2_088_628, 217_646, 245_569)
  assert len(c.vocab) == 33_278
  assert len(np.unique(c.train)) == 33_278


def test_vocab_round_trip_and_file_order(ptb):
  words = ip.read_words(os.path.join(PTB, "ptb.valid.txt"))
  ids = ptb.vocab.encode(words)
  assert ptb.vocab.decode(ids) == words
  np.testing.assert_array_equal(ptb.vocab.encode(ptb.vocab.decode(ptb.valid)), ptb.valid)
  # Ids in order of first appearance in the train file; <eos> after the first line.
  first_line = open(os.path.join(PTB, "ptb.train.txt"), encoding="utf-8").readline().split()
  assert list(ptb.vocab.itos[: len(first_line)]) == first_line
  assert ptb.vocab.stoi[ip.EOS] == len(first_line)
  assert ptb.train[len(first_line)] == ptb.vocab.stoi[ip.EOS]


def test_unknown_word_error_names_word(ptb):
  with pytest.raises(KeyError, match="zzqx"):
    ptb.vocab.encode(["the", "zzqx"])


def test_missing_files_message_names_them(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    ip.load_corpus("ptb", str(tmp_path))
  msg = str(e.value)
  for f in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt", str(tmp_path)):
    assert f in msg
  with pytest.raises(ValueError, match="dataset must be one of"):
    ip.load_corpus("ptb2", str(tmp_path))


@pytest.mark.parametrize("n,b,bptt", [(1001, 10, 70), (1001, 1, 64), (57, 3, 5), (20, 7, 4)])
def test_eval_batches_count_every_target_once(n, b, bptt):
  data = np.arange(n, dtype=np.int32)  # unique tokens: pairs are identifiable
  batches = list(ip.eval_batches(data, b, bptt))
  assert all(x.inputs.shape == (bptt, b) for x in batches)
  w = np.concatenate([x.weights for x in batches])
  t = np.concatenate([x.targets for x in batches])
  i = np.concatenate([x.inputs for x in batches])
  sel = w > 0
  np.testing.assert_array_equal(np.sort(t[sel]), np.arange(1, n))  # every target exactly once
  np.testing.assert_array_equal(i[sel], t[sel] - 1)  # each with its true predecessor
  assert set(np.unique(w)) <= {0.0, 1.0}
  # Each stream is contiguous in time (the hidden state flows along it).
  for col in range(b):
    real = t[:, col][sel[:, col]]
    if len(real) > 1:
      assert np.all(np.diff(real) == 1)


def test_train_windows_tile_streams_and_follow_awd_lengths():
  data = np.arange(80 * 2000, dtype=np.int32)
  streams = ip.batchify(data, 80)
  assert streams.shape == (2000, 80)
  np.testing.assert_array_equal(streams[:, 1], np.arange(2000, 4000))
  sched = ip.train_windows(streams, 70, seed=0, epoch=3)
  starts = np.array([s for s, _ in sched])
  lens = np.array([n for _, n in sched])
  np.testing.assert_array_equal(starts[1:], np.cumsum(lens)[:-1])  # no gap, no overlap
  assert starts[-1] + lens[-1] == 2000 - 1  # the last target is the last token
  assert lens[:-1].min() >= 5
  assert 60 < lens[:-1].mean() < 72  # 0.95 * 70 + 0.05 * 35 = 68.25
  assert sched == ip.train_windows(streams, 70, seed=0, epoch=3)  # reproducible (resume)
  assert sched != ip.train_windows(streams, 70, seed=0, epoch=4)
  win = ip.make_window(streams, 10, 37, bucket=8)
  assert win.inputs.shape == (40, 80) and win.length == 37
  np.testing.assert_array_equal(win.inputs[:37], streams[10:47])
  np.testing.assert_array_equal(win.targets[:37], streams[11:48])


def test_shard_for_process_splits_columns():
  s = np.arange(24).reshape(3, 8)
  parts = [ip.shard_for_process(s, i, 4) for i in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), s)
  with pytest.raises(ValueError, match="divisible"):
    ip.shard_for_process(s, 0, 3)
