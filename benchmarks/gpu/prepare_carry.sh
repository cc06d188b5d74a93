#!/usr/bin/env bash
# Run on the developer machine (it reaches PyPI) before a device call: the lent GPU machine is offline and
# has PyTorch but not torchattacks, pyautoattack or timm 1.0.9. This downloads their wheels for the GPU
# machine's Python (3.12) and unpacks them into .gpu-carry/site (git-ignored), leaving out pyautoattack's
# 45 MB example model, so that the working tree plus the carry stays under the device's 64 MiB limit.
# Then, with the device tool: run(command="bash benchmarks/gpu/device_run.sh", carry=[".gpu-carry"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
rm -rf .gpu-carry
mkdir -p .gpu-carry/wheels .gpu-carry/site
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any --platform manylinux2014_x86_64 -d .gpu-carry/wheels \
    torchattacks==3.5.1 pyautoattack==0.2.0 timm==1.0.9
for wheel in .gpu-carry/wheels/*.whl; do "$PYTHON" -m zipfile -e "$wheel" .gpu-carry/site; done
rm -rf .gpu-carry/wheels .gpu-carry/site/pyautoattack/examples
du -sh .gpu-carry
