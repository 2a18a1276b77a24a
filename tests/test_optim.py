"""The optimizer: weight decay by parameter name, the same for per-layer and scanned blocks."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax import objectives
from wmtp_jax.config import common as config_lib
from wmtp_jax.training import lora, optim


def _trainable(pipeline: str, *, scan_layers: bool, with_lora: bool):
  """``{"params", "lora"}`` of the tiny ``pipeline`` model (random init), and its optim config."""
  config = config_lib.load(pipeline, "tiny")
  config.model.scan_layers = scan_layers
  config.optim.update(weight_decay=0.5, warmup_steps=0)
  model = objectives.build(config).model
  params = flax.linen.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  adapters = lora.init(jax.random.key(1), params["params"], lora.LoRAConfig()) if with_lora else {}
  return {"params": params["params"], "lora": adapters}, config.optim


def _decayed(trainable, optim_cfg) -> dict[str, bool]:
  """``{path: whether one AdamW step with zero gradients changed the leaf}``, from params of
  ones: with zero gradients the Adam update is 0, so only weight decay moves a leaf."""
  trainable = jax.tree_util.tree_map(jnp.ones_like, trainable)
  tx, _ = optim.make_optimizer(optim_cfg, trainable, total_steps=10)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
  updates, _ = tx.update(zeros, tx.init(trainable), trainable)
  flat = flax.traverse_util.flatten_dict(updates)
  return {"/".join(p): bool(np.any(np.asarray(u) != 0)) for p, u in flat.items()}


@pytest.mark.parametrize("pipeline", ["baseline", "critic"])
def test_weight_decay_by_name_in_both_layouts(pipeline):
  """Kernels and embeddings decay, norm scales, biases and value-head scalars do not, with the
  blocks per layer or as one ``nn.scan`` stack (whose norm scales are ``[L, D]``)."""
  for scan_layers in (False, True):
    trainable, optim_cfg = _trainable(pipeline, scan_layers=scan_layers, with_lora=False)
    decayed = _decayed(trainable, optim_cfg)
    mask = flax.traverse_util.flatten_dict(optim.decay_mask(trainable))
    assert decayed == {"/".join(p): v for p, v in mask.items()}
    for path, value in decayed.items():
      name = path.split("/")[-1]
      assert value == (name in ("kernel", "embedding")), (scan_layers, path)
    names = {path.split("/")[-1] for path in decayed}
    assert {"kernel", "embedding", "weight"} <= names, names
    leaves = flax.traverse_util.flatten_dict(trainable)
    stacked_norms = [p for p in decayed if p.endswith("_norm/weight")
                     and leaves[tuple(p.split("/"))].ndim == 2]
    assert bool(stacked_norms) == scan_layers  # [L, D], not decayed (checked above)
  if pipeline == "critic":
    assert not decayed["params/value_head/out/bias"] and decayed["params/value_head/out/kernel"]


def test_lora_adapters_decay():
  trainable, optim_cfg = _trainable("baseline", scan_layers=False, with_lora=True)
  decayed = _decayed(trainable, optim_cfg)
  adapters = {p: v for p, v in decayed.items() if p.startswith("lora/")}
  assert adapters and all(adapters.values())
  assert {p.split("/")[-1] for p in adapters} == {"a", "b"}
