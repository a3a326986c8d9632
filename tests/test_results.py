"""train/common/results.py: the final row and results.json of a finished run."""

import json

import ml_collections

from train.common import metrics, results


def test_final_row_and_results_json_with_an_infinite_perplexity(tmp_path):
  config = ml_collections.ConfigDict({"q": 1.5})
  history = [{"epoch": 1, "eval/ppl": float("inf")}]
  row = {"epoch": 1, "test/ppl": float("inf")}
  results.write(str(tmp_path), 7, row, {"test_ppl": float("inf"), "steps": 7}, config, history)
  rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  assert rows[-1]["step"] == 7 and rows[-1]["test/ppl"] == float("inf")
  got = json.load(open(tmp_path / "results.json"))
  assert got["test_ppl"] == float("inf") and got["config"] == {"q": 1.5}
  assert got["history"] == history
