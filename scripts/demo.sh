#!/usr/bin/env bash
# The main job, on a fresh machine: set up, then distil a robust Fashion-MNIST student (IAD-I) and compare it with PGD-AT.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/venv.sh
exec "$(rd_venv_dir)/bin/robust-distill" demo "$@"
