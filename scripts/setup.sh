#!/usr/bin/env bash
# Prepare a fresh machine for robust-distill: Debian's Fashion-MNIST files and a virtualenv with the project
# installed in editable mode (--system-only: the system part only; --venv-only: the virtualenv only, e.g.
# where the data comes from elsewhere). Idempotent, and indifferent to
# scripts/test.sh having run first (see scripts/venv.sh for `.venv` as a PEP 832 redirect file).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

if [ "${1:-}" != "--venv-only" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

[ "${1:-}" = "--system-only" ] && exit 0

VENV="$(rd_venv_dir)"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# Installed? (find_spec imports nothing: the check costs no torch import.)
if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('robust_distill') and
    u.find_spec('robust_distill_plugins')))" || [ setup.cfg -nt "$VENV/.rd-installed" ]; then
  # the test tools, the loggers' libraries and robustbench (RD_EXTRAS="" for the bare project)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${RD_EXTRAS-[test,robustbench]}"
  touch "$VENV/.rd-installed"
fi
