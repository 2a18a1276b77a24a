"""The train loop: every pipeline end to end, objectives' equivalences, accumulation, resume, LoRA."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from wmtp_jax.training import lora, mesh as mesh_lib, loop as train
from wmtp_jax import main as main_lib, objectives
from wmtp_jax.config import common as config_lib
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.data import jsonl, run_data
from wmtp_jax.eval import interval

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup(config, tmp_path, *, steps=None):
  """``(state, setup, batches)`` with the first batches of the run's data."""
  objective = objectives.build(config)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  data = run_data.build(config, objective, tmp_path)
  state, setup, _ = train.build_state(config, objective, mesh, rules, steps or config.train.steps)
  it = iter(data.train)
  batches = [data.to_global(next(it), setup.batch_sharding) for _ in range(2)]
  return state, setup, batches


def _step_fn(setup, config):
  return jax.jit(lambda s, b: train.train_step(setup, config.train.grad_accum, s, setup.frozen_base,
                                               setup.frozen_models, b))


def _with_prerequisites(config, tmp_path):
  """Train the critic / reference ``config`` needs for 2 steps and point it at them."""
  for name in ("critic", "reference"):
    if name in config:
      config[name].run.train.steps = 2
  main_lib.train_prerequisites(config, tmp_path)
  return config


@pytest.mark.parametrize("pipeline", ["baseline", "critic", "verifiable", "rho1", "ref_tuning"])
def test_each_pipeline_overfits_a_fixed_batch(pipeline, small_dataset, tmp_path):
  config = tiny_config(pipeline, small_dataset)  # critic / reference freshly initialised
  config.optim.warmup_steps = 0
  config.optim.lr = 1e-2  # allowed to overfit
  state, setup, batches = _setup(config, tmp_path, steps=30)
  step = _step_fn(setup, config)
  losses = []
  for _ in range(20):
    state, metrics = step(state, batches[0])
    losses.append(float(metrics["step_loss"]))
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < 0.8 * losses[0], losses


def test_all_ones_weights_equal_baseline(small_dataset, tmp_path):
  base_cfg = tiny_config("baseline", small_dataset)
  state, setup, batches = _setup(base_cfg, tmp_path)
  _, base_metrics = _step_fn(setup, base_cfg)(state, batches[0])

  # Critic and reference freshly initialised: the weights do not depend on them here.
  ver_cfg = tiny_config("verifiable", small_dataset)
  ver_cfg.weighting.min_weight = ver_cfg.weighting.max_weight = 1.0  # every weight clipped to 1
  rho_cfg = tiny_config("rho1", small_dataset)
  rho_cfg.rho1.k_percent = 1.0  # every valid term selected
  for cfg in (ver_cfg, rho_cfg):
    st, su, bs = _setup(cfg, tmp_path)
    new_state, metrics = _step_fn(su, cfg)(st, bs[0])
    assert float(metrics["step_loss"]) == float(base_metrics["step_loss"])
    assert float(metrics["grad_norm"]) == float(base_metrics["grad_norm"])


@pytest.mark.parametrize("pipeline", ["baseline", "verifiable"])
def test_gradient_accumulation_equals_one_large_batch(pipeline, small_dataset, tmp_path):
  config = tiny_config(pipeline, small_dataset)
  _with_prerequisites(config, tmp_path)
  state, setup, batches = _setup(config, tmp_path)
  one = jax.jit(lambda s, b: train.loss_and_grads(setup, s, setup.frozen_base,
                                                  setup.frozen_models, b, 1))(state, batches[0])
  four = jax.jit(lambda s, b: train.loss_and_grads(setup, s, setup.frozen_base,
                                                   setup.frozen_models, b, 4))(state, batches[0])
  np.testing.assert_allclose(four[0], one[0], rtol=1e-5, atol=1e-6)
  for g4, g1 in zip(jax.tree_util.tree_leaves(four[1]), jax.tree_util.tree_leaves(one[1])):
    np.testing.assert_allclose(g4, g1, rtol=1e-4, atol=1e-6)
  if pipeline == "verifiable":  # the EMA update sees the moments of the whole batch
    for a, b in zip(jax.tree_util.tree_leaves(four[3]), jax.tree_util.tree_leaves(one[3])):
      np.testing.assert_allclose(a, b, rtol=1e-5)


