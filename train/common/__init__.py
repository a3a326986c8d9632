"""Shared training toolkit for every program in ``train/``.

One small module per job; import the module you need (nothing heavy is imported here):

- ``train.common.distributed``: ``jax.distributed`` initialisation from flags or the environment,
  single-process otherwise; process index/count helpers.
- ``train.common.parallel``: the ``("data",)`` device mesh: global batches split over it
  (``make_array_from_process_local_data``), the state replicated, host copies of global arrays.
- ``train.common.data``: per-process data sharding: a reproducible global batch order (seed, epoch) of
  which each process reads only its slice, resumable from a step.
- ``train.common.checkpoint``: orbax ``CheckpointManager`` wrapper: save/restore the global train state +
  JSON metadata (step, data position, ...), keeping the latest and the best checkpoints.
- ``train.common.metrics``: metrics writer (JSONL + tensorboardX), a no-op on processes other than 0.
- ``train.common.progress``: tqdm progress bar (process 0 only).
- ``train.common.plots``: matplotlib (Agg) line plots saved to PNG.
- ``train.common.preemption``: SIGTERM/SIGINT -> finish the step, checkpoint, exit 0 with a resume line.
- ``train.common.guard``: the finiteness flag of a step and the error that stops a run.
- ``train.common.step``: the train step every program shares (the step's noise key, update, finite
  check; ``optax.apply_if_finite`` when skipping non-finite steps), jitted over the mesh.
- ``train.common.loop``: the training loop every program runs (resume, epochs, evaluation rows,
  metrics, checkpoints, preemption, non-finite policy, max_steps) and ``restore(best=...)``.
- ``train.common.run_control``: the run-control config fields every program has.
- ``train.common.evaluation``: sharded evaluation over a split and the per-layer sparsity records.
- ``train.common.cli``: the command line every program's ``main.py`` shares.
- ``train.common.labels``: run labels for progress bars and plot legends.
- ``train.common.errors``: explicit error types for bad input, reported in one line.
"""
