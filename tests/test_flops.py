"""FLOPs and MFU: the per-token count against the parameters of a small model, the logged MFU,
the peak measured in the model's compute dtype."""

import json
import shutil

import flax
import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from wmtp_jax import objectives
from wmtp_jax.training import flops, loop


def _kernel_sizes(module) -> dict[tuple[str, ...], int]:
  """``{path: size}`` of every ``kernel`` of ``module``'s params (the matmul weights)."""
  params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  flat = flax.traverse_util.flatten_dict(flax.linen.meta.unbox(params)["params"])
  return {path: x.size for path, x in flat.items() if path[-1] == "kernel"}


@pytest.mark.parametrize("value_inputs", ["hidden", "hidden_logprob"])
def test_train_flops_per_token_is_a_count_of_the_matmul_weights(small_dataset, value_inputs):
  """By hand, from the params of the tiny verifiable models (S = 160): the MTP policy's forward
  is 2 FLOPs per weight of its blocks, 2 per weight of the unembedding for each of its n heads,
  and 4 · S · D per block for ``QKᵀ`` and ``AV``; the frozen LLaMA critic's the same for its
  layers, plus its lm_head where it reads its own language model (``hidden_logprob``; the value
  head is not counted); a train step is 3 policy forwards + 1 critic forward."""
  seq_len = 160
  config = tiny_config("verifiable", small_dataset)
  config.critic.model.value_inputs = value_inputs
  objective = objectives.build(config)
  policy, critic = objective.model, objective.frozen_models["critic"]
  kernels = _kernel_sizes(policy)
  blocks = {path[0] for path in kernels if path[0].startswith(("trunk_", "head_"))}
  n, dim = policy.cfg.n_future_tokens, policy.cfg.dim
  assert len(blocks) == policy.cfg.n_trunk_layers + n
  policy_fwd = (2 * sum(v for p, v in kernels.items() if p[0] in blocks)
                + 2 * n * kernels[("output", "kernel")] + 4 * len(blocks) * seq_len * dim)
  kernels = _kernel_sizes(critic)
  layers = {path[1] for path in kernels if path[0] == "model"}
  assert (("lm_head", "kernel") in kernels) == (value_inputs == "hidden_logprob")
  critic_fwd = (2 * sum(v for p, v in kernels.items() if p[0] in ("model", "lm_head"))
                + 4 * len(layers) * seq_len * critic.cfg.hidden_size)
  assert flops.forward_flops_per_token(policy.cfg, seq_len, lm_head=False) == policy_fwd
  assert flops.train_flops_per_token(objective, seq_len) == 3 * policy_fwd + critic_fwd


def test_logged_mfu_is_the_step_flops_over_time_and_peak(small_dataset, tmp_path):
  """The MFU a run logs: train FLOPs per token × 8 rows × 160 tokens / step time / peak (the
  configured 1e9 FLOP/s per device)."""
  config = tiny_config("baseline", small_dataset, steps=2, eval_every=0)
  loop.run(config, tmp_path / "run")
  per_token = flops.train_flops_per_token(objectives.build(config), 160)
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in rows if "mfu" in r]
  assert [r["step"] for r in logged] == [1, 2]
  for r in logged:
    expected = per_token * 8 * 160 / r["step_time_s"] / (1e9 * jax.device_count())
    assert r["mfu"] == pytest.approx(expected, rel=1e-12)
    assert r["tokens_per_s"] == pytest.approx(8 * 160 / r["step_time_s"], rel=1e-12)


@pytest.mark.parametrize("pipeline, dtype", [("baseline", "float32"), ("baseline", "bfloat16"),
                                             ("critic", None)])  # LLaMA: the model's default
def test_peak_is_measured_in_the_model_dtype(pipeline, dtype, small_dataset, tmp_path,
                                             monkeypatch):
  """With ``train.peak_flops = 0`` the run measures the peak with a matmul in the trained
  model's compute dtype (``config.model.dtype``, or the model's default, fp32); a configured
  peak is used as is (per device)."""
  assert flops.measure_peak_flops(dtype or "float32", n=128, repeats=1) > 0
  measured = []
  monkeypatch.setattr(flops, "measure_peak_flops",
                      lambda d, **_: measured.append(jnp.dtype(d)) or 2e9)
  assert flops.peak_flops(3e9, "bfloat16") == 3e9 * jax.device_count() and not measured
  config = tiny_config(pipeline, small_dataset, steps=1, eval_every=0, peak_flops=0.0)
  if dtype:
    config.model.dtype = dtype
  loop.run(config, tmp_path / "run")
  assert measured == [jnp.dtype(dtype or "float32")]


