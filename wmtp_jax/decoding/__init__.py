"""Decoding: KV-cache generation (greedy / temperature / top-p) and self-speculative decoding
with the MTP heads.

* ``generator``: ``Generator`` / ``generate`` (batching, buckets, stop sequences, the jitted
  prefill and plain decode step);
* ``speculative``: the draft-and-verify decode step with MTP heads ``1 … k``;
* ``state``: the decode state and the static ``DecodeSpec`` of a compiled generator;
* ``sampling``: ``Sampling`` (greedy, temperature, top-p) and the token samplers;
* ``adapter``: ``ModelAdapter``, one KV-cache interface over ``MTPTransformer`` and
  ``LlamaForCausalLM``, and ``init_cache``.
"""
