// Torch-facing wrapper of the fused field update on CUDA tensors (DESIGN.md §3). The kernels
// themselves live in field_update_kernel.cu, which includes no torch headers.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

// hidden: [N, d] CUDA tensor (fp32 / bf16 / fp16, last dimension contiguous), updated in place.
// A: [C, m, d]; c, w2: [C, m]; b2: [C]; alpha: [N]; rows: optional [N] bool mask.
// Returns scores [N, C] float32 (before the update). Runs on the current CUDA stream with no
// host synchronisation.
at::Tensor field_update_cuda(at::Tensor hidden, at::Tensor A, at::Tensor c, at::Tensor w2,
                             at::Tensor b2, at::Tensor alpha, double tau, bool normalize,
                             double eps, c10::optional<at::Tensor> rows);
