"""Weighted next-token prediction on a plain LLaMA (option ``ntp`` of baseline / verifiable /
rho1): the loss against loops (all weights 1 = next-token CE; Rho-1 with n = 1 = the original
Rho-1), tied input/output embeddings through the policy path, a tiny run that overfits a batch,
and its export loaded by transformers."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from train_helpers import overfit_losses
from wmtp_jax import IGNORE_INDEX, objectives
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.eval import interval
from wmtp_jax.models.llama import LlamaForCausalLM
from wmtp_jax.training import loop

B, S, V = 3, 12, 512


def _config(pipeline, dataset, *, tied=False, memory_efficient=False):
  config = tiny_config(f"{pipeline}:ntp", dataset)
  for model in [config.model] + [config[k].model for k in ("reference",) if k in config]:
    with model.unlocked():  # not a key of the tiny preset
      model.tie_word_embeddings = tied
  config.loss.memory_efficient = memory_efficient
  config.loss.vocab_block = 128  # several vocabulary blocks
  return config


def _batch(seed=0):
  """Rows with a prompt (labels -100), a response and right padding; one row without padding."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, size=(B, S)).astype(np.int32)
  lengths, prompts = [S, 9, 6], [3, 4, 2]
  attention_mask = (np.arange(S)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
  labels = np.where(attention_mask == 1, tokens, IGNORE_INDEX)
  labels[np.arange(S)[None, :] < np.asarray(prompts)[:, None]] = IGNORE_INDEX
  return {"tokens": jnp.asarray(tokens), "labels": jnp.asarray(labels),
          "attention_mask": jnp.asarray(attention_mask)}


def _params(model, seed):
  return nn.meta.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"])


def _apply(model):
  return lambda params, *args, **kwargs: model.apply({"params": params}, *args, **kwargs)


def _loop_ce(model, params, batch):
  """``{(b, t): CE of the logits at t against x_{t+1}}`` over the valid targets, by a loop."""
  logits = np.asarray(model.apply({"params": params}, batch["tokens"], batch["attention_mask"]),
                      np.float64)
  labels, mask = np.asarray(batch["labels"]), np.asarray(batch["attention_mask"])
  ce = {}
  for b in range(B):
    for t in range(S - 1):
      if labels[b, t + 1] != IGNORE_INDEX and mask[b, t + 1]:
        row = logits[b, t]
        ce[b, t] = np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[labels[b, t + 1]]
  return ce


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_unit_weights_give_the_next_token_ce(tied, memory_efficient, small_dataset):
  """The NTP policy's weighted loss with all weights 1 (and with no weights, the baseline) is the
  mean next-token CE over the response targets (prompt and padding left out), for an untied and
  a tied LLaMA, with plain and blockwise (memory-efficient) CE."""
  objective = objectives.build(_config("baseline", small_dataset, tied=tied,
                                       memory_efficient=memory_efficient))
  assert isinstance(objective.model, LlamaForCausalLM) and objective.n == 1
  params = _params(objective.model, seed=1)
  assert ("lm_head" in params) != tied
  batch = _batch()
  norms = objective.normalizers(batch)
  loss, (metrics, _) = objective.loss(params, _apply(objective.model), {}, batch, norms, {}, None)
  ce, valid = objective.policy_terms(params, _apply(objective.model), batch)
  assert ce.shape == valid.shape == (B, S, 1)
  ones, _ = objectives.base.weighted_ce(ce, valid, jnp.ones((B, S, 1), jnp.float32), norms)
  want = _loop_ce(objective.model, params, batch)
  assert len(want) == int(np.asarray(norms["n_valid"])[0]) == int(valid.sum())
  mean = np.mean(list(want.values()))
  for value in (loss, ones, metrics["unweighted"]):
    np.testing.assert_allclose(float(value), mean, rtol=1e-5)
  for (b, t), value in want.items():
    np.testing.assert_allclose(float(ce[b, t, 0]), value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_rho1_with_one_head_is_the_original_rho1(tied, small_dataset):
  """``rho1:ntp`` keeps the top k% of the response tokens by excess loss (policy CE − reference
  CE, the same target), ties at the threshold kept, and averages their CE over all valid
  targets; the tied policy and reference read their embedding tables as output projections."""
  config = _config("rho1", small_dataset, tied=tied)
  config.rho1.k_percent = 0.4
  objective = objectives.build(config)
  reference = objective.frozen_models["reference"]
  params, ref_params = _params(objective.model, seed=2), _params(reference, seed=3)
  batch = _batch(seed=1)
  loss, (metrics, _) = objective.loss(params, _apply(objective.model), {"reference": ref_params},
                                      batch, objective.normalizers(batch),
                                      objective.init_aux(params), jax.random.key(0))
  policy_ce = _loop_ce(objective.model, params, batch)
  ref_ce = _loop_ce(reference, ref_params, batch)
  excess = {key: policy_ce[key] - ref_ce[key] for key in policy_ce}
  threshold = np.quantile(list(excess.values()), 1.0 - 0.4)
  kept = [key for key, value in excess.items() if value >= threshold]
  assert 0 < len(kept) < len(excess)
  want = sum(policy_ce[key] for key in kept) / len(policy_ce)
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["unweighted"]), np.mean(list(policy_ce.values())),
                             rtol=1e-4)


