"""The train loop: a run's metrics, checkpoints and exported model, exact resume after a kill
and after SIGTERM (``loop.Preempted``), sharded training, a LoRA run's export."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from train_helpers import ROOT, run_losses
from wmtp_jax import objectives
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.training import hooks, init as init_lib, loop, mesh as mesh_lib, step as step_lib


def test_run_writes_metrics_checkpoints_and_exported_model(small_dataset, tmp_path):
  config = tiny_config("baseline", small_dataset)
  result = loop.run(config, tmp_path / "run")
  assert np.isfinite(result["step_loss"]) and "val_loss" in result
  run = tmp_path / "run"
  assert sorted(run_losses(run)) == [1, 2, 3, 4]
  assert (run / "tb").is_dir() and (run / "config.json").is_file()
  assert (run / "checkpoints" / "4").is_dir()
  cfg = pretrained.read_config(run / pretrained.RUN_EXPORT_DIR)
  assert cfg.n_future_tokens == 2
  # A restart of a finished run changes nothing; a different config in the workdir is an error.
  loop.run(config, run)
  assert sorted(run_losses(run)) == [1, 2, 3, 4]
  config.optim.lr = 0.5
  with pytest.raises(ValueError, match=r"config\.json holds a different run's config.*optim\.lr"):
    loop.run(config, run)


def _logged(workdir: pathlib.Path) -> dict[int, dict]:
  """``{step: every value logged at the step}`` of ``metrics.jsonl``."""
  rows: dict[int, dict] = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    rows.setdefault(row["step"], {}).update(row)
  return rows


def test_step_time_leaves_out_validation_hooks_and_checkpoints(small_dataset, tmp_path):
  """A hook that sleeps 2 s at steps 2 and 4 (where validation and checkpoints also run): the
  step time of those steps does not include the sleep, and the hook's, the validation's and the
  checkpoint's durations are logged at the step."""
  def sleep(view: hooks.StepView) -> dict[str, float]:
    time.sleep(2.0)
    return {"slept_at": float(view.step)}

  config = tiny_config("baseline", small_dataset)  # validation and checkpoints every 2 steps
  loop.run(config, tmp_path / "run", hooks=[hooks.Hook("sleep", 2, sleep)])
  rows = _logged(tmp_path / "run")
  for step in (2, 4):
    assert rows[step]["slept_at"] == step and rows[step]["time/sleep_s"] >= 2.0
    assert rows[step]["time/validation_s"] > 0 and rows[step]["time/checkpoint_s"] > 0
    assert 0 < rows[step]["step_time_s"] < 2.0, rows[step]
  # Step 1 also has a checkpoint (orbax saves the first step), step 3 nothing.
  assert not {"slept_at", "time/sleep_s", "time/validation_s"} & set(rows[1])
  assert not {"slept_at", "time/sleep_s", "time/validation_s", "time/checkpoint_s"} & set(rows[3])


@pytest.mark.parametrize("limit", [1, 2])
def test_nonfinite_streak_stops_the_run_and_keeps_only_good_checkpoints(limit, small_dataset,
                                                                        tmp_path, monkeypatch):
  """Every loss from step 4 on is NaN (the updates are skipped). The run stops at the step whose
  streak reaches the limit: at once at a checkpoint step (step 4, limit 1), else when its metrics
  are fetched one step later (step 5, limit 2, while step 6 runs); no checkpoint of a state whose
  streak reached the limit is written."""
  loss_and_grads = step_lib.loss_and_grads

  def nan_from_step_4(context, state, *args, **kwargs):
    loss, *rest = loss_and_grads(context, state, *args, **kwargs)
    return (jnp.where(state.step >= 3, jnp.nan, loss), *rest)

  monkeypatch.setattr(step_lib, "loss_and_grads", nan_from_step_4)
  config = tiny_config("baseline", small_dataset, steps=8, eval_every=0,
                       max_nonfinite_streak=limit)
  config.checkpoint.update(every_steps=2, keep=10, best_metric="")
  run = tmp_path / "run"
  with pytest.raises(FloatingPointError, match=f"step {3 + limit}: {limit} steps in a row"):
    loop.run(config, run)
  saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == ([1, 2] if limit == 1 else [1, 2, 4])  # orbax also saves the first step
  rows = _logged(run)
  assert all(rows[step]["nonfinite_streak"] < limit for step in saved)


_RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from wmtp_jax.training import loop
    config = tiny_config("baseline", __import__("pathlib").Path({data!r}), steps=6)
    config.checkpoint.every_steps = 3
    kill_after = int(sys.argv[2])
    if kill_after:
      orig = loop.checkpointing.Checkpointer.save
      def save(self, step, *a, **k):
        saved = orig(self, step, *a, **k)
        if step == kill_after:
          os.kill(os.getpid(), signal.{sig})
        return saved
      loop.checkpointing.Checkpointer.save = save
    try:
      loop.run(config, sys.argv[1])
    except loop.Preempted as e:
      print("preempted", e.signal_name, e.outcome.status, e.outcome.step, e.outcome.total_steps)
      sys.exit(75)
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

  # SIGTERM: a checkpoint of the state at that step, then ``Preempted`` saying so (resuming from
  # it is the path checked after the kill -9 above).
  term = _resume_script(tmp_path, small_dataset, "SIGTERM")
  stopped = subprocess.run([sys.executable, term, termed, "3"], env=env, timeout=600,
                           capture_output=True, text=True)
  assert stopped.returncode == 75, stopped.stderr
  assert stopped.stdout.split() == ["preempted", "SIGTERM", "preempted", "4", "6"]
  assert (termed / "checkpoints" / "3").is_dir()
  assert not (termed / pretrained.RUN_EXPORT_DIR).exists()

  want, got = run_losses(straight), run_losses(killed)
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
      from wmtp_jax.training import loop, mesh, state as state_lib
      from wmtp_jax import objectives
      config = tiny_config("baseline", pathlib.Path({str(small_dataset)!r}))
      config.mesh.shape.data, config.mesh.shape.fsdp = int(sys.argv[3]), int(sys.argv[4])
      loop.run(config, sys.argv[1])
      m = mesh.make_mesh(config.mesh.shape)
      state = state_lib.build_state(config, objectives.build(config), m,
                                    mesh.param_rules(config.mesh), 4)[0]
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
  one, eight = run_losses(tmp_path / "one"), run_losses(tmp_path / "eight")
  np.testing.assert_allclose([eight[s] for s in sorted(eight)], [one[s] for s in sorted(one)],
                             rtol=1e-5)
  assert specs["eight"][0] == "fsdp"  # wq [embed, heads, head_dim]: embed → fsdp (DEFAULT_RULES)


def test_lora_run_exports_merged_model_that_transformers_loads(small_dataset, tmp_path):
  """A LoRA run's WORKDIR exports (adapters merged) to a HF directory with the same logits."""
  import torch
  import transformers
  from wmtp_jax import convert
  config = tiny_config("baseline", small_dataset)
  config.lora.enabled = True
  config.train.trainable = ""  # adapters only
  config.optim.lr = 1e-2
  loop.run(config, tmp_path / "run")
  convert.main(["export-hf", "--src", str(tmp_path / "run"), "--dst", str(tmp_path / "hf"),
                "--dtype", "fp32"])
  cfg, params = pretrained.load_pretrained(tmp_path / "run")
  tokens = np.arange(1, 21, dtype=np.int32)[None] % cfg.vocab_size
  ours = objectives.build(config).model.apply({"params": params}, tokens)[:, :, 0]
  hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
  base = init_lib.initial_params(config, objectives.build(config),
                                 mesh_lib.make_mesh(config.mesh.shape),
                                 mesh_lib.param_rules(config.mesh))
  wq = ("trunk_0", "attention", "wq", "kernel")
  assert not np.allclose(flax.traverse_util.flatten_dict(params)[wq],
                         flax.traverse_util.flatten_dict(jax.device_get(base))[wq])  # merged
