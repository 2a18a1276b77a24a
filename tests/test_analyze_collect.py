"""analyze.collect: every quantity on its target token, checked against loops written here over
the models' own outputs; ``make_run`` (finished-looking runs with random weights) is also used by
test_analyze_source and test_analyze_main."""

import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from wmtp_jax.analyze import collect, samples, source as source_lib
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.models import presets

KIND_OF_PIPELINE = {"critic": "value", "ref_tuning": "llama"}  # any other: the MTP policy


def _export(run: pathlib.Path, kind: str, model_section, dataset: pathlib.Path, seed: int):
  """``run/model``: a converted checkpoint of random weights (a linear value head, so that the
  values differ between tokens) with the dataset's tokenizer."""
  cls, module = pretrained.KINDS[kind]
  fields = model_section.to_dict()
  if kind == "value":
    fields.update(value_head="linear", value_head_dropout=0.0)
  cfg = presets.build(cls, fields, where="test model")
  params = module(cfg).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
  pretrained.save_params(run / "model", cfg, jax.device_get(nn.meta.unbox(params)), kind=kind)
  pretrained.copy_tokenizer(dataset / "tokenizer", run / "model", cfg.vocab_size, where="test")


def make_run(root: pathlib.Path, pipeline: str, dataset: pathlib.Path, *,
             export: bool = True) -> pathlib.Path:
  """``root/<pipeline>``: ``config.json`` (the tiny config on ``dataset``) and ``model/``; a
  verifiable / rho1 run's critic / reference run beside it, named in its config."""
  name = pipeline.partition(":")[0]
  config = tiny_config(pipeline, dataset)
  for frozen, kind in (("critic", "value"), ("reference", "llama")):
    if frozen in config:
      _export(root / frozen, kind, config[frozen].model, dataset, seed=1)
      (root / frozen / "config.json").write_text(json.dumps(config[frozen].run.to_dict()))
      config[frozen].checkpoint = str(root / frozen)
  run = root / name
  if export:
    _export(run, KIND_OF_PIPELINE.get(name, "mtp"), config.model, dataset, seed=2)
  run.mkdir(parents=True, exist_ok=True)
  (run / "config.json").write_text(json.dumps(config.to_dict()))
  return run


@pytest.fixture(scope="module")
def runs(small_dataset, tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  return {p: make_run(root / p, p, small_dataset)
          for p in ("critic", "rho1", "verifiable:softmax_heads")}


def _shown(source, n=2):
  tokenizer = pretrained.load_tokenizer(source.model)
  pairs = samples.held_out(source.dataset, source.split, tokenizer, n, source.max_len)
  return [s for pair in pairs for s in pair if s is not None]


@functools.cache
def _model(path):
  cfg, params = pretrained.load_pretrained(path)
  module = pretrained.KINDS[pretrained.stored_kind(path)][1](cfg)
  return lambda tokens: module.apply({"params": params}, tokens)   # op by op: no compile per length


def _apply(path, tokens):
  """The model at ``path`` on one unpadded row: ``[S]`` values or ``[S, n, V]`` logits."""
  out = np.asarray(_model(path)(jnp.asarray(tokens)[None, :])[0], np.float64)
  return out[:, None, :] if out.ndim == 2 and pretrained.stored_kind(path) == "llama" else out


def _ce(logits_V, target):
  return float(np.log(np.exp(logits_V - logits_V.max()).sum()) + logits_V.max() - logits_V[target])


def test_head_view_matches_loop():
  x = np.random.default_rng(0).normal(size=(2, 6, 3))
  for head in range(3):
    out = collect.head_view(x, head)
    for b in range(2):
      for j in range(6):
        want = x[b, j - 1 - head, head] if j - 1 - head >= 0 else 0.0
        assert out[b, j] == want


def test_critic_quantities_match_loop(runs):
  source = source_lib.find(runs["critic"])
  shown = _shown(source)
  got = collect.collect(source, shown)
  w = source.settings
  advantages = []
  for sample, values in zip(shown, got):
    v = _apply(source.model, sample.example.tokens)
    n, p0 = sample.n_tokens, sample.start
    np.testing.assert_allclose(values["value"], v[p0:p0 + n], rtol=1e-5, atol=1e-5)
    td = np.array([w.gamma * v[p0 + j] - v[p0 + j - 1] for j in range(n)])
    np.testing.assert_allclose(values["td"], td, rtol=1e-4, atol=1e-5)
    adv, running = np.zeros(n), 0.0
    for j in reversed(range(n)):
      running = td[j] + w.gamma * w.lam * running
      adv[j] = running
    np.testing.assert_allclose(values["advantage"], adv, rtol=1e-4, atol=1e-5)
    advantages.append(adv)
  flat = np.concatenate(advantages)   # a critic alone: whitened by the shown tokens
  mean, std = flat.mean(), flat.std(ddof=1)
  for values, adv in zip(got, advantages):
    want = np.clip(np.exp((adv - mean) / (std + 1e-8) / w.beta), w.min_weight, w.max_weight)
    np.testing.assert_allclose(values["weight"], want, rtol=1e-4, atol=1e-5)


def test_reference_quantities_match_loop(runs):
  source = source_lib.find(runs["rho1"])
  shown = _shown(source)
  head = 1
  got = collect.collect(source, shown, head=head)
  excess_all = []
  for sample, values in zip(shown, got):
    tokens = sample.example.tokens
    ref = _apply(source.model, tokens)[:, 0]      # [S, V]
    policy = _apply(source.policy, tokens)        # [S, n, V]
    positions = range(sample.start, sample.start + sample.n_tokens)
    loss = np.array([_ce(ref[p - 1], tokens[p]) for p in positions])
    excess = np.array([_ce(policy[p - 1 - head, head], tokens[p]) - _ce(ref[p - 1], tokens[p])
                       for p in positions])
    np.testing.assert_allclose(values["loss"], loss, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(values["excess"], excess, rtol=1e-4, atol=1e-4)
    excess_all.append(values["excess"])
  r = source.settings
  threshold = np.quantile(np.concatenate(excess_all), 1 - r.k_percent)
  for values, excess in zip(got, excess_all):   # signed top-k of head 1 over the shown terms
    np.testing.assert_array_equal(values["weight"], (excess >= threshold).astype(np.float32))


def test_head_outside_the_policy_is_an_error(runs):
  source = source_lib.find(runs["rho1"])
  with pytest.raises(ValueError, match="--head 2: the run's policy has 2 head"):
    collect.collect(source, _shown(source, 1), head=2)


def test_softmax_head_weights_of_one_head_match_loop(runs):
  """``softmax_heads``: head 1's weight on x_j is the softmax over the heads of position j−2."""
  source = source_lib.find(runs["verifiable:softmax_heads"])
  assert source.settings.scheme == "softmax_heads" and source.n_heads == 2
  shown = _shown(source, 1)
  temperature, head = source.settings.temperature, 1
  for sample, values in zip(shown, collect.collect(source, shown, head=head)):
    td = values["td"]   # on the response tokens; the terms' targets
    for j in range(sample.n_tokens):
      t = j - 1 - head  # the position, relative to the first response token
      scores = [td[t + 1 + k] for k in range(source.n_heads) if 0 <= t + 1 + k < sample.n_tokens]
      want = np.exp(td[j] / temperature) / np.sum(np.exp(np.array(scores) / temperature))
      assert values["weight"][j] == pytest.approx(want, rel=1e-4, abs=1e-6), j
