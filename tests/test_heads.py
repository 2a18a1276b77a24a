"""Parity tests for wmtp_jax.weighting.heads (softmax over heads, weight normalisation) against the
loop references of weighting_refs."""

import math

import numpy as np
import pytest
from weighting_refs import COMPOSITE, SHAPES, SIMPLE, make_case, normalize_ref

from wmtp_jax import weighting as W


@pytest.mark.parametrize("b,s,holes", SHAPES)
def test_softmax_head_weights(b, s, holes):
  scores, mask, _ = make_case(14, b, s, holes)
  scores = (scores - 0.5) * 6.0
  got = W.softmax_head_weights(scores, mask, 3, temperature=0.7)
  want = np.zeros((b, s, 3))
  for row in range(b):
    for t in range(s):
      heads = [k for k in range(3) if t + 1 + k < s and mask[row, t + 1 + k]]
      exps = {k: math.exp(float(scores[row, t + 1 + k]) / 0.7) for k in heads}
      for k in heads:
        want[row, t, k] = exps[k] / sum(exps.values())
  np.testing.assert_allclose(got, want, **SIMPLE)


@pytest.mark.parametrize("n_valid", [0, 1, 2, 40])
def test_normalize_weights(n_valid):
  rng = np.random.default_rng(15)
  w = rng.gamma(1.0, 1.0, (4, 5, 3)).astype(np.float32)
  valid = np.zeros(60, bool)
  valid[rng.permutation(60)[:n_valid]] = True
  valid = valid.reshape(4, 5, 3)
  got = W.normalize_weights(w, valid, temperature=0.5, eps=0.05, max_weight=3.0)
  np.testing.assert_allclose(got, normalize_ref(w, valid, 0.5, 0.05, 3.0), **COMPOSITE)
