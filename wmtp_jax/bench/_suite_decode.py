"""The device suite's decoding parts, measured with ``bench.decode``'s functions: the cost of a
self-speculative pass against a plain decode step on random weights of large shapes, generation
end to end with the trained tiny model, and the speed-up the two imply together."""

import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp

from wmtp_jax.bench import decode
from wmtp_jax.data import synthetic
from wmtp_jax.models import mtp


def random_model(fields: dict, seed: int = 0):
  """``(model, params)``: an ``MTPTransformer`` of the preset ``fields`` with bf16 weights and
  compute, each weight drawn from N(0, 0.02²) on the device (leaf by leaf: no whole-model init
  to compile; the values do not change the cost of a pass)."""
  model = mtp.MTPTransformer(mtp.MTPConfig(**{**fields, "dtype": "bfloat16",
                                              "param_dtype": "bfloat16"}))
  shapes = jax.eval_shape(
      lambda: nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"])
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  key = jax.random.key(seed)
  params = [0.02 * jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
            for i, leaf in enumerate(leaves)]
  return model, jax.tree_util.tree_unflatten(treedef, params)


def pass_costs(budget, out: dict, *, shapes: dict, batch_sizes, draft_heads, **timing) -> None:
  """Per batch size and shape (in that order: batch 1 of every shape first): µs of a plain decode
  step and of a speculative pass with ``k`` draft heads (``decode.pass_us``; ``timing``: its
  ``cache_len``, ``passes``, ``repeats``), their ratio, and the speed-up bound
  ``a · plain / speculative`` at each accepted length ``a`` (tokens per pass, ``1 … k + 1``).
  Random weights draft nothing useful, so only the cost is measured."""
  out.update(timing, results=[])
  models = {name: random_model(fields) for name, fields in shapes.items()}
  for batch_size in batch_sizes:
    for name, (model, params) in models.items():
      measure = lambda **kw: decode.pass_us(model, params, batch_size, **kw, **timing)
      row = {"shape": name, "batch_size": batch_size,
             "plain_us": measure(tokens=1, heads=1, unembed="logits"), "speculative": []}
      out["results"].append(row)
      for k in draft_heads:
        spec_us = measure(tokens=k + 1, heads=k + 1, unembed="speculative")
        ratio = spec_us / row["plain_us"]
        row["speculative"].append({
            "draft_heads": k, "pass_us": spec_us, "pass_over_plain": ratio,
            "speedup_bound_by_accepted_length": {str(a): a / ratio for a in range(1, k + 2)}})
        budget.check(f"{name} batch {batch_size} k={k}")


def trained_tiny(budget, out: dict, *, steps: int, batch_size: int, max_len: int, shape: dict,
                 dataset_sizes: dict | None, n_prompts: int, batch_sizes, draft_heads,
                 max_new_tokens: int, repeats: int) -> None:
  """The tiny MTP model trained here (``decode.train_tiny``, ``steps`` steps; on the synthetic
  dataset the runs use, or one of ``dataset_sizes`` in a temporary directory), then plain vs
  self-speculative generation of ``n_prompts`` test prompts end to end
  (``decode.generation_speed``) at each batch size: tokens/s, speed-up, accepted lengths."""
  with tempfile.TemporaryDirectory() as tmp:
    dataset = synthetic.ensure_dataset(tmp, **dataset_sizes) if dataset_sizes else None
    model, params, tok, directory, loss = decode.train_tiny(
        steps, dataset=dataset, batch_size=batch_size, max_len=max_len, **shape)
    out.update(train_steps=steps, train_loss=loss, model_overrides=shape,
               n_heads=model.cfg.n_future_tokens, results=[])
    budget.check("training")
    prompts = decode.synthetic_prompts(directory, tok, n_prompts)
  out.update(n_prompts=len(prompts), max_new_tokens=max_new_tokens)
  for rows in batch_sizes:
    out["results"].append(decode.generation_speed(
        model, params, prompts, batch_size=rows, draft_heads=draft_heads, repeats=repeats,
        max_new_tokens=max_new_tokens, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id or 0))
    budget.check(f"generation at batch {rows}")


def projected_speedups(passes: dict, tiny: dict) -> list[dict]:
  """Decoding speed-up on each large shape with the tiny model's accepted lengths: per shape,
  batch size and ``k``, ``mean_accepted_length (tiny, same batch size and k) · plain /
  speculative (shape)`` (the tiny model's prefill and stopping left out)."""
  accepted = {(row["batch_size"], s["draft_heads"]): s["mean_accepted_length"]
              for row in tiny.get("results", []) for s in row["speculative"]}
  projected = []
  for row in passes.get("results", []):
    for spec in row["speculative"]:
      length = accepted.get((row["batch_size"], spec["draft_heads"]))
      if length is not None:
        projected.append({"shape": row["shape"], "batch_size": row["batch_size"],
                          "draft_heads": spec["draft_heads"], "tiny_mean_accepted_length": length,
                          "speedup": length / spec["pass_over_plain"]})
  return projected
