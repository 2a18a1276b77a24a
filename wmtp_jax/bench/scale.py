"""Benchmark: compiled memory per device and step time of the ``full_shard`` train step on 1, 2, 4
and 8 fake CPU devices (``fsdp`` = N), each device count in its own subprocess (the number of CPU
devices is fixed when JAX initialises).

Per device count: ``state_mib`` (parameters + optimizer state held by one device: the bytes of its
shards), the compiled ``memory/*_mib`` of the train step (``memory_analysis``) and the median step
time (fake devices share this machine's cores: times show overheads, not speed-ups). Target:
``state_mib`` falls as 1/N (``state_mib · N / state_mib(1)`` within 10% of 1).

``--aot=DEVICES`` instead reports the compiled memory per device of the ``baseline:7b`` train step
(Meta 7B_1T_4, LoRA, 2048 tokens, ``--batch-size`` sequences per step) on a mesh of DEVICES fake
CPU devices (``--aot-shape``, default all on ``fsdp``), lowered ahead of time from abstract inputs:
nothing is allocated, so the pod shape needs no hardware. It adds the MiB per device of the
``verifiable:7b`` frozen critic's params on the same mesh, in their ``param_dtype`` and in
``config.train.frozen_param_dtype`` (what storing them in bf16 saves).

``--scan-compile=LAYERS`` instead reports the seconds to lower and compile the ``baseline:tiny``
train step (one device) with ``n_layers=LAYERS``, unrolled and with ``scan_layers`` (the trunk as
one ``nn.scan`` loop), measured in this process one after the other, and their ratio.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.training import init as init_lib, lora, mesh as mesh_lib, optim, state as state_lib
from wmtp_jax.training import step as step_lib
from wmtp_jax import objectives
from wmtp_jax.config import common as config_lib

TARGET_TOLERANCE = 0.10


def _measure(n_devices: int, batch_size: int, seq_len: int, steps: int, remat: str) -> dict:
  """Memory and step time of one device count (run in a fresh process)."""
  jax.config.update("jax_num_cpu_devices", n_devices)  # before the first use of a device

  config = config_lib.load("baseline", "tiny")
  config.mesh.shape.data, config.mesh.shape.fsdp = 1, -1
  config.mesh.preset = "full_shard"
  config.data.batch_size, config.data.max_len = batch_size, seq_len
  config.model.remat = remat
  objective = objectives.build(config)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  state, frozen, context, _ = state_lib.build_state(config, objective, mesh, rules, steps + 1)
  tokens_BxS = np.random.default_rng(0).integers(0, config.model.vocab_size, (batch_size, seq_len))
  batch = jax.device_put({"tokens": tokens_BxS, "labels": tokens_BxS,
                          "attention_mask": np.ones_like(tokens_BxS)}, context.batch_sharding)
  step, _, memory = step_lib.compile_steps(context, config, state, frozen, batch)
  device = jax.devices()[0]
  state_bytes = sum(s.data.nbytes for x in jax.tree_util.tree_leaves((state.trainable,
                                                                      state.opt_state))
                    for s in x.addressable_shards if s.device == device)
  times = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for _ in range(steps + 1):
      t0 = time.perf_counter()
      state, metrics = step(state, frozen, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
  return {"devices": n_devices, "state_mib": state_bytes / 2**20, **memory,
          "step_time_s": statistics.median(times[1:])}


def _frozen_critic_mib(mesh, rules) -> dict[str, float]:
  """MiB per device (the first device's shards) of the ``verifiable:7b`` frozen critic's params,
  by storage dtype: the module's ``param_dtype`` and ``config.train.frozen_param_dtype``."""
  config = config_lib.load("verifiable", "7b")
  critic = objectives.build(config).frozen_models["critic"]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxes = init_lib.abstract_variables(critic)
    shardings = mesh_lib.shardings_for(boxes, mesh, rules)["params"]
  leaves = list(zip(jax.tree_util.tree_leaves(mesh_lib.strip_boxes(boxes)["params"]),
                    jax.tree_util.tree_leaves(shardings)))
  mib = lambda dtype: sum(np.prod(s.shard_shape(x.shape)) * jnp.dtype(dtype).itemsize
                          for x, s in leaves) / 2**20
  dtypes = (critic.cfg.param_dtype, str(init_lib.frozen_param_dtype(config)))
  return {str(jnp.dtype(d)): float(mib(d)) for d in dtypes}


def _aot_memory(n_devices: int, shape: str, preset: str, batch_size: int, remat: str) -> dict:
  """Compiled memory per device of the ``baseline:7b`` train step, from abstract inputs."""
  jax.config.update("jax_num_cpu_devices", n_devices)  # before the first use of a device

  config = config_lib.load("baseline", "7b")
  for axis, size in (kv.split("=") for kv in shape.split(",")):
    config.mesh.shape[axis] = int(size)
  config.mesh.preset = preset
  config.model.remat = remat
  objective = objectives.build(config)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxes = init_lib.abstract_variables(objective.model)
    params = jax.tree_util.tree_map(abstract, mesh_lib.strip_boxes(boxes)["params"],
                                    mesh_lib.shardings_for(boxes, mesh, rules)["params"])
  is_trainable = optim.regex_matcher(config.train.trainable, where="config.train.trainable")
  trainable_params, frozen_base = optim.split(params, is_trainable)
  lora_cfg = lora.LoRAConfig(**config.lora.settings)
  adapters = jax.eval_shape(lambda p: lora.init(jax.random.key(0), p, lora_cfg), params)
  trainable = {"params": trainable_params,
               "lora": jax.tree_util.tree_map(lambda x: abstract(x, replicated), adapters)}
  tx, _ = optim.make_optimizer(config.optim, trainable, config.train.steps)
  opt_state = jax.tree_util.tree_map(
      abstract, jax.eval_shape(tx.init, trainable),
      state_lib.optimizer_shardings(tx, objective.model, trainable, mesh,
                                mesh_lib.optimizer_rules(config.mesh), is_trainable))
  scalar = lambda dtype, shape=(): jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)
  state = state_lib.TrainState(step=scalar(jnp.int32), trainable=trainable, opt_state=opt_state,
                               aux={}, rng=scalar(jnp.uint32, (2,)), skipped=scalar(jnp.int32),
                               bad_streak=scalar(jnp.int32))
  batch_sharding = nn.logical_to_mesh_sharding(jax.sharding.PartitionSpec("batch"), mesh, rules)
  tokens = jax.ShapeDtypeStruct((batch_size, config.data.max_len), jnp.int32,
                                sharding=batch_sharding)
  batch = {"tokens": tokens, "labels": tokens, "attention_mask": tokens}
  context = state_lib.StepContext(objective, lora_cfg, tx, mesh, rules, batch_sharding)
  _, _, memory = step_lib.compile_steps(context, config, state,
                                        state_lib.Frozen(base=frozen_base, models={}), batch)
  return {"model": "baseline:7b", "devices": n_devices, "mesh": dict(mesh.shape),
          "preset": preset, "remat": remat, "batch_size": batch_size,
          "seq_len": config.data.max_len, **memory,
          "lower_and_compile_s": time.perf_counter() - t0,
          "verifiable_critic_params_mib": _frozen_critic_mib(mesh, rules)}


