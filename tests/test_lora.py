"""Tests for wmtp_jax.training.lora: the adapters' initialisation (PyTorch / PEFT's)."""

import jax
import jax.numpy as jnp
import numpy as np
import flax

from wmtp_jax.config import common as config_lib
from wmtp_jax import objectives
from wmtp_jax.training import lora


def test_a_is_kaiming_uniform_sqrt5_and_b_zero():
  """``kaiming_uniform_(a=√5)`` on torch's ``[r, in]`` weight: ``U(−1/√in, 1/√in)``, the bound
  written from torch's formula ``gain·√(3/fan_in)``, ``gain = √(2/(1+a²))``."""
  config = config_lib.load("critic", "tiny")
  model = objectives.build(config).model
  params = flax.linen.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  cfg = lora.LoRAConfig(rank=16, targets=lora.TARGETS)
  adapters = flax.traverse_util.flatten_dict(lora.init(jax.random.key(1), params["params"], cfg))
  fan_ins = set()
  for path, value in adapters.items():
    value = np.asarray(value)
    if path[-1] == "b":
      assert not value.any(), path
      continue
    fan_in = value.shape[0]
    fan_ins.add(fan_in)
    bound = np.sqrt(2.0 / (1.0 + 5.0)) * np.sqrt(3.0 / fan_in)
    assert value.shape[1] == 16 and np.abs(value).max() <= bound, path
    assert np.abs(value).max() > 0.9 * bound, path  # uniform over the whole interval
    assert abs(value.std() - bound / np.sqrt(3.0)) < 0.1 * bound, path  # not a normal
  assert len(fan_ins) == 2  # the model width and the MLP's hidden width (w2)
