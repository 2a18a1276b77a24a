"""Training: the one train loop and what it is made of (state, step, optimizer, LoRA, mesh and
logical axis rules, FLOPs, metrics log)."""
