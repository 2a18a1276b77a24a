"""Self-speculative decoding (``wmtp_jax.decoding.speculative``): greedy output equals plain
greedy output (1–3 draft heads, with drafts rejected and accepted)."""

import pytest

from decoding_helpers import EOS, heads_agree, mtp_model, random_prompts, shared_generator


@pytest.mark.parametrize("draft_heads", [1, 2, 3])
def test_speculative_greedy_equals_plain_greedy(draft_heads):
  model, params = mtp_model()
  prompts = random_prompts(2, [6, 13, 25, 9, 18])
  kwargs = dict(max_new_tokens=20, eos_id=EOS, batch_size=4, buckets=(16, 32))
  plain, speculative = shared_generator(), shared_generator(draft_heads)
  acceptance = {}
  for name, p in (("random", params), ("heads_agree", heads_agree(params))):
    want = plain(p, prompts, **kwargs)
    got = speculative(p, prompts, **kwargs)
    assert got.tokens == want.tokens, name
    assert got.finished_by == want.finished_by
    acceptance[name] = got.stats["mean_accepted_length"]
    assert got.stats["decode_steps"] <= want.stats["decode_steps"]
  print(f"draft_heads={draft_heads}: mean accepted length {acceptance}")
  assert acceptance["random"] >= 1.0
  assert acceptance["heads_agree"] > 1.3  # drafts are accepted, several tokens per pass