@pytest.mark.parametrize("pipeline,tied", [("baseline", False), ("verifiable", True),
                                           ("rho1", True)])
def test_tiny_ntp_run_overfits_a_batch(pipeline, tied, small_dataset, tmp_path):
  """The train step of every ``ntp`` policy pipeline (critic / reference freshly initialised)
  drives the loss of one fixed batch down, tied embeddings included."""
  config = _config(pipeline, small_dataset, tied=tied)
  context, losses = overfit_losses(config, tmp_path)
  assert isinstance(context.objective.model, LlamaForCausalLM)
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < 0.5 * losses[0], losses


def test_ntp_run_export_loads_in_transformers_with_our_logits(small_dataset, tmp_path):
  """A ``baseline:ntp`` run of a tied LLaMA (LoRA on all seven linear layers) logs held-out
  pass@1 during training (the interval hook: greedy decoding of the LLaMA policy, sandbox-scored),
  and its model (adapters merged) exports to a HF ``LlamaForCausalLM`` directory (tied: no
  ``lm_head``) whose logits transformers computes equal to ours in fp32. (Untied LLaMA
  exports: test_export.)"""
  import torch
  import transformers
  from wmtp_jax import convert
  config = _config("baseline", small_dataset, tied=True)
  config.lora.enabled = True
  config.lora.settings.targets = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
  config.train.trainable = ""  # adapters only
  config.optim.lr = 1e-2
  config.evaluate.update(every_steps=config.train.steps, interval_problems=4, max_new_tokens=16)
  loop.run(config, tmp_path / "run", hooks=(interval.hook(config),))
  metrics_file = tmp_path / "run" / "metrics.jsonl"
  logged = [json.loads(line) for line in metrics_file.read_text().splitlines()]
  pass_at_1 = [row[interval.METRIC] for row in logged if interval.METRIC in row]
  assert len(pass_at_1) == 1 and 0.0 <= pass_at_1[0] <= 1.0
  convert.main(["export-hf", "--src", str(tmp_path / "run"), "--dst", str(tmp_path / "hf"),
                "--dtype", "fp32"])
  cfg, params = pretrained.load_pretrained(tmp_path / "run")
  assert pretrained.stored_kind(tmp_path / "run" / pretrained.RUN_EXPORT_DIR) == "llama"
  hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
  assert hf.lm_head.weight is hf.model.embed_tokens.weight
  batch = _batch(seed=2)
  ours = np.asarray(LlamaForCausalLM(cfg).apply({"params": params}, batch["tokens"],
                                                batch["attention_mask"]))
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(np.asarray(batch["tokens"]), dtype=torch.long),
                attention_mask=torch.tensor(np.asarray(batch["attention_mask"]))).logits.numpy()
  valid = np.asarray(batch["attention_mask"]).astype(bool)
  np.testing.assert_allclose(theirs[valid], ours[valid], rtol=1e-4, atol=1e-4)


def test_policy_configs_ntp_option_and_7b_recipe():
  """``:ntp`` builds a LLaMA policy (7b: LLaMA-3-8B, with a critic / reference of LLaMA-3's
  vocabulary); every policy config keeps the best checkpoint by the unweighted validation CE;
  the 7b policies carry the reference's recipe; ntp refuses the options that need MTP heads."""
  from wmtp_jax.config import common
  for pipeline in ("baseline", "verifiable", "rho1"):
    for size in ("tiny", "7b"):
      mtp, ntp = common.load(pipeline, size), common.load(pipeline, f"{size},ntp")
      assert (mtp.model_kind, ntp.model_kind) == ("mtp", "llama")
      assert ntp.variant == f"{size},ntp" and mtp.variant == size  # distinct run directories
      assert isinstance(objectives.build(ntp).model, LlamaForCausalLM)
      for c in (mtp, ntp):
        assert c.checkpoint.best_metric == "val_unweighted"
        if size == "7b":
          assert c.lora.enabled and set(c.lora.settings.targets) == {
              "wq", "wk", "wv", "wo", "w1", "w2", "w3"}
          assert c.optim.warmup_steps == round(0.03 * c.train.steps)
          assert c.optim.min_lr_ratio == 0.005
      frozen = ntp.get("critic") or ntp.get("reference")
      if size == "7b":
        assert ntp.model.vocab_size == 128256 and ntp.model.num_key_value_heads == 8
        if frozen is not None:  # reads the policy's token ids
          assert frozen.model.vocab_size == frozen.run.model.vocab_size == 128256
          assert frozen.run.model.tie_word_embeddings
  assert common.load("rho1", "7b").rho1.k_percent == 0.7
  for options in ("tiny,ntp,shared_head", "7b,softmax_heads,ntp"):
    with pytest.raises(ValueError, match="option ntp"):
      common.load("verifiable", options)