def test_nonfinite_step_is_skipped_and_counted(small_dataset, tmp_path):
  config = tiny_config("baseline", small_dataset)
  state, setup, batches = _setup(config, tmp_path)
  before = jax.device_get(state.trainable)
  leaf = ("params", "norm", "weight")
  flat = flax.traverse_util.flatten_dict(state.trainable)
  flat[leaf] = flat[leaf].at[0].set(jnp.nan)
  bad = state.replace(trainable={**flax.traverse_util.unflatten_dict(flat), "lora": {}})
  new_state, metrics = _step_fn(setup, config)(bad, batches[0])
  assert int(metrics["skipped_steps"]) == 1 and int(metrics["nonfinite_streak"]) == 1
  assert int(new_state.step) == 1
  after = flax.traverse_util.flatten_dict(jax.device_get(new_state.trainable))
  for path, value in flax.traverse_util.flatten_dict(before).items():
    if path != leaf:
      np.testing.assert_array_equal(after[path], value)  # no update applied


def test_lora_trains_only_adapters_and_merges(small_dataset, tmp_path):
  config = tiny_config("baseline", small_dataset)
  config.lora.enabled = True
  config.lora.settings.rank = 4
  config.lora.settings.targets = ("q", "v", "down")
  config.train.trainable = "norm/.*"  # plus one base parameter group that trains
  state, setup, batches = _setup(config, tmp_path)
  frozen_before = jax.device_get(setup.frozen_base)
  step = _step_fn(setup, config)
  for _ in range(3):
    state, _ = step(state, batches[0])
  for after, before in zip(jax.tree_util.tree_leaves(jax.device_get(setup.frozen_base)),
                           jax.tree_util.tree_leaves(frozen_before)):
    np.testing.assert_array_equal(after, before)
  assert set(state.trainable["params"]) == {"norm"}
  assert any(np.abs(np.asarray(b)).sum() > 0
             for b in jax.tree_util.tree_leaves(state.trainable["lora"]))
  params = train.full_params(state.trainable, setup.frozen_base)
  tokens, mask = batches[0]["tokens"], batches[0]["attention_mask"]
  with lora.applied(state.trainable["lora"], setup.lora_cfg):
    adapted = setup.objective.model.apply({"params": params}, tokens, mask)
  merged = setup.objective.model.apply(
      {"params": lora.merge(params, state.trainable["lora"], setup.lora_cfg)}, tokens, mask)
  np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-4)
  opt_leaves = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
  n_trainable = sum(x.size for x in jax.tree_util.tree_leaves(state.trainable))
  n_all = n_trainable + sum(x.size for x in jax.tree_util.tree_leaves(setup.frozen_base))
  assert opt_leaves < 3 * n_trainable + 16 < n_all  # Adam moments for the trainable part only


def test_frozen_critic_params_in_bfloat16(small_dataset, tmp_path):
  """``frozen_param_dtype="bfloat16"`` casts the frozen critic while restoring it; the trained
  params stay fp32 and the critic's values stay within bf16 rounding of fp32."""
  config = tiny_config("verifiable", small_dataset)
  state32, setup32, batches = _setup(config, tmp_path)  # a freshly initialised fp32 critic
  critic = setup32.objective.frozen_models["critic"]
  # A fresh value head's output kernel is zero (constant values): make it random, as if trained.
  out = setup32.frozen_models["critic"]["value_head"]["out"]
  out["kernel"] = jax.device_put(jax.random.normal(jax.random.key(1), out["kernel"].shape) / 3,
                                 out["kernel"].sharding)
  pretrained.save_params(tmp_path / "critic", critic.cfg, setup32.frozen_models["critic"],
                         kind=pretrained.model_kind(critic))
  config.critic.checkpoint = str(tmp_path / "critic")
  config.train.frozen_param_dtype = "bfloat16"
  state16, setup16, _ = _setup(config, tmp_path)
  critic16 = setup16.frozen_models["critic"]
  assert {x.dtype for x in jax.tree_util.tree_leaves(critic16)} == {jnp.dtype(jnp.bfloat16)}
  for a, b in zip(jax.tree_util.tree_leaves(critic16),
                  jax.tree_util.tree_leaves(setup32.frozen_models["critic"])):
    assert a.sharding == b.sharding
  for a, b in zip(jax.tree_util.tree_leaves(state16.trainable),
                  jax.tree_util.tree_leaves(state32.trainable)):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  values = jax.jit(lambda p, b: critic.apply({"params": p}, b["tokens"], b["attention_mask"]))
  v16, v32 = values(critic16, batches[0]), values(setup32.frozen_models["critic"], batches[0])
  assert v16.dtype == v32.dtype == jnp.float32  # computed in the module's dtype
  # bf16 keeps 8 significant bits (relative rounding ≤ 2^-9 ≈ 2e-3 per weight); through the
  # layers these errors add up to 7e-3 relative at most here (values 0.3 … 1.75).
  assert np.ptp(np.asarray(v32)) > 1.0
  np.testing.assert_allclose(v16, v32, rtol=1e-2)
  for bad in ("bfloat17", "int8"):
    config.train.frozen_param_dtype = bad
    with pytest.raises(ValueError, match="config.train.frozen_param_dtype"):
      train.frozen_param_dtype(config)


