#!/usr/bin/env bash
# One command for a lent GPU machine (bare and offline): install the project from this working tree, run the
# `cuda`-marked tests, run benchmarks/bench_gpu.py, and leave results and logs in $OUT. Ends inside the
# device's 10-minute limit (the benchmark gets what the tests leave of RD_DEVICE_LIMIT_S, 560 s by default,
# and saves its tables after every job). Prepare first, on the developer machine: benchmarks/gpu/prepare_carry.sh
#
#   run(command="bash benchmarks/gpu/device_run.sh", carry=[".gpu-carry"])            # tests + benchmark
#   run(command="bash benchmarks/gpu/device_run.sh bench full", carry=[".gpu-carry"])  # adds WRN-70-16
#
# Arguments: [all|tests|bench] [core|full]. Outputs in $OUT: device_run.log, cuda_tests.log, cuda_tests.xml,
# gpu/bench_gpu.json, gpu/bench_gpu.md (copy them to benchmarks/results/gpu/). Without a GPU (a dry run on
# the developer machine, PYTHON=.venv/bin/python) the benchmark runs its --smoke variant.
set -uo pipefail
start=$(date +%s)
what=${1:-all}
plan=${2:-core}
limit=${RD_DEVICE_LIMIT_S:-560}
OUT=${OUT:-$PWD/runs/device_out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT/gpu"
exec > >(tee -a "$OUT/device_run.log") 2>&1
left() { echo $((limit - ($(date +%s) - start))); }

echo "== environment ($(date -u))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"

echo "== install the project from the working tree"
carry=$PWD/.gpu-carry/site
if [ -d "$carry" ]; then
    export PYTHONPATH=$carry${PYTHONPATH:+:$PYTHONPATH}
else
    echo "no .gpu-carry/site: run benchmarks/gpu/prepare_carry.sh on the developer machine and carry .gpu-carry"
fi
if ! "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e . ; then
    echo "pip install -e . failed: using the source tree (built-in plugins from BUILTIN_PLUGINS)"
    mkdir -p "$carry" && ln -sfn "$PWD/plugins" "$carry/robust_distill_plugins"
    export PYTHONPATH=$PWD:$carry${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" -c "import robust_distill, robust_distill_plugins, torchattacks, pyautoattack, timm, pluggy, yaml, tqdm; \
print('imports ok; timm', timm.__version__)" || exit 3
export RD_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONHASHSEED=0 PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8

if [ "$what" = all ] || [ "$what" = tests ]; then
    echo "== pytest -m cuda ($(left) s left)"
    timeout 260 "$PYTHON" -m pytest -m cuda -p no:cacheprovider -q -rs --durations=10 \
        --junitxml="$OUT/cuda_tests.xml" tests 2>&1 | tee "$OUT/cuda_tests.log"
    echo "pytest exit code: ${PIPESTATUS[0]}"
fi

if [ "$what" = all ] || [ "$what" = bench ]; then
    budget=$(( $(left) - 40 ))
    smoke=$("$PYTHON" -c "import torch; print('' if torch.cuda.is_available() else '--smoke')")
    echo "== benchmarks/bench_gpu.py --plan $plan $smoke (budget ${budget} s)"
    "$PYTHON" benchmarks/bench_gpu.py --plan "$plan" $smoke --budget-s "$budget" --min-job-s 90 --out "$OUT/gpu"
    echo "bench exit code: $?"
fi
echo "== done in $(( $(date +%s) - start )) s; outputs:"
ls -la "$OUT" "$OUT/gpu"
