#!/usr/bin/env bash
# One prepared command for a GPU machine, online or offline: install the project from this working tree (and
# the carried packages the machine lacks), run the `cuda` tests, then the GPU benchmark, then AutoAttack
# throughput, and leave the logs and tables in $OUT. Finishes within RD_DEVICE_LIMIT_S seconds (default 470,
# under 8 minutes): every phase gets a hard limit from what is left, and the benchmark saves its tables after
# every job, so a phase cut short keeps what it measured.
#
#   benchmarks/gpu/prepare_carry.sh            # where PyPI is reachable: wheels the GPU machine may lack
#   bash benchmarks/gpu/device_run.sh          # on the GPU machine (tests, benchmark, AutoAttack: < 8 min)
#   bash benchmarks/gpu/device_run.sh tests    # only the cuda tests (in order, then reversed)
#   bash benchmarks/gpu/device_run.sh bench    # only the benchmark and AutoAttack throughput
#   bash benchmarks/gpu/device_run.sh dry      # no GPU: the same steps at CPU size (checks the script itself)
#
# Outputs in $OUT (default runs/device_out): device_run.log, cuda_tests.log/.xml, cuda_tests_reversed.log,
# gpu/bench_gpu.{json,md} (training, batch 128 and 512), gpu/aa/bench_gpu.{json,md} (AutoAttack). Copy them to
# benchmarks/results/gpu/ with the commit they measured (printed at the top of device_run.log).
set -uo pipefail
start=$(date +%s)
what=${1:-all}
limit=${RD_DEVICE_LIMIT_S:-470}
OUT=${OUT:-$PWD/runs/device_out}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$OUT/gpu/aa"
exec > >(tee -a "$OUT/device_run.log") 2>&1
left() { echo $((limit - ($(date +%s) - start))); }
case "$what" in all|tests|bench|dry) ;; *) echo "usage: device_run.sh [all|tests|bench|dry]"; exit 2;; esac

echo "== environment ($(date -u))"
echo "commit $(git rev-parse HEAD 2>/dev/null || echo '(no git)')$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
gpu=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$what" = dry ]; then what=all; gpu=0; fi
if [ "$gpu" != 1 ]; then echo "no GPU: dry run (cuda tests skipped, benchmark at --smoke size; no numbers)"; fi

echo "== install"
# Carried packages go into the interpreter's own site-packages (not PYTHONPATH), so that every subprocess -
# torchrun workers, the CLI - imports them too. A package the interpreter already has is left as it is.
site=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
carry=$PWD/.gpu-carry/site
if [ -d "$carry" ]; then
    for dist in "$carry"/*.dist-info; do
        name=$(basename "$dist" | sed 's/-[^-]*\.dist-info$//')
        if "$PYTHON" -c "import importlib.metadata as m; m.version('$name')" 2>/dev/null; then
            echo "  $name: already installed ($("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))")), kept"
        elif [ -w "$site" ]; then  # the distribution's folder and every top-level entry its RECORD lists
            cut -d, -f1 "$dist/RECORD" | cut -d/ -f1 | sort -u | while read -r entry; do
                [ -e "$carry/$entry" ] && cp -a "$carry/$entry" "$site/"
            done
            echo "  $name: installed from the carry into $site"
        else
            export PYTHONPATH=$carry${PYTHONPATH:+:$PYTHONPATH}
            echo "  $name: $site is not writable: on PYTHONPATH instead"
        fi
    done
fi
if "$PYTHON" -c "import os, sys, robust_distill; sys.exit(not robust_distill.__file__.startswith(os.getcwd() + os.sep))" \
        2>/dev/null; then
    echo "  robust-distill: already installed from this tree"
elif ! "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/dev/null; then
    echo "pip install -e . failed (offline, no setuptools?): using the source tree"
    mkdir -p "$OUT/src" && ln -sfn "$PWD/plugins" "$OUT/src/robust_distill_plugins"
    export PYTHONPATH=$PWD:$OUT/src${PYTHONPATH:+:$PYTHONPATH}
fi
"$PYTHON" -c "import robust_distill, robust_distill_plugins, torchattacks, pyautoattack, timm, pluggy, yaml, tqdm; \
print('imports ok; timm', timm.__version__)" || exit 3
export RD_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONHASHSEED=0 PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8

# pytest under a hard limit that still prints its failure summary: SIGINT makes pytest stop and report what
# failed so far; a test stuck in a kernel gets its traceback dumped by faulthandler after 90 s.
cuda_tests() {  # $1: log name, $2: limit in s, $3...: extra pytest arguments
    local log=$1 t=$2; shift 2
    echo "== pytest -m cuda $* (limit ${t} s, $(left) s left)"
    timeout -s INT -k 20 "$t" "$PYTHON" -m pytest -m cuda -p no:cacheprovider -q -rfEs --tb=short \
        --durations=8 -o faulthandler_timeout=90 "$@" tests 2>&1 | tee "$OUT/$log.log"
    echo "pytest exit code: ${PIPESTATUS[0]}"
}
if [ "$what" = all ] || [ "$what" = tests ]; then
    cuda_tests cuda_tests 150 --junitxml="$OUT/cuda_tests.xml"
    # the same tests backwards (no test depends on another's process-wide state): in `tests` (and `dry`) mode,
    # where the benchmark does not need the time
    [ "$what" = tests ] || [ "$gpu" != 1 ] && cuda_tests cuda_tests_reversed 120 --reverse-order
fi

if [ "$what" = all ] || [ "$what" = bench ]; then
    smoke=$([ "$gpu" = 1 ] || echo --smoke)
    bench() {  # $1: out folder, then bench_gpu.py arguments; the job gets what is left minus 20 s
        local out=$1; shift
        local budget=$(( $(left) - 20 ))
        [ "$budget" -gt 30 ] || { echo "== skipped (time): bench_gpu.py $*"; return; }
        echo "== benchmarks/bench_gpu.py $* $smoke (budget ${budget} s)"
        timeout -s INT -k 20 $((budget + 15)) "$PYTHON" benchmarks/bench_gpu.py $smoke --budget-s "$budget" \
            --out "$out" "$@"
        echo "bench exit code: $?"
    }
    # The targets first: AdaAD and RSLAD at batch 128 and 512, then the other methods, then AutoAttack.
    bench "$OUT/gpu" --plan device --min-job-s 45
    bench "$OUT/gpu/aa" --plan eval --min-job-s 30
fi
echo "== done in $(( $(date +%s) - start )) s; outputs:"
ls -la "$OUT" "$OUT/gpu" "$OUT/gpu/aa"
