#!/usr/bin/env bash
# GPU check (issue 16): the main job, the scoring engine and SFT steps at real model shapes, JSON out.
#   bash benchmarks/gpu_check.sh              # one GPU (about 6-8 minutes on one H100)
#   bash benchmarks/gpu_check.sh --dry-run    # tiny shapes on the CPU, same code paths (a test runs it)
# More flags: --out DIR (working dir; DIR/gpu_check.json), --parts a,b,c, --data XSUM_DIR.
# Details: benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
