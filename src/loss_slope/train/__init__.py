"""Training: Lightning module, metric recorder, resumable runner (python -m loss_slope.train).

Entry: ``__main__`` (simulated backend or Lightning) → :func:`loss_slope.train.run.run_training`
(device check, lock, work tree) → :mod:`loss_slope.train.steps` (``prepare_run``,
``build_trainer``, ``train``, ``finish``).

One optimizer step, in hook order
---------------------------------

The step that takes ``trainer.global_step`` from ``s - 1`` to ``s``. The
callbacks run in the order ``steps.build_trainer`` lists them, with Lightning's
``Timer`` (when ``trainer.max_time_s`` is set) after them and the checkpoint
callbacks last; at each hook the callbacks run before the LightningModule.
Optimization is manual (``CurveModule``), so the optimizer step happens inside
``training_step``.

==  =================================  ======================  =========================================================
#   Lightning hook                     object                  what it does
==  =================================  ======================  =========================================================
1   ``on_train_batch_start``           ``MetricRecorder``      reads the LR and weight decay this step uses
2   ``training_step``                  ``CurveModule``         forward, ``manual_backward`` (as micro-batches after an
                                                               out-of-memory error), then ``opt.step()``:
3   ↳ ``on_before_optimizer_step``     ``MetricRecorder``      gradient norm, at a step that ends with a validation
                                       ``MonitorCallback``     folds the gradient into the noise monitor (no host sync)
                                       ``CurveModule``         clips the gradient (``trainer.gradient_clip_val``)
4   ↳ optimizer step                   Lightning               weights updated; ``global_step`` becomes ``s``
5   ``training_step`` (cont.)          ``CurveModule``         ``lr_schedulers().step()``: the schedule moves to ``s``
6   ``on_train_batch_end``             ``MetricRecorder``      buffers row ``s - 1`` (device tensors); every
                                                               ``flush_every_steps`` steps appends the buffered rows to
                                                               ``steps.csv``; divergence sets ``should_stop``
                                       ``MonitorCallback``     feeds the loss; curvature row when
                                                               ``s % curvature_every_steps == 0``, noise row at the end
                                                               of every ``noise_every_epochs``-th epoch (each appended
                                                               and fsync'ed at once)
                                       fault callbacks         tests only (``trainer.fault``)
                                       ``Timer``               ``should_stop`` once ``max_time_s`` is spent
7   validation loop                    ``CurveModule``         every ``val_interval`` steps of an epoch, and when
    (``on_advance_end``)                                       training stops: ``validation_step`` per batch;
                                                               ``on_validation_epoch_end`` logs ``loss_val_nats``
8   ``on_validation_end``              ``MetricRecorder``      at a ``val_per_epoch`` boundary: appends the buffered
                                                               step rows, then the ``val.csv`` row
                                       ``ModelCheckpoint``     ``best``: ``checkpoints/best/best-{s}.ckpt`` when in the
                                                               top k (weights only: no callback state, no table sync)
                                       ``LatestCheckpoint``    ``latest.ckpt`` at an epoch's last validation, after
                                                               ``latest_every_minutes``, or when stopping: first the
                                                               callbacks' ``on_save_checkpoint`` (``MetricRecorder``
                                                               and ``MonitorCallback`` flush and fsync every table),
                                                               then the module's, then ``AtomicCheckpointIO``
9   checkpoint write                   ``AtomicCheckpointIO``  copies to host memory; a writer thread writes ``.tmp``,
                                                               fsyncs, renames; its ``after_save`` hook appends the
                                                               ``checkpoints.csv`` row (``MonitorCallback``)
10  ``on_advance_end`` (end),          Lightning, callbacks    SIGTERM received: ``SIGTERMException``; the tables are
    then ``on_exception``                                      synced, ``CheckpointOnInterrupt`` saves ``latest.ckpt``
                                                               at ``s`` (not after an epoch's last batch: see
                                                               ``loss_slope.train.interrupt``)
==  =================================  ======================  =========================================================

Exactly once: the row of step ``s - 1`` is buffered once (6) and appended at
the next flush (6, 8, a checkpoint's ``on_save_checkpoint``, ``on_train_end``,
``on_exception``, or the recorder's ``close`` in ``steps.train``); a ``latest``
checkpoint at ``s`` is written only after rows ``0..s-1`` are on disk (8). A
rerun resumes from ``latest.ckpt`` only, and ``steps.prepare_run`` first cuts
every table back to the rows that checkpoint covers
(:data:`loss_slope.tables.schema.KEEP_ON_RESUME`), so rows a killed attempt
wrote after it are written again exactly once.
"""
