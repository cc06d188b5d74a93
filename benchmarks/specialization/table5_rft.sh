#!/usr/bin/env bash
# Table 5 of the specialization paper (Yang et al., AISTATS 2021, App. A.11) on Fashion-MNIST: robust feature
# training (RFT) vs ST and AT. The robust-feature dataset D_R of run_all.sh's AT student of epoch 3 (Eq. 35, alpha
# 0.5; robust_distill/analysis/robust_features.py), then ST (logit) of epoch 3 fine-tuned 3 epochs on D_R with the
# oracle's logits (`oracle_logit` on `robust_features` wrapped by `oracle`), then table5_rft.py ->
# benchmarks/results/specialization/table5_rft.md, fig15_bnc_rft.png, fig16_epsilon_rft.png.
# Sized for ONE CPU core (OMP_NUM_THREADS=1); every step is skipped when its output exists. Estimated on one core:
# D_R ~30 min (10k images x 200 steps at 0.8-1.2 ms per image-step through the student and the teacher, measured
# on the shared machine; RFT_STEPS=100 halves it), the RFT run ~4 min (3 epochs of logit training + validation),
# the analysis ~1 min: ~35 min when the teacher, ST and AT checkpoints exist. Checkpoints are not committed: on a fresh checkout the
# teacher (~1 h), ST (logit, ~7 min) and AT (~12 min) are trained first, as run_all.sh does.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" RD_DISABLE_PLUGIN_AUTOLOAD="${RD_DISABLE_PLUGIN_AUTOLOAD:-1}"
RD=".venv/bin/robust-distill"
PY=".venv/bin/python"
B=benchmarks/specialization
R=benchmarks/results/specialization
T="$R/teacher"
mkdir -p "$T" "$R/rft"
timed() {  # timed NAME LOG COMMAND...: run, output to LOG, CPU and wall seconds to cpu_times.log
    local name=$1 logfile=$2; shift 2
    echo "[$(date +%H:%M:%S)] $name" >&2
    /usr/bin/time -a -o "$R/cpu_times.log" -f "$name: %U s user, %S s system, %e s wall" "$@" > "$logfile" 2>&1 \
        || { echo "$name failed; see $logfile" >&2; tail -5 "$logfile" >&2; exit 1; }
}

# 1. the oracle teacher and its pruning, as run_all.sh steps 1-2
if [ ! -f "$T/pruned.pt" ]; then
    [ -f "$T/last.pt" ] || timed teacher "$T/train.log" $RD train "$B/teacher.yaml"
    timed prune "$T/prune.log" $RD prune "$T/last.pt" --widths 45,32,32,20 --out "$T/pruned.pt"
fi
W=$($PY -c "import json; print(json.load(open('$T/pruned.json'))['student_widths'])")

student() {  # as run_all.sh, but retrained when its checkpoint is missing (summary.json alone is not enough here)
    local name=$1 ckpt=$2; shift 2
    [ -f "$R/$name/$ckpt" ] && return 0
    mkdir -p "$R/$name"
    timed "$name" "$R/$name/train.log" $RD train "$B/student_base.yaml" --set "output_dir=$R/$name" \
        --set "student.kwargs.widths=$W" --no-resume "$@"
}
# 2. the ST (logit) student RFT starts from and the AT student D_R is built from, as run_all.sh trains them
student st_logit epoch_3.pt --set method=oracle_logit
student at epoch_3.pt --set method=oracle_adv

# 3. D_R (rft/robust_features.pt, its statistics in rft/robust_features.json)
[ -f "$R/rft/robust_features.pt" ] || timed rft_dataset "$R/rft/generate.log" $PY "$B/table5_rft.py" generate "$R"

# 4. RFT: ST (logit) of epoch 3 fine-tuned 3 epochs on D_R, labels and targets from the oracle
[ -f "$R/rft/summary.json" ] || timed rft "$R/rft/train.log" $RD train "$B/student_base.yaml" \
    --set "output_dir=$R/rft" --set "student.kwargs.widths=$W" --set method=oracle_logit \
    --set data.options.base=robust_features --set "data.options.base_options.file=$R/rft/robust_features.pt" \
    --set "student.kwargs.checkpoint_path=$R/st_logit/epoch_3.pt" --set optim.epochs=3 --set "save_epochs=[3]"

# 5. measurements, table, claims, figures
timed table5 "$R/table5_rft.log" $PY "$B/table5_rft.py" table "$R"
cat "$R/table5_rft.md"
