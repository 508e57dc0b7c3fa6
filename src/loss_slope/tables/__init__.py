"""Metric tables: shared schemas, CSV logs of the work tree, Parquet export, validation."""