def _run_losses(workdir: pathlib.Path) -> dict[int, float]:
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["step_loss"] for r in rows if "step_loss" in r}


def test_run_writes_metrics_checkpoints_and_exported_model(small_dataset, tmp_path):
  config = tiny_config("baseline", small_dataset)
  result = train.run(config, tmp_path / "run")
  assert np.isfinite(result["step_loss"]) and "val_loss" in result
  run = tmp_path / "run"
  assert sorted(_run_losses(run)) == [1, 2, 3, 4]
  assert (run / "tb").is_dir() and (run / "config.json").is_file()
  assert (run / "checkpoints" / "4").is_dir()
  cfg = pretrained.read_config(run / pretrained.RUN_EXPORT_DIR)
  assert cfg.n_future_tokens == 2
  # A restart of a finished run changes nothing; a different config in the workdir is an error.
  train.run(config, run)
  assert sorted(_run_losses(run)) == [1, 2, 3, 4]
  config.optim.lr = 0.5
  with pytest.raises(ValueError, match=r"config\.json holds a different run's config.*optim\.lr"):
    train.run(config, run)


def test_interval_evaluation_logs_pass_at_1_of_the_current_params(small_dataset, tmp_path,
                                                                   monkeypatch):
  """``eval_pass_at_1`` at every ``every_steps`` (LoRA merged); at the last step it is what
  ``evaluate_problems`` gives on the exported model, with the same completions."""
  config = tiny_config("baseline", small_dataset)
  config.lora.enabled = True
  config.lora.settings.rank = 4
  e = config.evaluate
  e.every_steps, e.interval_problems, e.max_new_tokens, e.batch_size = 2, 4, 24, 4
  results = []
  evaluate = interval.runner.evaluate_problems
  monkeypatch.setattr(interval.runner, "evaluate_problems",
                      lambda *a, **k: results.append(evaluate(*a, **k)) or results[-1])
  run = tmp_path / "run"
  last = train.run(config, run)
  rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  logged = {r["step"]: r[interval.METRIC] for r in rows if interval.METRIC in r}
  assert sorted(logged) == [2, 4] and all(0.0 <= v <= 1.0 for v in logged.values())
  assert last[interval.METRIC] == logged[4]
  cfg, params = pretrained.load_pretrained(run / pretrained.RUN_EXPORT_DIR)
  model = pretrained.KINDS[pretrained.kind_of(cfg)][1](cfg)
  problems = jsonl.read_problems(small_dataset / "test.problems.jsonl")[:4]
  exported = evaluate(model, params, pretrained.load_tokenizer(run / pretrained.RUN_EXPORT_DIR), problems,
                      max_new_tokens=24, batch_size=4, seed=config.seed)
  assert exported["summary"]["pass@1"] == logged[4]
  assert ([s["completion"] for s in exported["samples"]]
          == [s["completion"] for s in results[-1]["samples"]])


_RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from wmtp_jax.training import loop as train
    config = tiny_config("baseline", __import__("pathlib").Path({data!r}), steps=6)
    config.checkpoint.every_steps = 3
    kill_after = int(sys.argv[2])
    if kill_after:
      orig = train.checkpointing.Checkpointer.save
      def save(self, step, *a, **k):
        saved = orig(self, step, *a, **k)
        if step == kill_after:
          os.kill(os.getpid(), signal.{sig})
        return saved
      train.checkpointing.Checkpointer.save = save
    train.run(config, sys.argv[1])
