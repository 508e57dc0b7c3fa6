"""Training: Lightning module, metric recorder, resumable runner (python -m loss_slope.train)."""
