"""Decoding: KV-cache generation (greedy / temperature / top-p) and self-speculative decoding
with the MTP heads."""
