"""Benchmark of ``wmtp_jax.weighting``: ``python -m wmtp_jax.bench weighting [flags]``.

For ``gae_advantages``, ``td_errors``, ``exp_weights`` and ``rho1_weights`` at ``[B, S]`` /
``[B, S, n]`` it reports, next to references measured in the same run:
  * tokens/s of the jitted function (warmed up, ``block_until_ready``, median of repeats) and of a
    per-token Python loop of the same formula (the style of the PyTorch reference code base),
    timed on the first ``--loop-rows`` rows and expressed per token; the loop's output on those
    rows is compared with the jitted one (``max_abs_diff_vs_loop``);
  * bytes moved per second (input + output bytes / time) as a fraction of the device's copy
    bandwidth (``device_copy_bytes_per_s``: read + written bytes / time of a ``--copy-mb`` array
    on the device the functions run on).
It also times the alternatives behind two implementation choices: the reverse linear recurrence
(``lax.scan`` vs ``lax.associative_scan``) and the per-head quantile (bitwise bisection vs sort
vs ``jnp.nanquantile``).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax import weighting
from wmtp_jax.weighting import returns

TARGET_SPEEDUP = 100.0
TARGET_COPY_FRACTION = 0.2


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _time_jitted(fn, repeats: int) -> float:
  for _ in range(3):  # compile + warm caches
    jax.block_until_ready(fn())
  return _median_seconds(fn, repeats)


def device_copy_bytes_per_s(megabytes: int, repeats: int) -> float:
  """Read + written bytes per second of copying a ``megabytes`` fp32 array on the default device:
  a jitted ``2 · x`` (XLA cannot skip it as it could a plain copy), warmed up, median time."""
  x = jnp.asarray(np.random.default_rng(0).random(megabytes * (1 << 20) // 4, dtype=np.float32))
  copy = jax.jit(lambda a: a * 2.0)
  return 2 * x.nbytes / _time_jitted(lambda: copy(x), max(repeats // 4, 3))


# ------------------------------------------------------------- per-token loop references


def _loop_td(values, mask, rewards, gamma=1.0, initial_value=0.5):
  out = np.zeros(values.shape, np.float32)
  for b in range(values.shape[0]):
    valid = np.flatnonzero(mask[b])
    last = valid[-1] if valid.size else -1
    for t in range(values.shape[1]):
      if mask[b, t]:
        prev = initial_value if t == 0 else values[b, t - 1]
        out[b, t] = rewards[b] - values[b, t] if t == last else gamma * values[b, t] - prev
  return out


def _loop_gae(values, mask, rewards, gamma=1.0, lam=0.95):
  delta = _loop_td(values, mask, rewards, gamma)
  out = np.zeros(values.shape, np.float32)
  for b in range(values.shape[0]):
    adv = 0.0
    for t in range(values.shape[1] - 1, -1, -1):
      adv = delta[b, t] + gamma * lam * adv
      out[b, t] = adv if mask[b, t] else 0.0
  return out


def _loop_exp_weights(adv, mask, beta=1.0, lo=0.1, hi=3.0):
  xs = [adv[b, t] for b in range(adv.shape[0]) for t in range(adv.shape[1]) if mask[b, t]]
  mean, std = np.mean(xs), np.std(xs, ddof=1)
  out = np.zeros(adv.shape, np.float32)
  for b in range(adv.shape[0]):
    for t in range(adv.shape[1]):
      if mask[b, t]:
        out[b, t] = min(max(np.exp((adv[b, t] - mean) / (std + 1e-8) / beta), lo), hi)
  return out


def _loop_rho1(policy_ce, ref_ce, mask, k_percent=0.6):
  b_size, s_size, n = policy_ce.shape
  out = np.zeros(policy_ce.shape, np.float32)
  for k in range(n):
    terms = [(b, t, policy_ce[b, t, k] - ref_ce[b, t + k]) for b in range(b_size)
             for t in range(s_size - 1 - k) if mask[b, t + 1 + k]]
    threshold = np.quantile(np.array([e for _, _, e in terms], np.float32), 1 - k_percent)
    for b, t, excess in terms:
      out[b, t, k] = float(excess >= threshold)
  return out


# ------------------------------------------------------------------------------ inputs


def _make_inputs(batch: int, seq: int, n_future: int):
  rng = np.random.default_rng(0)
  prompt = rng.integers(0, seq // 4, batch)
  length = rng.integers(seq // 4, seq - prompt + 1)
  positions = np.arange(seq)
  mask = (positions >= prompt[:, None]) & (positions < (prompt + length)[:, None])
  return dict(
      values=rng.uniform(0.0, 1.0, (batch, seq)).astype(np.float32),
      rewards=rng.integers(0, 2, batch).astype(np.float32),
      advantages=rng.normal(size=(batch, seq)).astype(np.float32),
      policy_ce=rng.gamma(2.0, 1.0, (batch, seq, n_future)).astype(np.float32),
      ref_ce=rng.gamma(2.0, 1.0, (batch, seq)).astype(np.float32),
      mask=mask)


def _cases():
  """name → (jitted call on device arrays, loop reference on numpy rows, input arrays)."""
  return {
      "gae_advantages": (
          lambda d: weighting.gae_advantages(d["values"], d["mask"], rewards=d["rewards"]),
          lambda h: _loop_gae(h["values"], h["mask"], h["rewards"]),
          ("values", "mask", "rewards")),
      "td_errors": (
          lambda d: weighting.td_errors(d["values"], d["mask"], rewards=d["rewards"]),
          lambda h: _loop_td(h["values"], h["mask"], h["rewards"]),
          ("values", "mask", "rewards")),
      "exp_weights": (
          lambda d: weighting.exp_weights(d["advantages"], d["mask"]),
          lambda h: _loop_exp_weights(h["advantages"], h["mask"]),
          ("advantages", "mask")),
      "rho1_weights": (
          lambda d: weighting.rho1_weights(d["policy_ce"], d["ref_ce"], d["mask"]),
          lambda h: _loop_rho1(h["policy_ce"], h["ref_ce"], h["mask"]),
          ("policy_ce", "ref_ce", "mask")),
  }


def _alternatives(device_x, repeats: int) -> dict:
  values, mask = device_x["values"], device_x["mask"]
  decay = jnp.full(values.shape, 0.95, jnp.float32)
  init = jnp.zeros(values.shape[:1], jnp.float32)
  recurrence = {
      name: _time_jitted(lambda f=jax.jit(fn): f(decay, values, init), repeats)
      for name, fn in (("lax_scan_s", returns._reverse_recurrence_scan),
                       ("lax_associative_scan_s", returns._reverse_recurrence_assoc))}
  n = device_x["policy_ce"].shape[-1]
  excess = device_x["policy_ce"]
  valid = weighting.future_valid(mask, n)
  excess_nxM = jnp.where(valid, excess, jnp.nan).reshape(-1, n).T
  quantile = {
      "bitwise_bisection_s (used)": _time_jitted(
          lambda: weighting.per_head_quantile(excess, valid, 0.4), repeats),
      "jnp_sort_s (sort only, no interpolation)": _time_jitted(
          lambda f=jax.jit(lambda x: jnp.sort(x, axis=-1)): f(excess_nxM), repeats),
      "jnp_nanquantile_s": _time_jitted(
          lambda f=jax.jit(lambda x: jnp.nanquantile(x, 0.4, axis=-1)): f(excess_nxM), repeats),
  }
  return {"reverse_recurrence_BxS": recurrence, "per_head_quantile_BxSxn": quantile}


def jitted_throughput(batch: int, seq: int, n_future: int, repeats: int,
                      copy_bytes_per_s: float) -> dict[str, dict]:
  """Per function (``gae_advantages``, ``td_errors``, ``exp_weights``, ``rho1_weights``) on random
  inputs ``[B, S]`` / ``[B, S, n]`` on the device: the jitted call's median seconds, tokens/s,
  the input + output bytes it moves, and those per second as a fraction of ``copy_bytes_per_s``
  (``device_copy_bytes_per_s``)."""
  device_x = {k: jnp.asarray(v) for k, v in _make_inputs(batch, seq, n_future).items()}
  results = {}
  for name, (jitted, _, inputs) in _cases().items():
    out = jitted(device_x)
    jit_s = _time_jitted(lambda: jitted(device_x), repeats)
    moved = sum(device_x[k].nbytes for k in inputs) + out.nbytes
    results[name] = {"jit_median_s": jit_s, "jit_tokens_per_s": batch * seq / jit_s,
                     "input_plus_output_bytes": moved, "bytes_per_s": moved / jit_s,
                     "fraction_of_copy_bandwidth": moved / jit_s / copy_bytes_per_s}
  return results


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench weighting")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--n-future", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=50)
  parser.add_argument("--loop-rows", type=int, default=1,
                      help="rows of the batch the Python loop reference is timed on")
  parser.add_argument("--copy-mb", type=int, default=256)
  args = parser.parse_args(argv)

  host_x = _make_inputs(args.batch, args.seq, args.n_future)
  device_x = {k: jnp.asarray(v) for k, v in host_x.items()}
  loop_rows = min(args.loop_rows, args.batch)
  loop_x = {k: v[:loop_rows] for k, v in host_x.items()}
  copy_bytes_per_s = device_copy_bytes_per_s(args.copy_mb, args.repeats)
  results = jitted_throughput(args.batch, args.seq, args.n_future, args.repeats, copy_bytes_per_s)
  for name, (jitted, loop, _) in _cases().items():
    out = jitted(device_x)
    start = time.perf_counter()
    loop_out = loop(loop_x)
    loop_s = time.perf_counter() - start
    loop_tokens_per_s = loop_rows * args.seq / loop_s
    # The loop's batch statistics (exp_weights, rho1) cover only its rows: compare on the
    # row-local functions only.
    row_local = name in ("gae_advantages", "td_errors")
    results[name].update({
        "loop_tokens_per_s": loop_tokens_per_s,
        "loop_timed_on_rows": f"{loop_rows} of {args.batch} (tokens/s is per token)",
        "speedup_vs_loop": results[name]["jit_tokens_per_s"] / loop_tokens_per_s,
        "max_abs_diff_vs_loop": (float(np.max(np.abs(np.asarray(out[:loop_rows]) - loop_out)))
                                 if row_local else "n/a (batch statistics)")})
  return {
      "backend": jax.default_backend(),
      "shape": {"batch": args.batch, "seq": args.seq, "n_future": args.n_future},
      "repeats": args.repeats,
      "copy_reference": {"device_copy_array_mb": args.copy_mb,
                         "bytes_per_s (read + written)": copy_bytes_per_s},
      "functions": results,
      "targets": {"speedup_vs_loop": TARGET_SPEEDUP,
                  "fraction_of_copy_bandwidth": TARGET_COPY_FRACTION},
      "targets_met": {name: {"speedup": r["speedup_vs_loop"] >= TARGET_SPEEDUP,
                             "bandwidth": r["fraction_of_copy_bandwidth"] >= TARGET_COPY_FRACTION}
                      for name, r in results.items()},
      "implementation_alternatives_median_s": _alternatives(device_x, args.repeats),
  }
