"""``evaluate``: pass@k (GSM8K accuracy) of a checkpoint on one benchmark.

    python -m wmtp_jax.main --config=configs/evaluate.py[:7b] \\
        --config.checkpoint=WORKDIR_OR_CONVERTED --config.benchmark=humaneval \\
        [--config.prompt_mode=base] [--config.temperatures="(0.8,)" --config.n_samples=10] \\
        [--workdir=DIR]

``checkpoint``: a converted checkpoint directory (``python -m wmtp_jax.convert``) or a finished
training run's workdir; its ``model_config.json`` says which model it is (else ``model`` /
``model_kind`` below), its ``tokenizer/`` is used unless ``tokenizer`` is set. ``benchmark``:
``synthetic`` (default: the embedded task's held-out problems), ``humaneval``, ``mbpp``
(``data``: ``mbpp.jsonl`` or its directory; ``sanitized=True`` for the hand-verified subset),
``codecontests`` (``data``: parquet/jsonl; ``test_kinds`` to choose public/private/generated),
``gsm8k`` (``data``: ``test.jsonl`` or its directory); ``limit`` 0 is the full benchmark.

The protocol (``wmtp_jax.eval.protocol``): ``n_samples`` per problem at each of ``temperatures``
with ``top_p``, the best pass@1 kept, pass@k for ``ks``; ``greedy`` adds greedy pass@1
(``temperatures=()`` with ``greedy``: greedy only, the tiny default). ``7b`` is the reference's
protocol: n 20, T 0.2 and 0.8, top-p 0.95, k 1 5 10 20, 5 s per program, ``max_new_tokens`` per
benchmark (0: ``benchmarks.BENCHMARKS``, CodeContests 1024). ``prompt_mode``: ``finetuned`` (the
training template, with MBPP's function name and CodeContests' stdin instruction) or ``base`` (the
raw harness prompt), ``wmtp_jax.eval.prompts``; ``train_eos`` False for a model trained without EOS
(the template's stop rules end its programs). ``draft_heads > 0`` decodes self-speculatively with
MTP heads ``1 … draft_heads`` (same greedy output, faster). Writes ``samples.jsonl``,
``results.jsonl``, ``summary.json`` and ``tb/`` into the workdir
(``wmtp_jax.eval.evaluate_pipeline``).
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
  c.prompt_mode = "finetuned"  # finetuned (training template) | base (raw harness prompt)
  c.train_eos = True  # whether the model learned EOS (data.train_eos of its training run)
  c.n_samples = 1 if tiny else 20  # per problem and temperature
  c.temperatures = () if tiny else (0.2, 0.8)  # each > 0; the best pass@1 is kept
  c.top_p = 0.95
  c.greedy = tiny  # also greedy pass@1 (one sample per problem)
  c.max_new_tokens = 128 if tiny else 0  # 0 = the benchmark's own (benchmarks.BENCHMARKS)
  c.batch_size = 16
  c.ks = (1, 5, 10, 20)  # each reported only when n_samples >= k
  c.draft_heads = 0
  c.test_kinds = ()  # CodeContests: subset of ("public", "private", "generated"); () = all
  c.workers, c.timeout_s, c.memory_mb = 0, 5.0, 1024  # sandbox per program; workers 0 = cores
  # Per-head next-token accuracy / perplexity on the dataset's validation split (when present).
  c.heads_eval = ml_collections.ConfigDict(dict(enabled=True, split="valid", batches=4,
                                                batch_size=16, max_len=256 if tiny else 2048))
  c.mesh = common.mesh()  # the schema of the training runs: shape, preset, rules
  c.required = () if tiny else ("checkpoint",)
  c.lock()
  return c
