#!/usr/bin/env bash
# Reproduce the specialization paper (Yang et al., AISTATS 2021) on Fashion-MNIST: train and prune the oracle
# teacher, train the oracle students (ST with logit / label supervision, ST with Gaussian noise, oracle AT,
# in-plane and out-of-plane AT), then measure specialization and robustness and test the paper's claims
# (claims.py -> benchmarks/results/specialization/claims.md, tables, plots and JSON).
# Sized for ONE CPU core (OMP_NUM_THREADS=1); every step is skipped when its output exists, and an interrupted
# training run resumes from its last.pt. The CPU time of every step goes to cpu_times.log. Run from anywhere
# after scripts/setup.sh.
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

# 1. the oracle teacher: 4 x (conv + ReLU), 64 channels each, standard training on the labels
[ -f "$T/summary.json" ] || timed teacher "$T/train.log" $RD train "$B/teacher.yaml"
# 2. prune it to the paper's widths 45-32-32-20, keeping the channels of largest fan-out norm (a short CPU training
#    leaves no channel with a near-zero fan-out: pruned.json lists every norm); the student is 1.1x: 50-35-35-22
[ -f "$T/pruned.pt" ] || timed prune "$T/prune.log" $RD prune "$T/last.pt" --widths 45,32,32,20 --out "$T/pruned.pt"
W=$($PY -c "import json; print(json.load(open('$T/pruned.json'))['student_widths'])")

# 3. the students (method, and what differs from student_base.yaml)
student() {
    local name=$1; shift
    [ -f "$R/$name/summary.json" ] && return 0
    mkdir -p "$R/$name"
    timed "$name" "$R/$name/train.log" $RD train "$B/student_base.yaml" --set "output_dir=$R/$name" \
        --set "student.kwargs.widths=$W" "$@"
}
student st_logit --set method=oracle_logit
student st_label --set method=oracle_label
student st_gaussian --set method=oracle_logit_gaussian
student at --set method=oracle_adv
# Table 2: 3 epochs (the paper's 150 of 300); each step runs PGD twice and keeps x'_in or x'_out
student inplane_at --set method=inplane_at --set optim.epochs=3 --set "save_epochs=[3]"
student outplane_at --set method=outplane_at --set optim.epochs=3 --set "save_epochs=[3]"

# 4. specialization and robustness of every kept student, the paper's claims, tables and figures
timed claims "$R/claims.log" $PY "$B/claims.py" "$R"
cat "$R/cpu_times.log"