def _compile_time(n_layers: int, scan_layers: bool, batch_size: int, seq_len: int,
                  remat: str) -> dict:
  """Seconds to lower and compile the tiny train step with ``n_layers`` blocks, and its memory."""
  config = config_lib.load("baseline", "tiny")
  config.data.batch_size, config.data.max_len = batch_size, seq_len
  config.model.n_layers, config.model.remat = n_layers, remat
  config.model.scan_layers = scan_layers
  objective = objectives.build(config)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  state, frozen, context, _ = state_lib.build_state(config, objective, mesh, rules, 1)
  tokens_BxS = np.zeros((batch_size, seq_len), np.int32)
  batch = jax.device_put({"tokens": tokens_BxS, "labels": tokens_BxS,
                          "attention_mask": np.ones_like(tokens_BxS)}, context.batch_sharding)
  t0 = time.perf_counter()
  _, _, memory = step_lib.compile_steps(context, config, state, frozen, batch)
  return {"scan_layers": scan_layers, "compile_s": time.perf_counter() - t0, **memory}


def _scan_compile(n_layers: int, batch_size: int, seq_len: int, remat: str) -> dict:
  rows = [_compile_time(n_layers, scan, batch_size, seq_len, remat) for scan in (False, True)]
  return {"model": "baseline:tiny", "n_layers": n_layers, "remat": remat,
          "batch_size": batch_size, "seq_len": seq_len, "rows": rows,
          "compile_ratio": rows[0]["compile_s"] / rows[1]["compile_s"]}


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench scale", description=__doc__)
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
  parser.add_argument("--remat", default="none", help="config.model.remat of the model")
  parser.add_argument("--aot", type=int, default=0,
                      help="report the 7b train step's compiled memory on this many fake devices")
  parser.add_argument("--aot-shape", default="data=1,fsdp=-1,tensor=1")
  parser.add_argument("--aot-preset", default="full_shard")
  parser.add_argument("--scan-compile", type=int, default=0, metavar="LAYERS",
                      help="report the tiny train step's compile time with this many layers, "
                           "unrolled vs scan_layers")
  parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.scan_compile:
    return _scan_compile(args.scan_compile, args.batch_size, args.seq_len, args.remat)
  if args.aot:
    return _aot_memory(args.aot, args.aot_shape, args.aot_preset, args.batch_size, args.remat)
  if args.worker:
    return _measure(args.worker, args.batch_size, args.seq_len, args.steps, args.remat)
  rows = []
  for n in (int(d) for d in args.devices.split(",")):
    out = subprocess.run(
        [sys.executable, "-m", "wmtp_jax.bench", "scale", f"--worker={n}",
         f"--batch-size={args.batch_size}", f"--seq-len={args.seq_len}", f"--steps={args.steps}",
         f"--remat={args.remat}"],
        check=True, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    rows.append(json.loads(out.stdout))
  one = rows[0]["state_mib"] * rows[0]["devices"]
  for row in rows:
    row["state_scaling"] = row["state_mib"] * row["devices"] / one  # 1.0 = exactly 1/N
  return {"preset": "full_shard", "model": "tiny", "remat": args.remat,
          "batch_size": args.batch_size, "seq_len": args.seq_len, "rows": rows,
          "target_met": all(abs(r["state_scaling"] - 1) <= TARGET_TOLERANCE for r in rows)}
