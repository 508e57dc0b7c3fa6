"""Training monitors: curvature and noise of the training loss, checkpoint size.

Import from the submodules (this package does not import torch on its own):

* :mod:`loss_slope.metrics.curvature` — ``lambda_max``, ``hutch_trace``, ``curvature``, ``fixed_batches``
* :mod:`loss_slope.metrics.noise` — ``OnlinePowerLawPredictor``, ``LossResidualBuffer``,
  ``periodogram``, ``psd_tail``, ``resid_power``, ``GradientMoments``
* :mod:`loss_slope.metrics.monitors` — ``MonitorConfig``, ``Monitors`` (what a Lightning callback drives)
* :mod:`loss_slope.metrics.checkpoint` — ``checkpoint_size_mb``
* :mod:`loss_slope.metrics.errors` — ``MonitorError``, ``CurvatureError``, ``NotEnoughPoints``

Definitions and formulas: ``docs/monitors.md``.
"""
