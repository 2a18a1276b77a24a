"""Data: records, converters, tokenizers, samplers, templates, the Grain pipeline, synthetic task.

Dataset directory layout (written by ``python -m wmtp_jax.data.prepare`` and by the synthetic
task generator), one set of files per split (``train``, ``valid``, ``test``):

  ``{split}.jsonl``        solution records, one JSON object per line (DESIGN §5):
                           ``{"instruction", "input", "output", "problem_id", "is_correct",
                           "difficulty"?, "source"?}``
  ``{split}.offsets.npy``  int64 byte offset of every line (random access without loading the file)
  ``{split}.meta.json``    ``{"n_records", "tokenizer", "problem_index_map": {problem_id:
                           {difficulty, correct_indices, incorrect_indices, correct_token_lengths,
                           incorrect_token_lengths}}}``
  ``{split}.problems.jsonl`` evaluation problems with their tests (``wmtp_jax.data.records``)
  ``tokenizer/``           a tokenizer directory loadable with ``transformers.AutoTokenizer``

Modules: ``records`` (schema, JSONL I/O with file:line errors, atomic writes, index, random access),
``tokenizer``, ``prepare`` (converters CLI), ``mutants`` (negatives labelled in the sandbox),
``samplers``, ``template`` (Alpaca prompt, labels, collation), ``pipeline`` (Grain), ``synthetic``.
"""
