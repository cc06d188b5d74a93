#!/usr/bin/env bash
# The test suite, on a fresh machine: system set-up, a small virtualenv holding tox, then tox's default
# environment (the one CI runs; it installs the project and its dependencies itself).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --system-only
# The tox versions this project is tested with (tox.ini's `requires` says the same).
TOX_SPEC="tox>=4.64,<4.68"
if [ ! -x .tox-bootstrap/bin/tox ] || [ "$(cat .tox-bootstrap/.rd-spec 2>/dev/null)" != "$TOX_SPEC" ]; then
  python3 -m venv .tox-bootstrap
  .tox-bootstrap/bin/pip install -q --disable-pip-version-check "$TOX_SPEC"
  printf '%s' "$TOX_SPEC" > .tox-bootstrap/.rd-spec
fi
exec .tox-bootstrap/bin/tox "$@"
