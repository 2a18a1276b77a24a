"""The data of a run: process 0 generates the synthetic dataset before any process reads it; a
sampler that bins response lengths gets them measured with the run's tokenizer."""

import pathlib

import numpy as np
import pytest

from conftest import SMALL_DATA, tiny_config
from wmtp_jax.data import jsonl, records, run_data, template, tokenizer


@pytest.mark.parametrize("process", [0, 1])
def test_synthetic_dataset_written_by_process_0_then_a_barrier(process, tmp_path, monkeypatch):
  """Process 0 generates the dataset, then every process passes the barrier (the real one: a
  no-op wait with one process) before it returns the directory."""
  events = []
  ensure, sync = run_data.synthetic.cached_dataset, run_data.multihost_utils.sync_global_devices
  monkeypatch.setattr(run_data.jax, "process_index", lambda: process)
  monkeypatch.setattr(run_data.synthetic, "cached_dataset",
                      lambda *a, **k: events.append("generate") or ensure(*a, **k))
  monkeypatch.setattr(run_data.multihost_utils, "sync_global_devices",
                      lambda name: events.append(name) or sync(name))
  config = tiny_config("baseline", pathlib.Path(""))
  config.data.update(dir="", cache_dir=str(tmp_path / "cache"))
  config.data.synthetic.update(SMALL_DATA)
  directory = run_data.dataset_dir(config.data)
  assert directory == run_data.synthetic.cached_path(tmp_path / "cache", **SMALL_DATA)
  assert directory.parent == tmp_path / "cache"
  assert events == (["generate"] if process == 0 else []) + [run_data.DATASET_BARRIER]
  assert (directory / "train.jsonl").is_file() == (process == 0)


def test_length_balanced_pairs_bin_the_tokenized_responses(tmp_path):
  """``sample_indices`` measures the responses with the run's tokenizer before a sampler that bins
  response lengths: every pair's two responses fall in one bin (their prompt + response lengths,
  the index's, differ by a long prompt per problem)."""
  rows = [{"instruction": "solve it " * (7 * p + 1), "input": "", "problem_id": f"p{p}",
           "difficulty": 3, "output": "x = 1\n" * n, "is_correct": bool(k % 2)}
          for p in range(3) for k, n in enumerate([1, 2, 3, 5, 8, 9, 13, 14, 2, 3])]
  path = tmp_path / "train.jsonl"
  jsonl.write_jsonl(path, rows)
  tok = tokenizer.train_bpe_tokenizer([template.format_prompt(r) + r["output"] for r in rows],
                                      300, tmp_path / "tokenizer")
  records.build_index(path, tok, length_fn=lambda r: template.example_length(r, tok))
  store = records.RecordStore(path)
  edges = (0, 10, 20, 40)
  pairs = run_data.sample_indices(store, "length_balanced_pairs",
                                  dict(length_bins=edges, difficulty_bins=None), seed=0,
                                  tokenizer=tok)
  length = lambda i: len(tok.encode(rows[i]["output"], add_special_tokens=False))
  bin_of = lambda n: int(np.searchsorted(edges[1:], n, side="right"))
  assert len(pairs) and all(bin_of(length(c)) == bin_of(length(i)) for c, i in pairs.tolist())
  want = sum(min(sum(bin_of(length(j)) == b and rows[j]["is_correct"] == flag
                     and rows[j]["problem_id"] == pid for j in range(len(rows)))
                 for flag in (True, False))
             for pid in ("p0", "p1", "p2") for b in range(len(edges)))
  assert len(pairs) == want
