#!/usr/bin/env bash
# The training plan for a lent GPU: one device call, three trainings side by side on its one
# GPU and 16 cores, each warm-started from what we ship and packed into one tar for $OUT.
#
#   bash infra/gpu_train.sh stage   # here, once: the training images the call needs
#   bash infra/gpu_train.sh run     # there: `run` with carry [".train-data"], timeout_s 570
#
# `stage` copies the two BSDS500 training folders (29 MB; Train400's crops are cut from them)
# into .train-data/, which .git/info/exclude hides from git: with the 35 MB checkout that is
# just under the device tool's 64 MiB. T91 (16 MB) does not fit beside them, so the damage
# rule is calibrated over T91 back here (see the README, "Training on a lent GPU").
#
# Environment: MINUTES (6.5: the call's 600 s hold the throughput bench, start-up,
# calibration and packing too), BENCH (1; 0 skips bench/bench_throughput.py),
# DEVICE (cuda), DATA (.train-data), OUT (set by the device tool; runs/gpu otherwise),
# EXTRA (recipe options appended to every job, e.g. "max_steps=3 batch_size=2" to try the
# script on a CPU: DEVICE=cpu).
set -euo pipefail
cd "$(dirname "$0")/.."

SETS=(BSDS500-train BSDS500-test-split)
DATA=${DATA:-.train-data}
MINUTES=${MINUTES:-6.5}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu}
WORK=${WORK:-runs/gpu-work}
EXTRA=${EXTRA:-}
PY=${PY:-python3}
PIDS=()

stage() {
    local shared=${SHARED:-../shared/datasets/train}
    mkdir -p "$DATA"
    for set in "${SETS[@]}"; do
        rm -rf "${DATA:?}/$set"
        cp -r "$shared/$set" "$DATA/$set"
    done
    grep -qxF "/$DATA/" .git/info/exclude 2>/dev/null || echo "/$DATA/" >>.git/info/exclude
    # What the device call sends: tracked and untracked-not-ignored files, plus the carry.
    local tree data
    tree=$(git ls-files -co --exclude-standard -z | xargs -0 cat | wc -c)
    data=$(du -sb "$DATA" | cut -f1)
    echo "travels: $(((tree + data) / 1048576)) MiB of at most 64 (checkout $((tree / 1048576)), data $((data / 1048576)))"
    if ((tree + data > 64 * 1048576)); then
        echo "too large for one device call: delete untracked files or stale checkpoints" >&2
        return 1
    fi
}

# job NAME TASK WORKERS [ARGS...]: one training in the background, its files in $WORK/NAME.
# Its own process takes one thread: the GPU computes, the WORKERS processes make batches.
job() {
    local name=$1 task=$2 workers=$3
    shift 3
    local data=() extra=()
    for set in "${SETS[@]}"; do data+=(--data "$DATA/$set"); done
    for option in $EXTRA; do extra+=(--set "$option"); done
    mkdir -p "$WORK/$name"
    PYTHONUNBUFFERED=1 "$PY" infra/train_uninstalled.py "$task" "$WORK/$name/$name.safetensors" \
        "${data[@]}" --minutes "$MINUTES" --device "$DEVICE" --no-progress --set threads=1 \
        --set data_workers="$workers" --set checkpoint_minutes=2 --set val_minutes=1 \
        "$@" "${extra[@]}" >"$WORK/$name/$name.log" 2>&1 &
    PIDS+=($!)
}

run() {
    "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
    rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
    # Issue 4's GPU throughput of every shipped model, on the idle GPU first (about 30 s).
    [[ ${BENCH:-1} == 1 ]] && "$PY" bench/bench_throughput.py --device "$DEVICE" \
        --size "${BENCH_SIZE:-1024}" --out "$OUT/throughput.json"
    local monitor=
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 30 >"$WORK/gpu.log" &
        monitor=$!
    fi
    # Grey denoiser for one-band masters (Set12): the shipped 16-layer net, continued.
    job denoise-grey denoise 2 --init models/weights/daguerre-denoise-grey-m.safetensors \
        --set in_channels=1 --set layers=16 --set grey_fraction=1.0 --set loss=l2 \
        --set batch_size=64 --set lr=0.0003
    # Colour denoiser: the shipped 16-layer net, continued; L2, grey-replicated patches kept
    # at 25% (real grain).
    job denoise-colour denoise 2 --init models/weights/daguerre-denoise-m.safetensors \
        --set layers=16 --set loss=l2 --set batch_size=64 --set lr=0.0002
    # Damage detector with two coarser levels (stains, folds), continuing the CPU runs of them
    # (session 9's c2, then session 11's 100 minutes with hard-pixel BCE); 128 px patches (cut
    # from 256 px canvases) so its 132 px receptive radius sees a stain's surround.
    job damage damage 9 --init models/checkpoints/daguerre-damage-c3h.safetensors \
        --set context_levels=2 --set patch=128 --set batch_size=32 --set lr=0.0004 \
        --set val_patches=40 --set val_patch=128 --set hard_fraction=0.1
    local failed=0
    for pid in "${PIDS[@]}"; do wait "$pid" || failed=1; done
    [[ -n $monitor ]] && kill "$monitor" && cp "$WORK/gpu.log" "$OUT/"
    # At most 8 files come back, 16 MiB each: one tar per job (weights, card, checkpoint, log).
    for dir in "$WORK"/*/; do
        tar -cf "$OUT/$(basename "$dir").tar" -C "$WORK" "$(basename "$dir")"
    done
    tail -n 3 "$WORK"/*/*.log
    ls -la "$OUT"
    return $failed
}

case ${1:-} in
stage) stage ;;
run) run ;;
*)
    echo "usage: $0 stage|run" >&2
    exit 2
    ;;
esac