""")


def _resume_script(tmp_path, small_dataset, sig: str) -> pathlib.Path:
  script = tmp_path / f"run_{sig}.py"
  script.write_text(_RESUME_SCRIPT.format(tests=str(ROOT / "tests"), data=str(small_dataset),
                                          sig=sig))
  return script


def _params_of(workdir):
  _, params = pretrained.load_pretrained(workdir / pretrained.RUN_EXPORT_DIR)
  return jax.device_get(params)


def test_exact_resume_after_kill_and_sigterm(small_dataset, tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  straight, killed, termed = tmp_path / "straight", tmp_path / "killed", tmp_path / "termed"
  kill9 = _resume_script(tmp_path, small_dataset, "SIGKILL")
  subprocess.run([sys.executable, kill9, straight, "0"], check=True, env=env, timeout=600)
  first = subprocess.run([sys.executable, kill9, killed, "3"], env=env, timeout=600)
  assert first.returncode == -signal.SIGKILL
  assert not (killed / pretrained.RUN_EXPORT_DIR).exists()
  subprocess.run([sys.executable, kill9, killed, "0"], check=True, env=env, timeout=600)

  # SIGTERM: a checkpoint of the state at that step, then a clean exit (resuming from it is the
  # path checked after the kill -9 above).
  term = _resume_script(tmp_path, small_dataset, "SIGTERM")
  stopped = subprocess.run([sys.executable, term, termed, "3"], env=env, timeout=600)
  assert stopped.returncode == 0
  assert (termed / "checkpoints" / "3").is_dir() and not (termed / pretrained.RUN_EXPORT_DIR).exists()

  want, got = _run_losses(straight), _run_losses(killed)
  assert [got[s] for s in (4, 5, 6)] == [want[s] for s in (4, 5, 6)]
  for a, b in zip(jax.tree_util.tree_leaves(_params_of(killed)),
                  jax.tree_util.tree_leaves(_params_of(straight))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # covered by test_scale.py::test_presets_and_tensor_parallel_match_one_device
def test_sharded_training_matches_one_device(small_dataset, tmp_path):
  """8 fake CPU devices (data × fsdp) give the losses of one device; params really are sharded."""
  script = tmp_path / "sharded.py"
  script.write_text(textwrap.dedent(f"""
      import json, pathlib, sys
      import jax
      jax.config.update("jax_num_cpu_devices", int(sys.argv[2]))
      sys.path.insert(0, {str(ROOT / "tests")!r})
      from conftest import tiny_config
      from wmtp_jax.training import mesh, loop as train
      from wmtp_jax import objectives
      config = tiny_config("baseline", pathlib.Path({str(small_dataset)!r}))
      config.mesh.shape.data, config.mesh.shape.fsdp = int(sys.argv[3]), int(sys.argv[4])
      train.run(config, sys.argv[1])
      m = mesh.make_mesh(config.mesh.shape)
      state, _, _ = train.build_state(config, objectives.build(config), m,
                                      mesh.param_rules(config.mesh), 4)
      wq = state.trainable["params"]["trunk_0"]["attention"]["wq"]["kernel"]
      print(json.dumps([str(a) for a in wq.sharding.spec]))
  """))
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  specs = {}
  for name, devices, data, fsdp in (("one", 1, 1, 1), ("eight", 8, 2, 4)):
    out = subprocess.run([sys.executable, script, tmp_path / name, str(devices), str(data),
                          str(fsdp)], check=True, env=env, timeout=600, capture_output=True,
                         text=True)
    specs[name] = json.loads(out.stdout.strip().splitlines()[-1])
  one, eight = _run_losses(tmp_path / "one"), _run_losses(tmp_path / "eight")
  np.testing.assert_allclose([eight[s] for s in sorted(eight)], [one[s] for s in sorted(one)],
                             rtol=1e-5)
  assert specs["eight"][0] == "fsdp"  # wq [embed, heads, head_dim]: embed → fsdp (DEFAULT_RULES)


def test_main_trains_critic_first_and_required_keys(small_dataset, tmp_path):
  config = tiny_config("verifiable", small_dataset)
  config.critic.run.train.steps = 2
  report = main_lib.run(config, tmp_path)
  assert set(report) == {"critic", "verifiable"}
  assert pretrained.read_config(tmp_path / "critic" / pretrained.RUN_EXPORT_DIR).value_head == "mlp"
  with pytest.raises(ValueError, match=r"config\.init\.checkpoint is required"):
    main_lib.run(config_lib.load("verifiable", "7b"), tmp_path / "7b")


def test_lora_run_exports_merged_model_that_transformers_loads(small_dataset, tmp_path):
  """A LoRA run's WORKDIR exports (adapters merged) to a HF directory with the same logits."""
  import torch
  import transformers
  from wmtp_jax import convert
  config = tiny_config("baseline", small_dataset)
  config.lora.enabled = True
  config.train.trainable = ""  # adapters only
  config.optim.lr = 1e-2
  train.run(config, tmp_path / "run")
  convert.main(["export-hf", "--src", str(tmp_path / "run"), "--dst", str(tmp_path / "hf"),
                "--dtype", "fp32"])
  cfg, params = pretrained.load_pretrained(tmp_path / "run")
  tokens = np.arange(1, 21, dtype=np.int32)[None] % cfg.vocab_size
  ours = objectives.build(config).model.apply({"params": params}, tokens)[:, :, 0]
  hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
  base = train.initial_params(config, objectives.build(config), mesh_lib.make_mesh(config.mesh.shape),
                              mesh_lib.param_rules(config.mesh))
  wq = ("trunk_0", "attention", "wq", "kernel")
  assert not np.allclose(flax.traverse_util.flatten_dict(params)[wq],
                         flax.traverse_util.flatten_dict(jax.device_get(base))[wq])  # merged
