"""Token-level analysis of a run's critic or reference on held-out samples (issue 13, item 5).

    python -m wmtp_jax.analyze tokens --run WORKDIR [--n 8] [--color COLOUR] [--out DIR]

writes ``tokens-<colour>.html`` (one self-contained page: inline CSS, no script, nothing fetched)
and ``tokens-<colour>.png`` (a matplotlib summary) into ``--out`` (default ``WORKDIR/analysis``;
for a converted checkpoint ``./analysis``). ``--color`` defaults to ``td`` for a critic,
``excess`` for a ``rho1`` run and ``loss`` for a reference alone.

What ``--run`` may be (``source.find``):
  * a finished run directory (``WORKDIR/<phase>``: ``config.json`` + the exported ``model/``) of
    ``critic`` or ``ref_tuning``: its own model; of ``verifiable``: its critic
    (``config.critic.checkpoint``) with the run's weighting; of ``rho1``: its reference
    (``config.reference.checkpoint``) and its trained policy (``model/``);
  * a main job's ``WORKDIR`` (one run per subdirectory): the ``verifiable`` or ``rho1`` run in it,
    else its only critic or reference run;
  * a converted checkpoint (``model_config.json``) of kind ``value`` (a critic) or ``llama`` (a
    reference), with ``--data DATASET_DIR`` (a checkpoint carries no run config).
The samples come from the run's dataset (``config.data``; ``--data`` overrides it), split
``--split`` (default the run's ``config.data.valid_split``): ``--n`` held-out problems that have a
correct and an incorrect solution, each shown as a pair side by side (the incorrect solution drawn
at random, the correct one nearest to it in characters, so that both usually share a surface
style); when fewer problems have both, single solutions fill the page; a problem whose prompt
leaves no room for a response in the run's ``data.max_len`` is left out (``samples``). Rows are
encoded as the run encodes them (``data.template``: the closing EOS where ``data.train_eos``);
what truncation cuts is shown greyed, unscored.

What is shown (``collect``; every quantity sits on its *target* token ``x_t``, the index of
``labels``, DESIGN §2, and is also in each token's tooltip):
  critic (a value model ``V``):
    ``value``      ``V_t``, the critic's value after reading ``x_0 … x_t``;
    ``td``         the TD error ``δ_t = γ·V_t − V_{t−1}`` (``weighting.td_errors``): how much
                   token ``x_t`` moved the value; on the closing EOS ``R − V_T`` when the run
                   trains on incorrect samples too (``data.samples = "all"``);
    ``advantage``  the GAE advantage ``A_t`` (``weighting.gae_advantages``);
    ``weight``     the token weight the verifiable policy gets from it: ``exp_weights`` of the
                   advantages (scheme ``gae_exp``), whitened with the EMA statistics of the
                   run's last logged step (``ema_mean``, ``ema_std``) — or, for a critic alone
                   or ``whitening = "batch"``, with those of the shown samples' advantages — or
                   the softmax over heads of the TD errors (``softmax_heads``: the weight of the
                   term of head ``--head`` whose target is ``x_t``). γ, λ, β, the clip bounds and
                   the scheme are the verifiable run's ``config.weighting``, for a critic alone
                   those of ``configs/verifiable.py``.
  reference (a next-token LLaMA):
    ``loss``       the reference's cross-entropy of ``x_t`` (from its logits at ``t−1``);
    ``excess``     (a ``rho1`` run) ``CE_policy − CE_reference`` of the same target: the policy's
                   head ``--head`` at position ``t−1−head`` against the reference at ``t−1``,
                   the signed excess loss Rho-1 ranks;
    ``weight``     (a ``rho1`` run) the Rho-1 weight of that term (``weighting.rho1_weights``, or
                   ``rho1_continuous_weights``, with the run's ``config.rho1``), the selection
                   taken over the shown samples' terms as the run takes it over a batch.
The weights are the method's own: a run's ``weighting.control`` and ``renormalize`` are not
applied. Synthetic records carry ground-truth spans (``wmtp_jax.data.synthetic``): tokens of the
``critical`` spans are underlined, tokens of the ``mutated`` spans boxed (``--spans``: ``auto``
marks them when the records carry them, ``require`` makes their absence an error, ``off``).

Modules: ``source`` (what a ``--run`` holds), ``samples`` (held-out pairs, their tokens and
characters), ``collect`` (the per-token quantities), ``scale`` (colour scales), ``html`` (the
page), ``plot`` (the PNG), ``__main__`` (the CLI).
"""
