#!/usr/bin/env bash
# Regenerate benchmarks/results/fashion_mnist: the full Fashion-MNIST comparison of the README (several hours
# on 2 CPU cores; every step resumes where it stopped if interrupted). Run from anywhere after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
RD=".venv/bin/robust-distill"
R=benchmarks/results/fashion_mnist
ASSETS=robust_distill/assets

# 1. every method of the zoo, 2 seeds (PGD-AT and TRADES runs also record per-sample robustness)
$RD bench benchmarks/fashion_mnist/zoo_grid.yaml
# 2. the robustly unlearnable set of convnet_s, from the PGD-AT and TRADES students
$RD unlearnable "$R/zoo/method=pgd_at,seed=0" "$R/zoo/method=pgd_at,seed=1" \
                "$R/zoo/method=trades,seed=0" "$R/zoo/method=trades,seed=1" --out "$R/unlearnable.json"
# 3. five candidate teachers, scored by entropy on S_U, then RSLAD students from each of them (the PGD-AT
#    seed-0 student peaks at its last epoch, so its last.pt equals best.pt: scored once)
$RD teacher-score --unlearnable "$R/unlearnable.json" --out "$R/teacher_scores.json" --device cpu --teachers \
    "checkpoint:$ASSETS/fmnist_teacher_pgd_at.pt" "checkpoint:$ASSETS/fmnist_teacher_trades.pt" \
    "checkpoint:$R/zoo/method=pgd_at,seed=0/best.pt" \
    "checkpoint:$R/zoo/method=trades,seed=1/best.pt" "checkpoint:$R/zoo/method=trades,seed=1/last.pt"
$RD bench benchmarks/fashion_mnist/teacher_grid.yaml
$RD bench benchmarks/fashion_mnist/teacher_grid_sd.yaml
# 4. AdaAD and RSLAD with larger inner radii
$RD bench benchmarks/fashion_mnist/eps_grid.yaml
# 4b. the check of claim 1's cause: AdaAD with a batch-mean KL instead of its CIFAR-10 code's mean
$RD train benchmarks/fashion_mnist/student_base.yaml --set method=adaad --set outer_loss.kwargs.kl_reduction=batchmean \
    --set output_dir="$R/checks/adaad_batchmean"
# 5. reports and the claims
$RD report "$R/zoo" --out "$R/zoo" --title "Fashion-MNIST: every method, convnet_s from convnet_m"
$RD report "$R/zoo" "$R/teachers" "$R/teachers_sd" --where method=rslad --out "$R/teachers" \
    --teacher-scores "$R/teacher_scores.json" --title "Fashion-MNIST: RSLAD students of five teachers"
$RD report "$R/zoo" "$R/eps" --where method=adaad,rslad --out "$R/eps" \
    --title "Fashion-MNIST: AdaAD and RSLAD against the inner-maximisation radius"
.venv/bin/python benchmarks/fashion_mnist/claims.py "$R"
# 6. the shipped teachers: clean, PGD-20 and AutoAttack standard on the first test images (FAB-T and Square
#    on convnet_m are slow on a CPU, hence 200 images for the robust teachers)
T=benchmarks/results/fashion_mnist_teachers
mkdir -p "$T"
for spec in natural:500 pgd_at:200 trades:200; do
    t=${spec%%:*}
    $RD eval "$ASSETS/fmnist_teacher_$t.pt" --attacks clean,pgd20,autoattack --n-examples "${spec##*:}" \
        --out "$T/$t.json" > "$T/$t.md"
done
$RD eval "$ASSETS/fmnist_teacher_trades.pt" --attacks clean,pgd20,autoattack_apgd --n-examples 500 \
    --out "$T/trades_apgd.json" > "$T/trades_apgd.md"
# 7. |S_U| against student capacity (convnet_xs/s/m/l x PGD-AT/TRADES x 3 seeds; about 1.5 h of one core)
$RD bench benchmarks/fashion_mnist/capacity_grid.yaml
.venv/bin/python benchmarks/fashion_mnist/capacity_table.py "$R/capacity"
# 8. teacher selection in one command, on the shipped teachers (4 identification runs of convnet_s, cached)
mkdir -p "$R/select_teacher"
$RD select-teacher --student timm:convnet_s --teachers "$ASSETS/fmnist_teacher_pgd_at.pt" \
    "$ASSETS/fmnist_teacher_trades.pt" "$ASSETS/fmnist_teacher_natural.pt" --device cpu \
    --cache "$R/select_teacher" --out "$R/select_teacher/selection.json" > "$R/select_teacher/selection.md"
