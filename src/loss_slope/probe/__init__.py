"""Resource probe (runs per GPU, measured) and the pack plan built from it."""
