"""Checkpoints: run checkpoints (Orbax state + Grain iterator), the converted-checkpoint format
that every run reads and writes, and the Meta / Hugging Face weight layouts."""
