"""Strict construction of the model config dataclasses: an unknown key is an error, never
ignored."""

import dataclasses
from typing import Any


def from_dict(cls, values: dict[str, Any], *, where: str):
  """``cls(**values)``; an unknown key is a ``ValueError`` naming ``where`` (file, config path)."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"{where}: unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
  return cls(**values)
