// Fused field update on CPU tensors (DESIGN.md §3; exact arithmetic in svf_kernels/ops/reference.py).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

// hidden: [N, d] CPU tensor (fp32 / bf16 / fp16, last dimension contiguous, any row stride),
// updated in place. A: [C, m, d]; c, w2: [C, m]; b2: [C] (fp32 or the hidden dtype);
// alpha: [N]; rows: optional [N] bool mask. Returns scores [N, C] float32 (before the update).
// field_ids: optional [N] int64/int32 (then rows must be None): a field table, A [F, C, m, d],
// c, w2 [F, C, m], b2 [F, C]; row r is moved by field field_ids[r] exactly as the one-field call
// would move it; an id outside [0, F) leaves the row untouched (no compute) with NaN scores.
// B: optional, the shape of A: the direction's matrix (g_i = B_i^T (...)); None: A itself.
// target: optional [N] target scores (NaN: none for that row); band > 0: the row's strength is
// alpha * clamp(sign(alpha) (target - s_mix) / band, 0, 1) (see svf_kernels/ops/reference.py).
// vectors: optional [F, d] with field_ids: each field's static vector; a row moves by
// a * (dir + vectors[field]).
at::Tensor field_update_cpu(at::Tensor hidden, at::Tensor A, at::Tensor c, at::Tensor w2,
                            at::Tensor b2, at::Tensor alpha, double tau, bool normalize,
                            double eps, c10::optional<at::Tensor> rows,
                            c10::optional<at::Tensor> field_ids, c10::optional<at::Tensor> B,
                            c10::optional<at::Tensor> target, double band,
                            c10::optional<at::Tensor> vectors);
