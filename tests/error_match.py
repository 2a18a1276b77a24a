"""``raises``: the call fails with a ``ValueError`` whose message names the given parts in order."""

import re

import pytest


def raises(match_parts, fn, *args, **kwargs):
  """Assert that ``fn(*args, **kwargs)`` raises ``ValueError`` with ``match_parts`` (literal
  strings, e.g. argument names and shapes) appearing in this order in its message."""
  pattern = ".*".join(re.escape(p) for p in match_parts)
  with pytest.raises(ValueError, match=pattern):
    fn(*args, **kwargs)
