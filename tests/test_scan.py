"""``scan_layers``: the scanned blocks compute what the per-layer blocks do, and the scanned layout
converts to and from the per-layer layout that checkpoints keep on disk (``scan_layout``)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from torch_reference import padded_batch
from wmtp_jax.checkpoints import checkpointer as checkpointing, pretrained
from wmtp_jax.decoding.adapter import ModelAdapter
from wmtp_jax.training import lora, mesh as mesh_lib
from wmtp_jax.models import scan_layout
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

TINY_MTP = MTPConfig(dim=32, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=61, multiple_of=16,
                     n_future_tokens=2)  # 2 trunk blocks
TINY_LLAMA = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
SCANNED_PATH = {"mtp": ("trunk",), "llama": ("model", "layers")}
MODELS = {"mtp": (TINY_MTP, MTPTransformer), "llama": (TINY_LLAMA, LlamaForCausalLM)}


def _per_layer_params(kind: str):
  """Per-layer params of the unscanned ``kind`` model (random norms too, so every leaf matters)."""
  config, model_cls = MODELS[kind]
  shapes = pretrained.abstract_params(config)  # drawn with numpy: nothing to compile
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    if path[-1].key == "weight":  # RMSNorm
      return jnp.asarray(1 + 0.1 * rng.normal(size=leaf.shape), jnp.float32)
    fan_in = 1 if path[-1].key == "embedding" else leaf.shape[0] * (
        leaf.shape[1] if path[-2].key == "wo" else 1)
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes))


def _scanned(config, **changes):
  return dataclasses.replace(config, scan_layers=True, **changes)


@pytest.mark.parametrize("kind,remat", [("mtp", "full"), ("llama", "dots_saveable")])
def test_scanned_logits_and_gradients_equal_per_layer(kind, remat):
  """Unscanned without remat vs scanned with ``remat`` (``nn.remat`` inside ``nn.scan``)."""
  config, model_cls = MODELS[kind]
  params = _per_layer_params(kind)
  stacked = scan_layout.stack_layers(params, SCANNED_PATH[kind])
  tokens, mask = padded_batch(np.random.default_rng(0), config.vocab_size, 2, 7, [7, 4])

  def loss(model, p):
    logits = model.apply({"params": p}, tokens, mask)
    mask_BxSx___ = mask.reshape(mask.shape + (1,) * (logits.ndim - 2))
    return jnp.sum(jnp.tanh(logits) * mask_BxSx___), logits

  grad = jax.jit(jax.grad(loss, argnums=1, has_aux=True), static_argnums=0)
  want_grads, want = grad(model_cls(config), params)
  got_grads, got = grad(model_cls(_scanned(config, remat=remat)), stacked)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Composite tolerance: the scan changes XLA's fusions, hence the fp32 summation order.
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4),
               scan_layout.to_per_layer(got_grads), want_grads)


def test_stack_unstack_round_trip_and_scanned_init_layout():
  params = _per_layer_params("mtp")
  stacked = scan_layout.stack_layers(params, ("trunk",))
  assert stacked["trunk"]["attention"]["wq"]["kernel"].shape == (2, 32, 4, 8)
  assert not any(k.startswith("trunk_") for k in stacked) and "head_1" in stacked
  jax.tree.map(np.testing.assert_array_equal, scan_layout.to_per_layer(stacked), params)
  numpy = jax.tree.map(np.asarray, params)
  assert jax.tree.structure(scan_layout.to_scanned(numpy, [("trunk",)])) == jax.tree.structure(
      stacked)
  assert isinstance(scan_layout.to_scanned(numpy, [("trunk",)])["trunk"]["ffn_norm"]["weight"],
                    np.ndarray)
  # A scanned model initialises exactly that layout, with a leading ``layers`` logical axis.
  boxed = pretrained.abstract_params(_scanned(TINY_MTP))
  assert jax.tree.map(jnp.shape, nn.meta.unbox(boxed)) == jax.tree.map(jnp.shape, stacked)
  assert boxed["trunk"]["attention"]["wq"]["kernel"].names == ("layers", "embed", "heads",
                                                               "head_dim")
  llama = _per_layer_params("llama")
  scanned_llama = pretrained.abstract_params(_scanned(TINY_LLAMA))
  assert scan_layout.scanned_paths(nn.meta.unbox(scanned_llama)) == [("model", "layers")]
  assert jax.tree.map(jnp.shape, scan_layout.to_per_layer(nn.meta.unbox(scanned_llama))) == (
      jax.tree.map(jnp.shape, llama))
  with pytest.raises(ValueError, match=r"cannot stack trunk: .*indices \[1\]"):
    scan_layout.stack_layers({k: v for k, v in params.items() if k != "trunk_0"}, ("trunk",))
  # Without trunk blocks nothing is scanned.
  no_trunk = _scanned(TINY_MTP, n_layers=2)
  assert scan_layout.scanned_paths(nn.meta.unbox(pretrained.abstract_params(no_trunk))) == []


def test_scanned_model_restores_unscanned_checkpoint_and_exports_per_layer(tmp_path):
  params = _per_layer_params("mtp")
  pretrained.save_params(tmp_path / "converted", TINY_MTP, params)
  # Into shardings (a 1-device mesh under the full_shard rules), as a training run does.
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1}, jax.devices()[:1])
  boxed = pretrained.abstract_params(_scanned(TINY_MTP))
  shardings = mesh_lib.shardings_for(boxed, mesh, mesh_lib.DEFAULT_RULES)
  # The ``layers`` axis maps to no mesh axis; the per-layer dims shard as in an unscanned block.
  assert shardings["trunk"]["attention"]["wq"]["kernel"].spec == jax.sharding.PartitionSpec(
      None, *shardings["head_0"]["attention"]["wq"]["kernel"].spec)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        mesh_lib.strip_boxes(boxed), shardings)
  restored = checkpointing.load_params(tmp_path / "converted", target, where="init.checkpoint")
  jax.tree.map(np.testing.assert_array_equal, restored,
               scan_layout.stack_layers(params, ("trunk",)))
  assert restored["trunk"]["attention"]["wq"]["kernel"].sharding == (
      shardings["trunk"]["attention"]["wq"]["kernel"])

  # The scanned model's export is per-layer on disk and loads in an unscanned model.
  pretrained.save_params(tmp_path / "export", _scanned(TINY_MTP), restored)
  assert ("trunk_1", "attention", "wq", "kernel") in pretrained.stored_shapes(tmp_path / "export")
  config, loaded = pretrained.load_pretrained(tmp_path / "export", scan_layers=False)
  assert not config.scan_layers
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  _, loaded_scanned = pretrained.load_pretrained(tmp_path / "export")  # its config: scanned
  jax.tree.map(np.testing.assert_array_equal, loaded_scanned, restored)


def test_kv_cache_decoding_with_scanned_blocks():
  """Prefill + one cached step (``generate``'s model calls, all heads): the scanned blocks' cache
  is stacked like their params, ``[L, B, C, K, H]``, and the logits equal the per-layer model's."""
  params = _per_layer_params("mtp")
  tokens_BxS = jnp.asarray(np.random.default_rng(1).integers(0, TINY_MTP.vocab_size, (2, 5)))

  @functools.partial(jax.jit, static_argnums=0)
  def prefill_and_step(model, params):
    adapter, heads = ModelAdapter(model), TINY_MTP.n_future_tokens
    cache = adapter.init_cache(2, 8, heads=heads)
    _, cache = adapter.forward(params, cache, tokens_BxS[:, :4], jnp.zeros(2, jnp.int32),
                               heads=heads)
    return adapter.forward(params, cache, tokens_BxS[:, 4:], jnp.full(2, 4, jnp.int32), heads=heads)

  want, _ = prefill_and_step(MTPTransformer(TINY_MTP), params)
  got, cache = prefill_and_step(MTPTransformer(_scanned(TINY_MTP)),
                                scan_layout.stack_layers(params, SCANNED_PATH["mtp"]))
  assert cache["trunk"]["attention"]["cached_key"].shape == (2, 2, 8, 2, 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lora_on_scanned_blocks_is_a_clear_error():
  params = scan_layout.stack_layers(_per_layer_params("mtp"), ("trunk",))
  with pytest.raises(ValueError, match="LoRA needs per-layer blocks.*scan_layers=False"):
    lora.init(jax.random.key(0), params, lora.LoRAConfig())
