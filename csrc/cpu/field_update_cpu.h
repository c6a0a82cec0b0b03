// Fused field update on CPU tensors (DESIGN.md §3; exact arithmetic in svf_kernels/reference.py).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

// hidden: [N, d] CPU tensor (fp32 / bf16 / fp16, last dimension contiguous, any row stride),
// updated in place. A: [C, m, d]; c, w2: [C, m]; b2: [C] (fp32 or the hidden dtype);
// alpha: [N]; rows: optional [N] bool mask. Returns scores [N, C] float32 (before the update).
at::Tensor field_update_cpu(at::Tensor hidden, at::Tensor A, at::Tensor c, at::Tensor w2,
                            at::Tensor b2, at::Tensor alpha, double tau, bool normalize,
                            double eps, c10::optional<at::Tensor> rows);
