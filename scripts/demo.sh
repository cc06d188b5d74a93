#!/usr/bin/env bash
# The main job, on a fresh machine: set up, then distil a robust Fashion-MNIST student with AdaAD.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/robust-distill demo "$@"
