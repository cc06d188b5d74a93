#!/usr/bin/env bash
# Prepare a fresh machine for robust-distill: Debian's Fashion-MNIST files and a virtualenv (.venv)
# with the project installed in editable mode (--system-only: the system part only). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

[ "${1:-}" = "--system-only" ] && exit 0

VENV="${RD_VENV:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import robust_distill, robust_distill_plugins" >/dev/null 2>&1 \
   || [ setup.cfg -nt "$VENV/.rd-installed" ]; then
  # torch 2.14.1 / torchvision 0.29.1 are pinned as the newest supported releases (setup.cfg).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${RD_EXTRAS:-[test]}"
  touch "$VENV/.rd-installed"
fi
