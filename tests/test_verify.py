"""``python -m wmtp_jax.convert verify``: passes on faithful conversions and fails on perturbed
ones, for a tiny HF LLaMA-3.2-style model (``llama3`` RoPE scaling with a short original context,
tied embeddings, θ = 500000; ``save_pretrained`` safetensors), a tiny Meta MTP checkpoint
(``consolidated.pth`` + ``params.json`` of ``TorchMTP``), both written in the real formats, and
that MTP model's ``export-hf`` (every head through ``transformers``)."""

import json
import runpy
import shutil
import sys

import numpy as np
import pytest
from convert_helpers import (LLAMA3_SCALING, hf_llama3, meta_model, run,  # noqa: F401
                             tokenizer_dir, write_hf)

from wmtp_jax.checkpoints import pretrained, verify


@pytest.fixture(scope="module")
def llama3(tmp_path_factory, tokenizer_dir):
  """``(hf_dir, converted_dir)`` of a random tiny LLaMA-3-style model, converted in fp32."""
  root = tmp_path_factory.mktemp("llama3")
  _, ref = hf_llama3(seed=5)
  src = write_hf(root / "hf", ref, "safetensors", tokenizer_dir)
  run("hf", "--src", src, "--dst", root / "converted")
  return src, root / "converted"


def perturbed_copy(converted, dst, path, scale):
  """A copy of the converted directory with the parameter at ``path`` multiplied by ``scale``."""
  config, params = pretrained.load_pretrained(converted)
  node = params = {k: v for k, v in params.items()}
  for key in path[:-1]:
    node[key] = dict(node[key])
    node = node[key]
  node[path[-1]] = np.asarray(node[path[-1]]) * scale
  pretrained.save_params(dst, config, params)
  return dst


def test_faithful_llama3_conversion_passes_beyond_the_original_context(llama3):
  src, converted = llama3
  summary = run("verify", "--hf", src, "--converted", converted)
  original = LLAMA3_SCALING["original_max_position_embeddings"]
  assert summary["passed"] and summary["tokens"] == [2, original + verify.BEYOND_CONTEXT]
  (head,) = summary["heads"]
  assert head["head"] == 0 and head["passed"] and head["max_abs_diff"] < 1e-4 * (
      1 + head["max_abs_logit"])
  assert summary["source"]["format"] == "hf"


def test_perturbed_llama3_conversion_fails(llama3, tmp_path):
  src, converted = llama3
  # One weight off by 0.1%: the final norm of the tied model.
  bad = perturbed_copy(converted, tmp_path / "weight", ("model", "norm", "weight"), 1.001)
  summary = run("verify", "--hf", src, "--converted", bad)
  assert not summary["passed"] and summary["heads"][0]["worst_over_allowed"] > 1
  # The llama3 RoPE scaling lost in the config (a conversion that ignores it): caught as well.
  no_scaling = tmp_path / "no_scaling"
  shutil.copytree(converted, no_scaling)
  data = json.loads((no_scaling / pretrained.CONFIG_FILE).read_text())
  data["config"]["rope_scaling"] = None
  (no_scaling / pretrained.CONFIG_FILE).write_text(json.dumps(data))
  assert not run("verify", "--hf", src, "--converted", no_scaling)["passed"]


def test_meta_mtp_every_head_passes_and_a_perturbed_head_fails(meta_model, tmp_path):
  cfg, _, src, converted = meta_model
  summary = run("verify", "--meta", src, "--converted", converted, "--seq-len", 24,
                "--batch", 3)
  assert summary["passed"] and summary["tokens"] == [3, 24]
  assert [h["head"] for h in summary["heads"]] == list(range(cfg.n_future_tokens))
  # Only the last head's block perturbed: only that head fails.
  bad = perturbed_copy(converted, tmp_path / "bad",
                       ("head_2", "feed_forward", "w2", "kernel"), 1.001)
  summary = run("verify", "--meta", src, "--converted", bad, "--seq-len", 24)
  assert [h["passed"] for h in summary["heads"]] == [True, True, False]
  assert not summary["passed"]


def test_mtp_export_hf_every_head_runs_in_transformers(meta_model, tmp_path):
  """An MTP model exported to HF (next-token path + extra_heads.safetensors) against its converted
  directory: every head compared, a perturbed extra head caught."""
  cfg, _, _, converted = meta_model
  exported = tmp_path / "hf"
  run("export-hf", "--src", converted, "--dst", exported)
  summary = run("verify", "--hf", exported, "--converted", converted, "--seq-len", 20)
  assert summary["passed"] and len(summary["heads"]) == cfg.n_future_tokens
  bad = perturbed_copy(converted, tmp_path / "bad",
                       ("head_1", "attention_norm", "weight"), 1.001)
  summary = run("verify", "--hf", exported, "--converted", bad, "--seq-len", 20)
  assert [h["passed"] for h in summary["heads"]] == [True, False, True]


# runpy re-runs the imported module as __main__, as ``python -m`` would.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_cli_exit_status_on_failure_and_source_errors(llama3, meta_model, tmp_path, monkeypatch,
                                                     capsys):
  src, converted = llama3
  _, _, meta_src, _ = meta_model
  bad = perturbed_copy(converted, tmp_path / "bad", ("model", "embed_tokens", "embedding"), 1.01)
  # ``python -m wmtp_jax.convert verify …``, in this process (its ``__main__`` block).
  monkeypatch.setattr(sys, "argv", ["wmtp_jax.convert", "verify", "--hf", str(src),
                                    "--converted", str(bad)])
  with pytest.raises(SystemExit) as exit_info:
    runpy.run_module("wmtp_jax.convert", run_name="__main__")
  assert "verify: FAILED: heads [0]" in str(exit_info.value.code)  # sys.exit(message): status 1
  assert json.loads(capsys.readouterr().out)["passed"] is False
  with pytest.raises(ValueError, match="not an MTP model: --meta cannot be its source"):
    run("verify", "--meta", meta_src, "--converted", converted)
  with pytest.raises(ValueError, match=r"has 1 heads, .* has 3"):
    run("verify", "--hf", src, "--converted", meta_model[3])
  with pytest.raises(ValueError, match="exactly one source"):
    verify.verify(converted)
  with pytest.raises(SystemExit):  # argparse: --hf and --meta are exclusive
    run("verify", "--hf", src, "--meta", meta_src, "--converted", converted)
