#!/usr/bin/env bash
# The GPU check of issue 22, in one call: the CUDA tests, benchmarks/gpu.py and the kernel
# counts, everything written under $OUT (default: results/gpu_check).
#
#   scripts/gpu_check.sh            # CUDA tests (~2-3 min) + gpu.py --quick (~3 min) + counts
#   scripts/gpu_check.sh --full     # the same with the full gpu.py (<= 8 min)
#   scripts/gpu_check.sh --smoke    # on the CPU at tiny size (CI runs it): the CUDA tests skip
#
# Writes: tests_cuda.txt (pytest -m cuda output), bench/gpu.json + bench/gpu.md (ratio with the
# bare step, kernels per step from torch.profiler, syncs off the flush and at it, extra peak
# memory), bench.log, kernel_counts.json + kernel_counts.md (launches per call-site, CPU
# counting), nvidia_smi.txt, status.txt (each part's exit status). Exit status: non-zero when
# a part failed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
MODE=${1:---quick}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
run() {  # run NAME CMD...: its output in $OUT/NAME, its status in status.txt
    local name=$1; shift
    "$@" > "$OUT/$name" 2>&1
    local rc=$?
    echo "$name $rc" >> "$OUT/status.txt"
    [ $rc -eq 0 ] || status=1
}
: > "$OUT/status.txt"
(nvidia-smi || echo "no nvidia-smi") > "$OUT/nvidia_smi.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available())" >> "$OUT/nvidia_smi.txt" 2>&1
case "$MODE" in
    --smoke) bench=(--smoke); counts=(--depth 2 --width 32 --batch 8 --families GELU)
             export OMP_NUM_THREADS=1 ;;  # tiny CPU ops: a second thread only waits
    --full) bench=(); counts=() ;;
    *) bench=(--quick); counts=() ;;
esac
run tests_cuda.txt python -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels.py \
    tests/test_fused.py tests/test_amp.py tests/test_monitor.py
run bench.log python benchmarks/gpu.py "${bench[@]}" --out "$OUT/bench"
run kernel_counts.md python benchmarks/kernel_counts.py "${counts[@]}" --json "$OUT/kernel_counts.json"
cat "$OUT/status.txt"
exit $status
