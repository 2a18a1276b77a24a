"""Objectives: the only thing that differs between pipelines (DESIGN §1).

An ``Objective`` says which model trains, what batch it reads and how its loss is computed. The
train loop (``wmtp_jax.training.loop``) is shared: it handles LoRA, frozen parameters,
micro-batching, the optimizer, checkpoints and logging, and calls

    loss, (metrics, aux_sums) = objective.loss(params, apply, frozen, batch, norms, aux, rng)

per micro-batch, where ``params`` is the trained model's full parameter tree, ``apply(params, …)``
its ``model.apply`` with LoRA adapters added, ``frozen`` the parameters of the frozen models
(critic, reference), ``norms = objective.normalizers(step_batch)`` denominators computed once from
the whole step batch (so that accumulating micro-batches equals one large batch), and ``aux`` the
objective's carried state (e.g. EMA statistics), updated once per step from the summed
``aux_sums`` by ``objective.update_aux``.

``build(config)`` returns the objective of ``config.pipeline``.
"""

from wmtp_jax.objectives.base import Objective
from wmtp_jax.objectives.registry import PIPELINES, build

__all__ = ["Objective", "PIPELINES", "build"]
