#!/usr/bin/env bash
# For a GPU machine without access to PyPI: run this where PyPI is reachable, then copy the working tree with
# its .gpu-carry/ folder to the GPU machine and run benchmarks/gpu/device_run.sh there. It downloads the
# wheels of the packages such a machine usually lacks (torchattacks, pyautoattack, timm 1.0.9) for Python 3.12
# (PY_VERSION=3.11 etc. for another) and unpacks them into .gpu-carry/site (git-ignored), without
# pyautoattack's 45 MB example model; device_run.sh installs from there each distribution the machine's
# interpreter does not have. A GPU machine that reaches PyPI needs none of this: `pip install -e .` there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
rm -rf .gpu-carry
mkdir -p .gpu-carry/wheels .gpu-carry/site
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform any --platform manylinux2014_x86_64 -d .gpu-carry/wheels \
    torchattacks==3.5.1 pyautoattack==0.2.0 timm==1.0.9
for wheel in .gpu-carry/wheels/*.whl; do "$PYTHON" -m zipfile -e "$wheel" .gpu-carry/site; done
rm -rf .gpu-carry/wheels .gpu-carry/site/pyautoattack/examples
du -sh .gpu-carry
