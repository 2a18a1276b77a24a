"""``evaluate``: pass@k (GSM8K accuracy) of a checkpoint on one benchmark.

    python -m wmtp_jax.main --config=configs/evaluate.py[:7b] \\
        --config.checkpoint=WORKDIR_OR_CONVERTED --config.benchmark=humaneval \\
        [--config.n_samples=20 --config.temperature=0.8] [--workdir=DIR]

``checkpoint``: a converted checkpoint directory (``python -m wmtp_jax.convert``) or a finished
training run's workdir; its ``model_config.json`` says which model it is (else ``model`` /
``model_kind`` below), its ``tokenizer/`` is used unless ``tokenizer`` is set. ``benchmark``:
``synthetic`` (default: the embedded task's held-out problems), ``humaneval``, ``mbpp``
(``data``: ``mbpp.jsonl`` or its directory; ``sanitized=True`` for the hand-verified subset),
``codecontests`` (``data``: parquet/jsonl; ``test_kinds`` to choose public/private/generated),
``gsm8k`` (``data``: ``test.jsonl`` or its directory). ``draft_heads > 0`` decodes
self-speculatively with MTP heads ``1 … draft_heads`` (same greedy output, faster).
Writes ``samples.jsonl``, ``results.jsonl``, ``summary.json`` and ``tb/`` into the workdir.
The config is locked: a typo is an error. All fields: configs/evaluate.py and (``mesh``)
wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common
from wmtp_jax.models import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, _ = common.parse_variant(arg, "evaluate")
  tiny = size == "tiny"
  c = ml_collections.ConfigDict()
  c.pipeline, c.variant, c.seed = "evaluate", size, 0
  c.checkpoint = ""
  # Used when the checkpoint has no model_config.json (or there is no checkpoint: random init).
  c.model_kind = "mtp"
  c.model = presets.mtp(size, dtype="float32" if tiny else "bfloat16")
  c.dtype = ""  # compute dtype override ("" = the checkpoint's / model's)
  c.tokenizer = ""
  c.benchmark = "synthetic"
  c.data = ""
  c.split = ""  # "" = the benchmark's evaluation split (test)
  c.sanitized = False
  c.limit = 0  # evaluate only the first N problems (0 = all)
  c.prompt_style = ""  # "" = the benchmark's default (alpaca | completion | mbpp)
  c.n_samples = 1
  c.temperature = 0.0  # 0 = greedy
  c.top_p = 1.0
  c.max_new_tokens = 128 if tiny else 512
  c.batch_size = 16
  c.ks = (1, 5, 10, 20, 100)  # each reported only when n_samples >= k
  c.draft_heads = 0
  c.test_kinds = ()  # CodeContests: subset of ("public", "private", "generated"); () = all
  c.sandbox = ml_collections.ConfigDict(dict(workers=0, timeout_s=10.0, memory_mb=1024))
  # Per-head next-token accuracy / perplexity on the dataset's validation split (when present).
  c.heads_eval = ml_collections.ConfigDict(dict(enabled=True, split="valid", batches=4,
                                                batch_size=16, max_len=256 if tiny else 2048))
  c.mesh = common.mesh()  # the schema of the training runs: shape, preset, rules
  c.required = () if tiny else ("checkpoint",)
  c.lock()
  return c