# The tiny test models (``tiny_config``) by hand, per token at S = 160. MTP policy: 1 trunk + 2
# head blocks of dim 64, 4 query / 2 KV heads of width 16, SwiGLU hidden 176, vocabulary 512:
# a block's matmul weights 64·16·(2·4 + 2·2) + 3·64·176 = 46080; forward 2·(3·46080 + 2·64·512)
# + 4·3·160·64 = 530432. Critic LLaMA: 2 layers, hidden 96: 64·16·12 + 3·64·96 = 30720 per layer;
# forward 2·(2·30720 + 64·512) + 4·2·160·64 = 270336, its lm_head included (the tiny critic reads
# its own language model's log-probabilities, ``value_inputs="hidden_logprob"``).
BASELINE_PER_TOKEN = 3 * 530432
VERIFIABLE_PER_TOKEN = 3 * 530432 + 270336


def test_budget_steps_divide_the_budget_by_the_mean_step_cost(small_dataset):
  """At equal FLOPs the baseline gets the steps verifiable spends on critic forwards: the same
  budget buys 10 verifiable steps of 8 × 160 tokens and 12 baseline steps (10 · 1861632 /
  1591296 = 11.70, rounded); the mean is over the sampled shapes."""
  budget = 10 * 8 * 160 * VERIFIABLE_PER_TOKEN
  verifiable = objectives.build(tiny_config("verifiable", small_dataset))
  baseline = objectives.build(tiny_config("baseline", small_dataset))
  assert flops.train_flops_per_token(verifiable, 160) == VERIFIABLE_PER_TOKEN
  assert flops.step_flops(baseline, 8, 160) == 8 * 160 * BASELINE_PER_TOKEN
  assert flops.budget_steps(budget, verifiable, [(8, 160)] * 3) == 10
  assert flops.budget_steps(budget, baseline, [(8, 160)]) == 12
  assert flops.budget_steps(budget, verifiable, [(8, 160), (16, 160)]) == 7  # mean 12 rows: 6.67
  assert flops.budget_steps(1.0, verifiable, [(8, 160)]) == 1  # at least one step
  with pytest.raises(ValueError, match="budget.flops=0"):
    flops.budget_steps(0, verifiable, [(8, 160)])


def test_logged_cumulative_flops_count_every_step_across_a_resume(small_dataset, tmp_path):
  """``budget.flops`` of 3.8 baseline steps trains 4 steps; every row logs the cumulative train
  FLOPs of the steps so far (k · 8 · 160 · per token); resumed from the checkpoint of step 2 (the
  one of step 4 removed), the count goes on from there."""
  config = tiny_config("baseline", small_dataset, steps=100, eval_every=2)
  config.budget.flops = 3.8 * 8 * 160 * BASELINE_PER_TOKEN
  workdir = tmp_path / "run"
  loop.run(config, workdir)
  read = lambda: [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  first = [r for r in read() if flops.CUMULATIVE in r]
  assert {r["step"] for r in first} == {1, 2, 3, 4}
  for r in first:
    assert r[flops.CUMULATIVE] == r["step"] * 8 * 160 * BASELINE_PER_TOKEN
  for path in (workdir / "checkpoints").glob("4*"):
    shutil.rmtree(path)
  loop.run(config, workdir)
  resumed = [r for r in read() if flops.CUMULATIVE in r]
  assert sorted((r["step"], r[flops.CUMULATIVE]) for r in resumed) == sorted(
      (r["step"], r[flops.CUMULATIVE]) for r in first)


def test_a_shorter_training_horizon_runs_fewer_head_blocks(small_dataset):
  """``model.train_heads = 1`` of the 2 heads: the trunk block, one head block and one
  unembedding per token, by hand 2·(2·46080 + 64·512) + 4·2·160·64."""
  config = tiny_config("baseline", small_dataset)
  config.model.train_heads = 1
  objective = objectives.build(config)
  assert flops.train_flops_per_token(objective, 160) == 3 * (2 * (2 * 46080 + 64 * 512)
                                                             + 4 * 2 * 160 * 64)
