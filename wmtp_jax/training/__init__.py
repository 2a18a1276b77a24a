"""Training: the one train loop (``loop``) and what it is made of: the initial params (``init``),
the train state and the step's static context (``state``), the jitted steps (``step``), the
loop's hooks (``hooks``), optimizer, LoRA, mesh and logical axis rules, FLOPs, metrics log."""
