#!/usr/bin/env bash
# One-command GPU check (under 10 min on one GPU): the GPU-only tests (pytest -m gpu);
# runs per GPU for S-core / S-narrow with and without an MPS daemon (the pipeline's
# probe); the device-resident data path vs a plain DataLoader, channels_last / bf16;
# one real one-epoch run counting host syncs per quarter-epoch window and timing its
# checkpoint saves; the monitors' overhead at the study's model and batch (on a GPU; its
# table is also written to gpu_monitors.md beside the report; the CPU figures and what to
# expect on a GPU: docs/monitors.md §5). Writes docs/gpu_check.md (or --markdown PATH) and prints it.
#
#   bench/gpu_check.sh [--markdown PATH] [--steps 300] [--max-n 4] [--num-workers 4] ...
#   bench/gpu_check.sh --device cpu --steps 20 --max-n 2 --batch-size 32 --base-width 16   # CPU smoke run only
#
# Python: $PYTHON if set, else the repository's .venv, else python3 on PATH.
# Exit 2: no CUDA GPU visible (and no --device cpu / GPU_CHECK_DEVICE=cpu).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then
    py="$repo/.venv/bin/python"
else
    py="$(command -v python3 || true)"
    echo "gpu_check: no $repo/.venv; using ${py:-<no python3 on PATH>}" >&2
fi
if [[ -z "$py" ]]; then
    echo "gpu_check: no Python found; create the venv (see README) or set PYTHON=/path/to/python" >&2
    exit 2
fi
# the probe starts its workers with `python -m loss_slope.probe.worker`: they need the package too
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
"$py" bench/gpu_check.py "$@"
