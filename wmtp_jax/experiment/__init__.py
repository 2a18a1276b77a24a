"""Experiments: arms × seeds × sweeps of the pipelines at equal FLOPs, and their report.

``python -m wmtp_jax.experiment --config=configs/experiment.py[:variant] --workdir=DIR
[--list | --report | --run=ARM/SEED]`` (``__main__``). Modules:

* ``grid``: the experiment config → runs (arms × sweep values × seeds, shared prerequisites,
  the budget), overrides checked before anything runs;
* ``runner``: each run as a ``python -m wmtp_jax.main`` process, finished runs skipped, a lock per
  run directory;
* ``runfiles``: what a run directory holds, as the report reads it;
* ``stats``: mean ± 95% CI, the paired bootstrap over problems × seeds, gradient-norm spikes;
* ``report``, ``plots``: ``DIR/report.md`` and its PNG figures.

Layout of ``DIR``: ``<arm>/<seed>/`` per run (``<arm>@<key>=<value>`` for a sweep value),
``_shared/<seed>/<critic|reference>-<hash>/`` for the frozen models the arms of a seed share,
``report.md`` and ``*.png``.
"""
