"""``python -m wmtp_jax.bench step``: the full ``verifiable`` train step: tokens/s, MFU, time split,
host/device overlap.

For the ``tiny`` preset and a ``small`` MTP model (71M parameters, vocab 32000) with a small
critic, on random token batches, with the plain CE over ``[B, S, n, V]`` logits and with the
memory-efficient blockwise CE (``--losses``): the jitted train step's time, tokens/s and MFU
against this device's matmul peak in the model's compute dtype measured in the same run
(``flops.measure_peak_flops``), the compiled memory per device, and the time of its parts each
jitted alone (critic forward, weighting, policy forward + backward, optimizer update). The parts
overlap and fuse inside the real step, so their sum need not equal it.

``overlap``: ``--overlap-steps`` steps run as the train loop runs them (make the batch on the host,
dispatch the step, fetch a step's metrics), fetching the metrics of the step just dispatched
(``before``: the host waits for the device before making the next batch, as the loop did) and of
the previous step (``after``: the device runs a step while the host makes the next batch, as the
loop does now), alternately ``--repeats`` times: per step the seconds the host is blocked waiting
for device results, the wall seconds and the MFU (medians), and their ``after_over_before``
ratios.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wmtp_jax import IGNORE_INDEX, losses, objectives, weighting
from wmtp_jax.training import flops, mesh as mesh_lib, state as state_lib, step as step_lib
from wmtp_jax.models import presets
from wmtp_jax.objectives import base

SMALL_POLICY = dict(dim=512, n_layers=12, n_heads=8, n_kv_heads=8, vocab_size=32000,
                    multiple_of=64, n_future_tokens=4, max_seq_len=512)
SMALL_CRITIC = dict(vocab_size=32000, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)


def _config(model: str, memory_efficient: bool):
  from wmtp_jax.config import common as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load("verifiable", "tiny")
  config.loss.memory_efficient = memory_efficient
  if model == "small":
    config.model.update(presets.mtp("tiny", **SMALL_POLICY))
    config.critic.model.update(SMALL_CRITIC)
  return config


def host_batch(config, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random tokens ``[B, S]`` below ``config.model.vocab_size`` with a prompt of ``S / 4`` (numpy,
  on the host)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, config.model.vocab_size, size=(batch, seq), dtype=np.int32)
  labels = tokens.copy()
  labels[:, : seq // 4] = IGNORE_INDEX  # a prompt
  return {"tokens": tokens, "labels": labels, "attention_mask": np.ones((batch, seq), np.int32),
          "is_correct": np.ones((batch,), np.float32)}


def _batch(config, batch: int, seq: int, seed: int = 0):
  return jax.tree_util.tree_map(jnp.asarray, host_batch(config, batch, seq, seed))


def median_seconds(fn, *args, repeats: int) -> float:
  """Median wall seconds of ``fn(*args)`` over ``repeats`` calls after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def step_seconds(step_fn, state, frozen, batch, repeats: int):
  """``(median seconds, last state)`` of ``repeats`` train steps ``step_fn(state, frozen, batch)``
  after a warm-up step, each waited for (the step donates the state it is given). Call under the
  run's mesh and rules."""
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = step_fn(holder["state"], frozen, batch)
    return metrics

  return median_seconds(one_step, repeats=repeats), holder["state"]


def _parts(context, state, frozen, batch, repeats: int) -> dict[str, float]:
  """Median seconds of each part of the step, jitted alone."""
  objective = context.objective
  critic = objective.frozen_models["critic"]
  w = objective.config.weighting
  critic_fwd = jax.jit(lambda p, b: critic.apply({"params": p}, b["tokens"], b["attention_mask"]))
  values = critic_fwd(frozen.models["critic"], batch)
  mask = base.response_mask(batch)

  @jax.jit
  def weights(values, ema):
    adv = weighting.gae_advantages(values, mask, gamma=w.gamma, lam=w.lam)
    return weighting.exp_weights(adv, mask, beta=w.beta, mean=ema.mean, std=ema.std)

  fixed_w = weights(values, state.aux["ema"])
  norms = objective.normalizers(batch)

  def policy_loss(trainable):
    params = state_lib.full_params(trainable, frozen.base)
    apply = step_lib.model_apply(context, trainable["lora"], None)
    ce, valid = objective.policy_terms(params, apply, batch)
    return base.weighted_ce(ce, valid, losses.expand_weights(fixed_w, objective.n), norms)[0]

  policy_fb = jax.jit(jax.value_and_grad(policy_loss))
  _, grads = policy_fb(state.trainable)

  @jax.jit
  def optimizer(grads, opt_state, trainable):
    updates, opt_state = context.tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state

  return {
      "critic_forward_s": median_seconds(critic_fwd, frozen.models["critic"], batch, repeats=repeats),
      "weighting_s": median_seconds(weights, values, state.aux["ema"], repeats=repeats),
      "policy_forward_backward_s": median_seconds(policy_fb, state.trainable, repeats=repeats),
      "optimizer_s": median_seconds(optimizer, grads, state.opt_state, state.trainable, repeats=repeats),
  }


