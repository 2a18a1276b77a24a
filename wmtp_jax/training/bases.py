"""The tiny pretrained bases (``config.init.base``): built once per parameters into the cache and
read as converted checkpoints.

A job whose ``init.checkpoint`` is empty and whose ``init.base`` is ``mtp`` or ``llama`` starts
from the base of that kind (``resolve``): ``configs/pretrain.py:<kind>`` with the job's model
(less the fields that only a run uses: ``RUN_ONLY_FIELDS``), its ``seed`` and its synthetic
dataset (``data.synthetic``, ``data.cache_dir``; the base reads that dataset's tokenizer). The
base lives in the cache beside the dataset (``wmtp_jax.data.cache``) as
``<cache root>/base-<kind>-s<seed>-<hash8>/``, the hash covering ``BASE_VERSION``, the corpus's
version and the pretrain config but its paths, logging, checkpointing and evaluation settings: a
converted-checkpoint directory (``model_config.json``, ``params/``, ``tokenizer/``,
``checkpoints.pretrained``) plus the pre-training's ``metrics.jsonl`` and the cache's
``cache.json``. So the base enters fine-tuning exactly as a converted Meta / HF checkpoint does
in the 7b runs, and ``init.checkpoint`` names it.

Building. Under the cache's lock, the pretrain run trains in ``<cache root>/.<entry>.run/`` (a
run directory like any other: a killed build resumes there, from its last checkpoint), then its
exported model moves into the cache's temporary directory, which is renamed into place; a second
process asking for the same base waits for the lock and reuses it. Several processes of one job
(``jax.process_count() > 1``) cannot build a base: build it first with one process (the same
command), or pass ``init.checkpoint``.

Bad input. A cache entry under the base's name whose ``cache.json`` records other parameters, or
whose model differs from the job's (``check_model``), is an error naming the directory (remove it
to rebuild it); a damaged ``params/`` fails its checksums when loaded. A base needs the synthetic
task's tokenizer: with ``data.dir`` or ``data.tokenizer`` set, ``init.base`` is an error.
"""

import dataclasses
import logging
import os
import pathlib
import shutil
from collections.abc import Callable

import jax
from jax.experimental import multihost_utils

from wmtp_jax.checkpoints import pretrained
from wmtp_jax.config import common as config_lib
from wmtp_jax.data import cache
from wmtp_jax.data.synthetic import corpus
from wmtp_jax.models import presets

log = logging.getLogger("wmtp_jax")

BASE_VERSION = 1  # bump when the way a base is built changes
CACHE_KIND = "base"
KINDS = ("mtp", "llama")
# Model fields a fine-tuning run sets that a base does not have (its value head and its inputs,
# trained heads).
RUN_ONLY_FIELDS = ("value_head", "value_head_dropout", "value_head_bias_init", "value_inputs",
                   "train_heads")
METRICS_FILE = "metrics.jsonl"
CORPUS_BARRIER = "wmtp_jax.training.bases.corpus_dir"
# Not part of a base's identity: paths, and what does not change the trained weights (so that a
# new logging or evaluation key in the shared config sections does not rebuild every base).
_IGNORED_KEYS = (("data", "dir"), ("data", "cache_dir"), ("data", "workers"),
                 ("train", "log_every"), ("checkpoint",), ("evaluate",))

TrainFn = Callable[[object, pathlib.Path], object]  # (pretrain config, run dir) → trains it


def base_config(job):
  """The pretrain config of the base that ``job`` starts from (``job.init.base``): locked."""
  kind = job.init.base
  if kind not in KINDS:
    raise ValueError(f"config.init.base={kind!r}: expected '' or one of {KINDS}")
  if job.data.dir or job.data.tokenizer:
    raise ValueError(f"config.init.base={kind!r} pre-trains on the synthetic task's tokenizer, but "
                     f"config.data.dir={job.data.dir!r} / config.data.tokenizer="
                     f"{job.data.tokenizer!r} is set: pass --config.init.checkpoint=DIR (or "
                     f"--config.init.base='')")
  c = config_lib.load("pretrain", kind)
  job_model = {k: v for k, v in job.model.to_dict().items() if k not in RUN_ONLY_FIELDS}
  base_model = {k: v for k, v in c.model.to_dict().items() if k not in RUN_ONLY_FIELDS}
  if set(job_model) != set(base_model):
    raise ValueError(f"config.init.base={kind!r}: config.model is not a {kind} model (fields "
                     f"{sorted(set(job_model) ^ set(base_model))} differ from "
                     f"configs/pretrain.py:{kind}'s)")
  c.model.update(job_model)
  c.seed = job.seed
  c.data.synthetic.update(job.data.synthetic.to_dict())
  c.data.cache_dir = job.data.cache_dir
  return c


