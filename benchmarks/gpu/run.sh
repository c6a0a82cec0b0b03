#!/usr/bin/env bash
# One prepared GPU check (NVIDIA, no network): build the CUDA extension, run the CUDA and
# Triton correctness tests (the one-field op and the field-table op), the kernel benchmark and
# the decode benchmark on a randomly initialised Llama-3-8B-shaped model in bf16 (batch 1 and
# 16). Everything lands in $OUT (or ./gpu-results). Budget: about 8 minutes, up to 3 more for
# the table tests. Uses the machine's python3 (torch with CUDA).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/log.txt"
step() { echo "== $* ($(date +%T))" | tee -a "$LOG"; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; git rev-parse --short HEAD;
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee -a "$LOG"

step "build the extension (CPU + CUDA) in place"
# only this card's architecture (the build is most of the budget otherwise)
ARCH="$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)"
( time TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=16 $PY setup.py build_ext --inplace ) >>"$LOG" 2>&1 || { echo "BUILD FAILED" | tee -a "$LOG"; }
$PY -c "import svf_kernels, svf_kernels._C as C; print('has_cuda', C.has_cuda()); print('backends', svf_kernels.available_backends('cuda'))" 2>&1 | tee -a "$LOG"

step "correctness: CUDA and Triton backends against the float64 reference"
timeout 180 $PY -m pytest -q -x tests/test_kernel_backends.py -p no:cacheprovider 2>&1 | tail -15 | tee -a "$LOG"

step "correctness: the field-table op (svf::field_table_update_) on the CUDA and Triton backends"
timeout 180 $PY -m pytest -q tests/test_field_table_kernels.py -p no:cacheprovider 2>&1 | tail -15 | tee -a "$LOG"

step "kernel benchmark (bf16 on the GPU)"
SVF_BENCH_DEVICE=cuda SVF_BENCH_DTYPE=bfloat16 timeout 150 $PY -m pytest -q benchmarks/bench_kernels.py \
  --benchmark-max-time=0.1 --benchmark-json "$OUT/kernels_cuda.json" -p no:cacheprovider >>"$LOG" 2>&1
$PY benchmarks/report_kernels.py "$OUT/kernels_cuda.json" 2>&1 | tee "$OUT/kernels_cuda.md" | tee -a "$LOG"

step "decode benchmark: random Llama-3-8B shape, bf16, batch 1 and 16"
timeout 200 $PY benchmarks/bench_decode.py --model llama3-8b-random --device cuda --dtype bfloat16 \
  --batch 1 16 --rounds 20 --out "$OUT" 2>&1 | grep -v "it/s" | tee "$OUT/decode.md" | tee -a "$LOG"
step "done"
