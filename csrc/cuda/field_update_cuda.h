// Torch-facing wrapper of the fused field update on CUDA tensors (DESIGN.md §3). The kernels
// themselves live in field_update_kernel.cu, which includes no torch headers.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

// hidden: [N, d] CUDA tensor (fp32 / bf16 / fp16, last dimension contiguous), updated in place.
// Without field_ids (svf::field_update_): A: [C, m, d]; c, w2: [C, m]; b2: [C].
// With field_ids (svf::field_table_update_): a table of F fields, A: [F, C, m, d];
// c, w2: [F, C, m]; b2: [F, C]; field_ids: [N] int64 or int32 on the device. Row r is moved by
// field field_ids[r]; an id outside [0, F) leaves the row bit-identical with NaN scores (the
// ids are read only on the device).
// alpha: [N]; rows: optional [N] bool mask. Returns scores [N, C] float32 (before the update).
// B: optional, the shape of A: the direction's matrix (g_i = B_i^T (...)); None: A itself.
// target: optional [N] target scores (NaN: none for that row); band > 0: the row's strength is
// alpha * clamp(sign(alpha) (target - s_mix) / band, 0, 1), computed on the device.
// vectors: optional [F, d] with field_ids: each field's static vector; a row moves by
// a * (dir + vectors[field]).
// Runs on the current CUDA stream with no host synchronisation.
at::Tensor field_update_cuda(at::Tensor hidden, at::Tensor A, at::Tensor c, at::Tensor w2,
                             at::Tensor b2, at::Tensor alpha, double tau, bool normalize,
                             double eps, c10::optional<at::Tensor> rows,
                             c10::optional<at::Tensor> field_ids, c10::optional<at::Tensor> B,
                             c10::optional<at::Tensor> target, double band,
                             c10::optional<at::Tensor> vectors);
