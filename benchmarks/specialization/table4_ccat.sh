#!/usr/bin/env bash
# Table 4 of the specialization paper (Yang et al., AISTATS 2021, Sec. 5.6) on Fashion-MNIST: CCAT students
# (`method: ccat`, plugins/ccat.py) with rho = 5, 10, 20 against AT, at epoch 3 (the paper's 150 of 300 epochs),
# then table4_ccat.py -> benchmarks/results/specialization/table4_ccat.md (robust accuracy, MBNC, eps_in/out, the
# paper's claims), fig11_bnc_ccat.png, fig12_epsilon_ccat.png.
# Same teacher, data, threat (eps 0.1, 5 PGD steps of 0.03) and optimiser as run_all.sh (student_base.yaml); AT is
# run_all.sh's `at` run (its epoch-3 analysis is committed in analysis/at/epoch_3.json and reused).
# Sized for ONE CPU core (OMP_NUM_THREADS=1); every step is skipped when its output exists, an interrupted run
# resumes. Estimated on one core (measured: 6.2 s per 1280 training images against AT's 14.5 s, on the shared
# machine): each CCAT student ~3.5 min (3 epochs of 10k images at ~50 s, half of each batch attacked, + ~17 s of
# validation per epoch), the analysis ~1 min per student: ~14 min in all when the pruned teacher exists. Without it
# (checkpoints are not committed), training and pruning the teacher first adds about an hour (run_all.sh's teacher:
# 4254 s of training on the shared machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" RD_DISABLE_PLUGIN_AUTOLOAD="${RD_DISABLE_PLUGIN_AUTOLOAD:-1}"
RD=".venv/bin/robust-distill"
PY=".venv/bin/python"
B=benchmarks/specialization
R=benchmarks/results/specialization
T="$R/teacher"
mkdir -p "$T"
timed() {  # timed NAME LOG COMMAND...: run, output to LOG, CPU and wall seconds to cpu_times.log
    local name=$1 logfile=$2; shift 2
    echo "[$(date +%H:%M:%S)] $name" >&2
    /usr/bin/time -a -o "$R/cpu_times.log" -f "$name: %U s user, %S s system, %e s wall" "$@" > "$logfile" 2>&1 \
        || { echo "$name failed; see $logfile" >&2; tail -5 "$logfile" >&2; exit 1; }
}

# 1. the oracle teacher and its pruning, as run_all.sh steps 1-2
if [ ! -f "$T/pruned.pt" ]; then  # checkpoints are not committed: a fresh checkout trains the teacher again
    [ -f "$T/last.pt" ] || timed teacher "$T/train.log" $RD train "$B/teacher.yaml"
    timed prune "$T/prune.log" $RD prune "$T/last.pt" --widths 45,32,32,20 --out "$T/pruned.pt"
fi
W=$($PY -c "import json; print(json.load(open('$T/pruned.json'))['student_widths'])")

student() {
    local name=$1; shift
    [ -f "$R/$name/summary.json" ] && return 0
    mkdir -p "$R/$name"
    timed "$name" "$R/$name/train.log" $RD train "$B/student_base.yaml" --set "output_dir=$R/$name" \
        --set "student.kwargs.widths=$W" "$@"
}
# 2. AT, only if neither its epoch-3 analysis nor its epoch-3 student is there (as run_all.sh trains it)
[ -f "$R/analysis/at/epoch_3.json" ] || [ -f "$R/at/epoch_3.pt" ] || student at --set method=oracle_adv
# 3. CCAT, 3 epochs, rho 5 / 10 / 20 (the method's other defaults: half of each batch attacked, zero-or-random start)
for rho in 5 10 20; do
    student "ccat_rho$rho" --set method=ccat --set "outer_loss.kwargs.rho=$rho" --set optim.epochs=3 \
        --set "save_epochs=[3]"
done

# 4. measurements, table, claims, figures
timed table4 "$R/table4_ccat.log" $PY "$B/table4_ccat.py" "$R"
cat "$R/table4_ccat.md"
