"""Tokenizers: loading a local tokenizer directory, training a small byte-level BPE, vocab checks.

* :func:`load_tokenizer` loads any local directory ``transformers.AutoTokenizer`` understands
  (``tokenizer.json`` / ``tokenizer_config.json`` dirs, e.g. HF LLaMA checkpoints). A directory
  holding only a SentencePiece ``tokenizer.model`` (Meta's raw releases, such as the MTP
  ``7B_1T_4`` folder) is loaded as the LLaMA tokenizer with a BOS token prepended, as LLaMA-2 does
  (DESIGN §4); that needs the ``sentencepiece`` package.
* :func:`train_bpe_tokenizer` trains a byte-level BPE for tests and small synthetic runs. Ids
  ``<unk>`` 0, ``<s>`` 1 (BOS), ``</s>`` 2 (EOS), ``<pad>`` 3 (BOS/EOS ids as in LLaMA-2), then the
  256 byte symbols, then merges; encoding prepends ``<s>`` like the LLaMA tokenizer; decoding
  returns the original text exactly.
"""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
  from transformers import PreTrainedTokenizerFast

# ``transformers`` is imported inside the functions: importing it costs seconds (it pulls in
# torch when installed), which CLIs that never load a tokenizer should not pay.

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0, 1, 2, 3
_N_BYTES = 256


class TokenizerError(ValueError):
  """A tokenizer that cannot be loaded or built, or that does not fit a model."""


def load_tokenizer(path: str | os.PathLike):
  """Loads the tokenizer stored in the local directory ``path`` (see the module docstring)."""
  from transformers import AutoTokenizer, LlamaTokenizer  # pylint: disable=g-import-not-at-top

  directory = Path(path)
  if not directory.is_dir():
    raise TokenizerError(f"cannot load a tokenizer from {str(path)!r}: not a directory")
  sentencepiece_only = ((directory / "tokenizer.model").is_file()
                        and not (directory / "tokenizer_config.json").is_file()
                        and not (directory / "tokenizer.json").is_file())
  try:
    if sentencepiece_only:
      return LlamaTokenizer.from_pretrained(str(directory), add_bos_token=True)
    return AutoTokenizer.from_pretrained(str(directory))
  except Exception as e:  # transformers raises many unrelated types here
    raise TokenizerError(f"cannot load a tokenizer from {str(path)!r}: "
                         f"{type(e).__name__}: {e}") from e


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int,
                        out_dir: str | os.PathLike) -> "PreTrainedTokenizerFast":
  """Trains a byte-level BPE with exactly ``vocab_size`` entries and saves it to ``out_dir``.

  Deterministic for the same texts. Raises :class:`TokenizerError` if ``vocab_size`` is below
  the 4 special tokens + 256 bytes or the texts are too small to learn enough merges.
  """
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  minimum = len(SPECIAL_TOKENS) + _N_BYTES
  if vocab_size < minimum:
    raise TokenizerError(f"vocab_size {vocab_size} < {minimum} (4 special tokens + 256 bytes)")
  bpe = Tokenizer(models.BPE(unk_token="<unk>"))
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  bpe.train_from_iterator(texts, trainer=trainer)
  if bpe.get_vocab_size() != vocab_size:
    raise TokenizerError(f"BPE training produced {bpe.get_vocab_size()} entries, not "
                         f"{vocab_size}: the corpus is too small for that many merges")
  bpe.post_processor = processors.TemplateProcessing(
      single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
  tokenizer = PreTrainedTokenizerFast(
      tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
      pad_token="<pad>", clean_up_tokenization_spaces=False)
  tokenizer.save_pretrained(str(out_dir))
  tokenizer.name_or_path = str(out_dir)
  return tokenizer


def check_vocab(tokenizer, vocab_size: int, *, where: str) -> None:
  """Raises :class:`TokenizerError` unless every token id of ``tokenizer`` fits ``vocab_size``.

  ``where`` names the model (e.g. its config path) in the message. A model vocabulary larger than
  the tokenizer's (padded embeddings) is fine.
  """
  n = len(tokenizer)
  if n > vocab_size:
    raise TokenizerError(
        f"{where}: tokenizer {tokenizer.name_or_path!r} has {n} tokens but the model's "
        f"vocab_size is {vocab_size}; token ids up to {n - 1} would index past the embedding")
