"""Tests for the value model that reads its own language model (``value_inputs="hidden_logprob"``,
``wmtp_jax.models.llama``) and the critic's language-model term (``critic_loss.lm_coef``), against
loops written here, with padding and prompt masks."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.checkpoints import checkpointer, pretrained
from wmtp_jax.config import common as config_lib
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM, ValueModel
from wmtp_jax.objectives import critic

SIMPLE = dict(rtol=1e-5, atol=1e-5)
COMPOSITE = dict(rtol=1e-4, atol=1e-4)
CFG = LlamaConfig(vocab_size=37, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=32, value_head="mlp",
                  value_head_dropout=0.0, value_inputs="hidden_logprob")


def _inputs(rng, b=3, s=7):
  tokens = rng.integers(0, CFG.vocab_size, size=(b, s)).astype(np.int32)
  attention = np.ones((b, s), np.int32)
  attention[1, 5:] = 0  # right padding
  return jnp.asarray(tokens), jnp.asarray(attention)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max() - np.log(np.exp(x - x.max()).sum())


@pytest.mark.parametrize("tied", [False, True])
def test_value_is_the_hidden_head_plus_weighted_logprob_of_the_token_read(tied):
  cfg = dataclasses.replace(CFG, tie_word_embeddings=tied)
  tokens, attention = _inputs(np.random.default_rng(0))
  params = ValueModel(cfg).init(jax.random.key(0), tokens, attention)["params"]
  assert float(params["value_head"]["logprob_weight"]) == 0.0  # starts as a plain value head
  assert ("lm_head" in params) != tied
  params = jax.tree.map(lambda x: x, params)
  params["value_head"]["logprob_weight"] = jnp.float32(0.7)
  params["value_head"]["out"]["kernel"] = jax.random.normal(
      jax.random.key(1), params["value_head"]["out"]["kernel"].shape)

  values, logp = ValueModel(cfg).apply({"params": params}, tokens, attention,
                                       return_logprobs=True)
  lm_params = {k: v for k, v in params.items() if k != "value_head"}
  logits = np.asarray(LlamaForCausalLM(cfg).apply({"params": lm_params}, tokens, attention))
  hidden_cfg = dataclasses.replace(cfg, value_inputs="hidden")
  head_params = {"model": params["model"], "value_head": {
      k: v for k, v in params["value_head"].items() if k != "logprob_weight"}}
  head_values = np.asarray(ValueModel(hidden_cfg).apply({"params": head_params}, tokens,
                                                        attention))
  want_logp = np.zeros(tokens.shape)
  for b in range(tokens.shape[0]):
    for t in range(1, tokens.shape[1]):
      want_logp[b, t] = _log_softmax(logits[b, t - 1])[int(tokens[b, t])]
  np.testing.assert_allclose(logp, want_logp, **SIMPLE)
  np.testing.assert_allclose(values, head_values + 0.7 * want_logp, **COMPOSITE)
  np.testing.assert_allclose(ValueModel(cfg).apply({"params": params}, tokens, attention), values,
                             **SIMPLE)


def test_return_logprobs_needs_the_language_model_head():
  cfg = dataclasses.replace(CFG, value_inputs="hidden")
  tokens, attention = _inputs(np.random.default_rng(1))
  params = ValueModel(cfg).init(jax.random.key(0), tokens, attention)["params"]
  assert "lm_head" not in params and "logprob_weight" not in params["value_head"]
  with pytest.raises(ValueError, match="value_inputs='hidden_logprob'"):
    ValueModel(cfg).apply({"params": params}, tokens, attention, return_logprobs=True)
  with pytest.raises(ValueError, match="value_inputs='bogus'"):
    dataclasses.replace(CFG, value_inputs="bogus")


def _pair_batch(rng, b=3, s=8):
  tokens = rng.integers(5, 100, size=(2 * b, s)).astype(np.int32)
  labels = tokens.copy()
  labels[:, :3] = -100  # the prompt
  attention = np.ones((2 * b, s), np.int32)
  attention[0, 6:] = 0  # a shorter correct row (padding)
  labels[0, 6:] = -100
  batch = {f"{side}_{k}": jnp.asarray(v[rows]) for side, rows in (("pos", slice(0, b)),
                                                                  ("neg", slice(b, None)))
           for k, v in (("tokens", tokens), ("labels", labels), ("attention_mask", attention))}
  return batch, (labels != -100) & (attention != 0)


def test_lm_term_is_the_token_mean_cross_entropy_of_the_correct_responses():
  config = config_lib.load("critic", "tiny")
  config.model.value_inputs = "hidden_logprob"
  config.critic_loss.update(pairwise_coef=0.0, lambda_coef=0.0, mc_coef=0.0, lm_coef=2.0)
  objective = critic.Critic(config)
  rng = np.random.default_rng(2)
  batch, mask = _pair_batch(rng)
  b, s = batch["pos_tokens"].shape
  values = rng.normal(size=(2 * b, s)).astype(np.float32)
  logp = -rng.uniform(0.1, 5.0, size=(2 * b, s)).astype(np.float32)
  apply = lambda params, *args, return_logprobs=False, **kwargs: (
      (jnp.asarray(values), jnp.asarray(logp)) if return_logprobs else jnp.asarray(values))
  nll = [-float(logp[r, t]) for r in range(b) for t in range(s) if mask[r, t]]  # pos rows only
  norms = objective.normalizers(batch)
  assert float(norms["pos_tokens"]) == len(nll)
  loss, (metrics, _) = objective.loss(None, apply, {}, batch, norms, {}, jax.random.key(0))
  np.testing.assert_allclose(metrics["lm_loss"], np.mean(nll), **SIMPLE)
  np.testing.assert_allclose(loss, 2.0 * np.mean(nll), **SIMPLE)
  # One micro-batch of a larger step: its sum over the step's count of correct response tokens.
  step_norms = {**norms, "pos_tokens": jnp.float32(4 * len(nll))}
  loss, _ = objective.loss(None, apply, {}, batch, step_norms, {}, jax.random.key(0))
  np.testing.assert_allclose(loss, 2.0 * np.sum(nll) / (4 * len(nll)), **SIMPLE)


def test_lm_coef_without_a_language_model_head_is_an_error():
  config = config_lib.load("critic", "tiny")
  config.model.value_inputs = "hidden"
  config.critic_loss.lm_coef = 1.0
  with pytest.raises(ValueError, match=r"config.critic_loss.lm_coef=1.0 .*"
                                       r"config.model.value_inputs='hidden_logprob'"):
    critic.Critic(config)


def test_a_value_model_with_logprob_inputs_starts_from_a_llama_with_its_lm_head(tmp_path):
  tokens, attention = _inputs(np.random.default_rng(3))
  lm_cfg = dataclasses.replace(CFG, value_inputs="hidden")
  lm_params = nn.meta.unbox(
      LlamaForCausalLM(lm_cfg).init(jax.random.key(4), tokens, attention)["params"])
  pretrained.save_params(tmp_path / "lm", lm_cfg, lm_params)
  for inputs, has_head in (("hidden_logprob", True), ("hidden", False)):
    cfg = dataclasses.replace(CFG, value_inputs=inputs)
    target = nn.meta.unbox(pretrained.abstract_params(cfg, "value"))
    restored = checkpointer.load_params(tmp_path / "lm", target, where="init.checkpoint")
    assert "value_head" not in restored and ("lm_head" in restored) == has_head
    if has_head:
      np.testing.assert_array_equal(restored["lm_head"]["kernel"], lm_params["lm_head"]["kernel"])
    np.testing.assert_array_equal(restored["model"]["norm"]["weight"],
                                  lm_params["model"]["norm"]["weight"])
