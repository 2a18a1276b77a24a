"""The shared-head ``verifiable`` variant: value head on the policy trunk, stage 1 then stage 2."""

import json
import math
import struct

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from train_helpers import build_run
from wmtp_jax import IGNORE_INDEX, main as main_lib, objectives
from wmtp_jax.config import common as config_lib
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.training import init as init_lib, mesh as mesh_lib, state as state_lib
from wmtp_jax.training import step as step_lib
from wmtp_jax.models.mtp import MTPConfig


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _gae_loop(values, mask, reward, *, gamma, lam, v_init):
  """DESIGN §3 for one row, with the terminal reward: δ_t = γV_t − V_{t−1}, δ_T = R − V_T."""
  t_last = max(t for t in range(len(values)) if mask[t])
  delta = [gamma * values[t] - (values[t - 1] if t > 0 else v_init) for t in range(len(values))]
  delta[t_last] = reward - values[t_last]
  adv = [0.0] * len(values)
  for t in reversed(range(t_last + 1)):
    adv[t] = delta[t] + (gamma * lam * adv[t + 1] if t < t_last else 0.0)
  return [a if m else 0.0 for a, m in zip(adv, mask)]


def _tensorboard_histograms(tb_dir):
  """``{tag: [bucket counts of each logged step]}`` read from the TFRecord event files."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(tb_dir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):  # record: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      for value in event.summary.value:
        if value.HasField("histo"):
          out.setdefault(value.tag, []).append(list(value.histo.bucket))
  return out


@pytest.mark.parametrize("scheme", ["gae_exp", "softmax_heads"])
def test_stage2_loss_is_weighted_ce_plus_clipped_value_loss(scheme, small_dataset, tmp_path):
  """The step loss equals a plain numpy evaluation of DESIGN §2–3 (weighted MTP CE with GAE →
  exp weights under the initial EMA state, or TD errors → softmax over heads; plus
  value_coef · the PPO-clipped value loss)."""
  config = tiny_config("verifiable:shared_head", small_dataset)
  config.weighting.scheme = scheme
  state, frozen, context, batches = build_run(config, tmp_path)
  # A value head with varied outputs (its last layer starts at 0), and V_old = V − 0.5 so that
  # clipping matters.
  trainable = jax.tree_util.tree_map(np.asarray, jax.device_get(state.trainable))
  head = trainable["params"]["value_head"]
  head["out"]["kernel"] = np.random.default_rng(0).normal(0, 2.0, head["out"]["kernel"].shape)
  old = jax.tree_util.tree_map(np.copy, head)
  old["out"]["bias"] = old["out"]["bias"] - 0.5
  state = state.replace(trainable=trainable, aux={**state.aux, "value_old": old})
  batch = jax.device_get(batches[0])
  loss, _, metrics, _ = jax.jit(lambda s, b: step_lib.loss_and_grads(
      context, s, frozen, b, 1))(state, batches[0])

  params = state_lib.full_params(jax.device_get(state.trainable), frozen.base)
  logits, values = jax.device_get(context.objective.model.apply(
      {"params": params}, batch["tokens"], batch["attention_mask"], return_values=True))
  w, s = config.weighting, config.shared_head
  rows, seq, n = logits.shape[:3]
  mask = (batch["labels"] != IGNORE_INDEX) & (batch["attention_mask"] != 0)
  reward = batch["is_correct"].astype(np.float64)
  lam = w.lam if scheme == "gae_exp" else 0.0  # GAE with λ = 0 is the TD error
  adv = np.array([_gae_loop(values[b], mask[b], reward[b], gamma=w.gamma, lam=lam,
                            v_init=w.initial_value) for b in range(rows)])
  weight = np.zeros((rows, seq, n))  # weight of the term (b, t, k)
  for b, t, k in np.ndindex(rows, seq - 1, n):
    if t + 1 + k < seq and mask[b, t + 1 + k]:
      if scheme == "gae_exp":  # whitened with the initial EMA state (mean 0, std 1)
        weight[b, t, k] = np.clip(np.exp(adv[b, t + 1 + k] / (1.0 + 1e-8) / w.beta),
                                  w.min_weight, w.max_weight)
      else:
        heads = [j for j in range(n) if t + 1 + j < seq and mask[b, t + 1 + j]]
        z = sum(np.exp(adv[b, t + 1 + j] / w.temperature) for j in heads)
        weight[b, t, k] = np.exp(adv[b, t + 1 + k] / w.temperature) / z
  logp = _log_softmax(logits.astype(np.float64))
  head_means = []
  for k in range(n):
    total, count = 0.0, 0
    for b in range(rows):
      for t in range(seq - 1 - k):
        if mask[b, t + 1 + k]:
          total += weight[b, t, k] * -logp[b, t, k, batch["labels"][b, t + 1 + k]]
          count += 1
    if count:
      head_means.append(total / count)
  old_values = values - 0.5
  terms = [max((values[b, t] - reward[b])**2,
               (old_values[b, t] + np.clip(values[b, t] - old_values[b, t], -s.clip_range,
                                           s.clip_range) - reward[b])**2)
           for b in range(rows) for t in range(seq) if mask[b, t]]
  value_loss = 0.5 * np.mean(terms)
  np.testing.assert_allclose(metrics["value_loss"], value_loss, rtol=1e-4)
  np.testing.assert_allclose(loss, np.mean(head_means) + s.value_coef * value_loss, rtol=1e-4)


def test_main_pretrains_the_head_then_trains_policy_and_head(small_dataset, tmp_path):
  config = tiny_config("verifiable:shared_head", small_dataset, steps=2, eval_every=0)
  config.shared_head.pretrain_epochs = 0.02  # samples "all": every training record
  records = sum(1 for _ in open(small_dataset / "train.jsonl"))
  stage1 = config_lib.shared_head_pretraining(config)
  mesh, rules = mesh_lib.make_mesh(config.mesh.shape), mesh_lib.param_rules(config.mesh)
  initial = flax.traverse_util.flatten_dict(jax.device_get(
      init_lib.initial_params(stage1, objectives.build(stage1), mesh, rules)))

  report = main_lib.run(config, tmp_path)
  assert set(report) == {"shared_head", "verifiable"}
  # Stage 1 trained only the value head, for a fraction of an epoch.
  steps1 = [json.loads(l)["step"] for l in open(tmp_path / "shared_head" / "metrics.jsonl")]
  assert max(steps1) == math.ceil(0.02 * records / 8) > 1
  cfg1, params1 = pretrained.load_pretrained(tmp_path / "shared_head")
  assert isinstance(cfg1, MTPConfig) and cfg1.value_head == "mlp"
  changed = {path[0] for path, v in flax.traverse_util.flatten_dict(jax.device_get(params1)).items()
             if not np.array_equal(v, initial[path])}
  assert changed == {"value_head"}
  # Stage 2 started from stage 1's model and trained the policy with the value loss.
  run2 = json.loads((tmp_path / "verifiable" / "config.json").read_text())
  assert run2["init"]["checkpoint"] == str(tmp_path / "shared_head")
  rows = [json.loads(l) for l in open(tmp_path / "verifiable" / "metrics.jsonl")]
  logged = set().union(*rows)
  assert {"value_loss", "policy_loss", "weight_mean", "explained_variance"} <= logged
  assert not any(k.startswith("weight_histogram") for k in logged)  # tensorboard only
  histograms = _tensorboard_histograms(tmp_path / "verifiable" / "tb")
  counts = histograms["verifiable/weight_histogram"]
  assert len(counts) == 2 and all(len(c) == 30 and sum(c) > 0 for c in counts)  # steps 1 and 2
  _, params2 = pretrained.load_pretrained(tmp_path / "verifiable")
  flat1 = flax.traverse_util.flatten_dict(jax.device_get(params1))
  changed = {path[0] for path, v in flax.traverse_util.flatten_dict(jax.device_get(params2)).items()
             if not np.array_equal(v, flat1[path])}
  assert {"value_head", "trunk_0", "head_1", "output"} <= changed


def test_shared_head_config_errors(small_dataset):
  config = tiny_config("verifiable:shared_head", small_dataset)
  config.data.samples = "correct"
  with pytest.raises(ValueError, match=r"config\.data\.samples='correct' must be 'all'"):
    objectives.build(config)
  config = tiny_config("verifiable:shared_head", small_dataset)
  config.model.value_head = ""
  with pytest.raises(ValueError, match=r"set config\.model\.value_head"):
    objectives.build(config)
  with pytest.raises(ValueError, match="unknown variant 'tiny,shared_heads'"):
    config_lib.load("verifiable", "tiny,shared_heads")
  assert config_lib.load("verifiable", "softmax_heads").weighting.scheme == "softmax_heads"
  assert "critic" not in config_lib.load("verifiable", "7b,shared_head")
  with pytest.raises(ValueError, match="return_values=True needs a model with a value head"):
    model = objectives.build(tiny_config("baseline", small_dataset)).model
    tokens = jnp.zeros((1, 4), jnp.int32)
    model.apply(model.init(jax.random.key(0), tokens), tokens, return_values=True)
