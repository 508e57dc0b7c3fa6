"""loss-slope: power-law analysis of CNN training-loss curves.

All pipeline logic lives in this package; the Snakemake workflow only wires it.
"""

__version__ = "0.1.0"
