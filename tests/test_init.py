"""The initial params: frozen models stored in another dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from train_helpers import build_run
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.training import init as init_lib


def test_frozen_critic_params_in_bfloat16(small_dataset, tmp_path):
  """``frozen_param_dtype="bfloat16"`` casts the frozen critic while restoring it; the trained
  params stay fp32 and the critic's values stay within bf16 rounding of fp32."""
  config = tiny_config("verifiable", small_dataset)
  state32, frozen32, context32, batches = build_run(config, tmp_path)  # a fresh fp32 critic
  critic = context32.objective.frozen_models["critic"]
  # A fresh value head's output kernel is zero (constant values): make it random, as if trained.
  out = frozen32.models["critic"]["value_head"]["out"]
  out["kernel"] = jax.device_put(jax.random.normal(jax.random.key(1), out["kernel"].shape) / 3,
                                 out["kernel"].sharding)
  pretrained.save_params(tmp_path / "critic", critic.cfg, frozen32.models["critic"],
                         kind=pretrained.model_kind(critic))
  config.critic.checkpoint = str(tmp_path / "critic")
  config.train.frozen_param_dtype = "bfloat16"
  state16, frozen16, _, _ = build_run(config, tmp_path)
  critic16 = frozen16.models["critic"]
  assert {x.dtype for x in jax.tree_util.tree_leaves(critic16)} == {jnp.dtype(jnp.bfloat16)}
  for a, b in zip(jax.tree_util.tree_leaves(critic16),
                  jax.tree_util.tree_leaves(frozen32.models["critic"])):
    assert a.sharding == b.sharding
  for a, b in zip(jax.tree_util.tree_leaves(state16.trainable),
                  jax.tree_util.tree_leaves(state32.trainable)):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  values = jax.jit(lambda p, b: critic.apply({"params": p}, b["tokens"], b["attention_mask"]))
  v16, v32 = values(critic16, batches[0]), values(frozen32.models["critic"], batches[0])
  assert v16.dtype == v32.dtype == jnp.float32  # computed in the module's dtype
  # bf16 keeps 8 significant bits (relative rounding ≤ 2^-9 ≈ 2e-3 per weight); through the
  # layers these errors add up to 7e-3 relative at most here (values 0.3 … 1.75).
  assert np.ptp(np.asarray(v32)) > 1.0
  np.testing.assert_allclose(v16, v32, rtol=1e-2)
  for bad in ("bfloat17", "int8"):
    config.train.frozen_param_dtype = bad
    with pytest.raises(ValueError, match="config.train.frozen_param_dtype"):
      init_lib.frozen_param_dtype(config)