def corpus_dir(config) -> pathlib.Path:
  """The pre-training corpus of a pretrain ``config`` (``data.synthetic.corpus``), built by
  process 0 if missing; every process returns once it is complete (call it from all)."""
  build = lambda: corpus.cached_corpus(config.data.cache_dir,
                                       dataset_params=config.data.synthetic.to_dict(),
                                       **config.corpus)
  path = build() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(CORPUS_BARRIER)
  return path or build()


def use_corpus(config) -> None:
  """A pretrain ``config`` with an empty ``data.dir`` reads its corpus (``corpus_dir``)."""
  if not config.data.dir:
    config.data.dir = str(corpus_dir(config))


def cache_params(config) -> dict:
  """What identifies the base of pretrain ``config``: ``BASE_VERSION``, the corpus's
  ``CORPUS_VERSION`` and the config less its paths, logging, checkpointing and evaluation
  settings (``_IGNORED_KEYS``)."""
  values = config.to_dict()
  for *path, key in _IGNORED_KEYS:
    section = values
    for name in path:
      section = section[name]
    section.pop(key)
  return {"base_version": BASE_VERSION, "corpus_version": corpus.CORPUS_VERSION,
          "config": values}


def entry(config) -> pathlib.Path:
  """Where the base of pretrain ``config`` lives in the cache (built or not)."""
  return cache.entry_path(config.data.cache_dir, CACHE_KIND, cache_params(config),
                          label=f"{config.model_kind}-s{config.seed}")


def cached_base(config, train: TrainFn) -> tuple[pathlib.Path, bool]:
  """``(the base's directory, whether it was built now)`` for pretrain ``config``: reused from the
  cache, or trained by ``train(config, run_dir)`` into ``<cache root>/.<entry>.run`` (resumed
  there after a kill) and moved into the cache."""
  final = entry(config)
  built = []

  def build(tmp: pathlib.Path) -> None:
    run_dir = final.parent / f".{final.name}.run"
    use_corpus(config)
    log.info("pre-training the %s base in %s (cached in %s)", config.model_kind, run_dir, final)
    train(config, run_dir)
    model = pretrained.resolve(run_dir)
    for child in model.iterdir():
      os.rename(child, tmp / child.name)
    shutil.copyfile(run_dir / METRICS_FILE, tmp / METRICS_FILE)
    shutil.rmtree(run_dir)
    built.append(True)

  if jax.process_count() > 1 and not (final / cache.MARKER_FILE).is_file():
    raise RuntimeError(f"the {config.model_kind} base {final} is not built yet, and "
                       f"{jax.process_count()} processes cannot build it: run the same command "
                       f"once with one process, or pass --config.init.checkpoint")
  path = cache.cached_dir(config.data.cache_dir, CACHE_KIND, cache_params(config), build,
                          label=f"{config.model_kind}-s{config.seed}")
  return path, bool(built)


def check_model(path: pathlib.Path, job) -> None:
  """The base at ``path`` must have ``job``'s model (``RUN_ONLY_FIELDS`` aside)."""
  stored = dataclasses.asdict(pretrained.read_config(path))
  config_cls, _ = pretrained.KINDS[job.init.base]
  wanted = dataclasses.asdict(presets.build(
      config_cls, {k: v for k, v in job.model.to_dict().items() if k not in RUN_ONLY_FIELDS},
      where="config.model"))
  differ = sorted(k for k in set(stored) | set(wanted)
                  if k not in RUN_ONLY_FIELDS and stored.get(k) != wanted.get(k))
  if differ:
    raise ValueError(f"{path}: the cached base's model ({pretrained.CONFIG_FILE}) differs from "
                     f"config.model in {differ}; remove {path} to rebuild it")


def resolve(job, train: TrainFn) -> tuple[pathlib.Path, bool] | None:
  """Point ``job.init.checkpoint`` at the base ``job.init.base`` (built if missing, by ``train``)
  when ``init.checkpoint`` is empty; returns ``cached_base``'s answer, or None when no base is
  used."""
  if job.init.checkpoint or not job.init.base:
    return None
  path, built = cached_base(base_config(job), train)
  check_model(path, job)
  job.init.checkpoint = str(path)
  return path, built
