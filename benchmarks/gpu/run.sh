#!/usr/bin/env bash
# One prepared GPU check (NVIDIA, no network): build the CUDA extension, run the CUDA and
# Triton correctness tests (the one-field op and the field-table op), the op's device time
# against its floor at decode shapes (kernel_floor.py), and steered decoding inside CUDA graphs
# on a randomly initialised Llama-3-8B-shaped model in bf16, batch 1 and 16 (decode_graphs.py).
# Everything lands in $OUT (or ./gpu-results), 8 files; every step has its own timeout
# (8.5 minutes in all). Uses the machine's python3 (torch with CUDA).
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
( time TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=16 timeout 180 $PY setup.py build_ext --inplace ) >>"$LOG" 2>&1 || { echo "BUILD FAILED" | tee -a "$LOG"; }
$PY -c "import svf_kernels, svf_kernels._C as C; print('has_cuda', C.has_cuda()); print('backends', svf_kernels.available_backends('cuda'))" 2>&1 | tee -a "$LOG"

step "correctness: CUDA and Triton backends against the float64 reference"
timeout 75 $PY -m pytest -q -x tests/test_kernel_backends.py -p no:cacheprovider 2>&1 | tail -15 | tee -a "$LOG"

step "correctness: the field-table op (svf::field_table_update_) on the CUDA and Triton backends"
timeout 75 $PY -m pytest -q tests/test_field_table_kernels.py -p no:cacheprovider 2>&1 | tail -15 | tee -a "$LOG"

step "kernel against its floor: N = 1, 8, 64; d = 4096; C = 1, 3; bf16; CUDA and Triton"
timeout 60 $PY benchmarks/gpu/kernel_floor.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/kernel_floor.md" | tee -a "$LOG"

step "steered decoding inside CUDA graphs: random Llama-3-8B shape, bf16, batch 1 and 16"
timeout 120 $PY benchmarks/gpu/decode_graphs.py --device cuda --batch 1 16 --out "$OUT" 2>&1 \
  | tee "$OUT/decode_graphs.md" | tee -a "$LOG"
step "done"