def _loop_steps(step_fn, holder, frozen, host_batch, steps: int, fetch_previous: bool):
  """``(host-blocked seconds, wall seconds)`` per step of ``steps`` steps run as the train loop
  runs them: make the batch on the host, dispatch the step, fetch the metrics of the step just
  dispatched, or (``fetch_previous``) of the previous one (the last step's at the end).
  ``holder["state"]`` is the state, donated to and replaced by each step."""
  blocked = 0.0
  pending = None
  t0 = time.perf_counter()
  for i in range(steps):
    batch = jax.device_put(host_batch(i))
    holder["state"], metrics = step_fn(holder["state"], frozen, batch)
    fetched, pending = (pending, metrics) if fetch_previous else (metrics, None)
    for waited in (fetched, pending if i == steps - 1 else None):
      if waited is not None:
        tb = time.perf_counter()
        jax.device_get(waited)
        blocked += time.perf_counter() - tb
  return blocked / steps, (time.perf_counter() - t0) / steps


def _overlap(step_fn, holder, frozen, config, objective, batch_size: int, seq: int, steps: int,
             rounds: int, peak: float) -> dict:
  """``{"before", "after": {"host_blocked_s", "step_s", "mfu"}, "after_over_before"}``: medians
  over ``rounds`` rounds, each running ``steps`` steps one way then the other (``_loop_steps``;
  alternating, so that a change of the machine's load affects both)."""
  host_batch_i = lambda i: host_batch(config, batch_size, seq, seed=i)
  runs = {"before": [], "after": []}
  for _ in range(rounds):
    for name, fetch_previous in (("before", False), ("after", True)):
      runs[name].append(_loop_steps(step_fn, holder, frozen, host_batch_i, steps,
                                    fetch_previous))
  result = {}
  for name, values in runs.items():
    blocked, step_s = (float(np.median(v)) for v in zip(*values))
    result[name] = {"host_blocked_s": blocked, "step_s": step_s,
                    "mfu": flops.mfu(objective, batch_size, seq, step_s, peak)}
  result["after_over_before"] = {k: result["after"][k] / result["before"][k]
                                 for k in result["before"]}
  return result


def measure(model: str, batch_size: int, seq: int, repeats: int, overlap_steps: int,
            memory_efficient: bool = False) -> dict:
  config = _config(model, memory_efficient)
  objective = objectives.build(config)
  peak = flops.peak_flops(0.0, objective.model.cfg.dtype)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  state, frozen, context, _ = state_lib.build_state(config, objective, mesh, rules,
                                                    total_steps=1000)
  batch = _batch(config, batch_size, seq)
  step_fn, _, memory = step_lib.compile_steps(context, config, state, frozen, batch)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    step_s, state = step_seconds(step_fn, state, frozen, batch, repeats)
    holder = {"state": state}
    overlap = _overlap(step_fn, holder, frozen, config, objective, batch_size, seq, overlap_steps,
                       repeats, peak)
    parts = _parts(context, holder["state"], frozen, batch, repeats)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(
      state_lib.full_params(holder["state"].trainable, frozen.base)))
  tokens = batch_size * seq
  step_flops = flops.train_flops_per_token(objective, seq) * tokens
  return {"model": model, "memory_efficient_loss": memory_efficient,
          "policy_params": int(n_params), "batch": batch_size, "seq_len": seq,
          "dtype": objective.model.cfg.dtype, "measured_peak_flops": peak,
          "step_s": step_s, "tokens_per_s": tokens / step_s, "step_tflop": step_flops / 1e12,
          "mfu": flops.mfu(objective, batch_size, seq, step_s, peak), "overlap": overlap, **parts,
          **memory}


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench step", description=__doc__)
  parser.add_argument("--models", default="tiny,small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--overlap-steps", type=int, default=5,
                      help="steps per round and way (before / after) of the host/device overlap")
  parser.add_argument("--losses", default="plain,memory_efficient",
                      help="CE paths to measure: plain logits [B,S,n,V] and/or the blockwise CE "
                           "from hidden states (config.loss.memory_efficient)")
  args = parser.parse_args(argv)
  results = [measure(m, args.batch, args.seq, args.repeats, args.overlap_steps,
                     loss == "memory_efficient")
             for m in args.models.split(",") for loss in args.losses.split(",")]
  return {"device": jax.devices()[0].device_kind, "n_devices": jax.device_count(),
          "mfu_target_small": 0.4, "results": results}
