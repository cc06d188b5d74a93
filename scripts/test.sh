#!/usr/bin/env bash
# The test suite, on a fresh machine: system set-up, a small virtualenv holding tox, then tox's default
# environment (the one CI runs; it installs the project and its pinned dependencies itself).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --system-only
[ -x .tox-bootstrap/bin/tox ] || {
  python3 -m venv .tox-bootstrap && .tox-bootstrap/bin/pip install -q --disable-pip-version-check "tox>=4.20,<5"; }
exec .tox-bootstrap/bin/tox "$@"
