// Fused steering-vector-field update (DESIGN.md §2–§3), plain CUDA C++: no torch headers, so
// `nvcc -c field_update_kernel.cu` checks it in seconds on machines without torch or a GPU.
//
// Semantics are those of svf_kernels/ops/reference.py (the reference): for every row h of `hidden`
//   rms = sqrt(mean(h*h) + eps); hn = h / rms; z_i = A_i @ hn + c_i; s_i = w2_i @ act(z_i) + b2_i
//   g_i = B_i^T (act'(z_i) * w2_i); v_i = (g_i - hn * dot(hn, g_i) / d) / rms   (B: A or its own)
//   v = sum_i softmax(-s / tau)_i v_i; dir = normalize ? v / max(||v||, FLT_MIN) : v
//   a = alpha[n], or with a target a = alpha * clamp(sign(alpha) (target[n] - s_mix) / band, 0, 1)
//       (0 when that gate is 0; s_mix = smin - tau log(sum_i exp(-(s_i - smin) / tau)); a NaN
//       target[n] means no target for the row)
//   h += a * dir       (fp32 arithmetic; a row is left bit-identical when rows[n] is false,
//                       a == 0, or its input or its updated value, as stored, is not finite)
// scores [N, C] (fp32, before the update) are written for every row; NaN for a row skipped
// because of non-finite values (a non-finite input, or a row that would move but whose updated
// value is not finite).
//
// Field table (svf::field_table_update_, batched serving): F fields stacked, A, B [F, C, m, d],
// c, w2 [F, C, m], b2 [F, C]; row n is moved by field field_ids[n] exactly as the one-field
// update would move it. An id outside [0, F) means no steering: the row is left bit-identical,
// its scores are NaN, and nothing is computed for it. A table may hold a static vector per field
// (vectors [F, d]): a row of field f then moves by a * (dir + vectors[f]).
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

// Storage dtypes of `hidden`.
enum { SVF_DTYPE_F32 = 0, SVF_DTYPE_BF16 = 1, SVF_DTYPE_F16 = 2 };

// Number of floats the caller must provide as `workspace` for these shapes (has_target != 0:
// a call with target != nullptr).
int64_t svf_field_update_workspace_floats(int64_t n, int64_t d, int C, int m, int has_target);

// hidden: [n, d] rows `row_stride` elements apart, last dimension contiguous, dtype per enum.
// alpha: [n]; rows: [n] bool mask or nullptr; scores: [n, C] fp32 output; workspace: see above.
// target: [n] target scores (NaN: none for that row) or nullptr (no targets); band > 0.
// The field table: A, B [F, C, m, d]; c, w2 [F, C, m]; b2 [F, C] (fp32, contiguous; B is the
// direction's matrix, pass A itself for the gradient, the same pointer); field_ids:
// [n] on the device, int64 (ids_int32 == 0) or int32 (ids_int32 != 0), or nullptr (then F
// must be 1: field 0 for every row, the one-field update). The id values are read only on the
// device. vectors: [F, d] fp32 (each field's static vector) or nullptr. The schedule is chosen
// by the number of rows: one block per row from 96 rows on (prefill), else each row split over
// many blocks (decoding).
// Everything is enqueued on `stream` with no host synchronisation (CUDA-graph capturable).
// Returns the first launch error (cudaGetLastError) or cudaSuccess.
cudaError_t svf_field_table_update_launch(void* hidden, int dtype, int64_t n, int64_t d,
                                          int64_t row_stride, const float* A, const float* B,
                                          const float* c, const float* w2, const float* b2,
                                          const float* alpha, const float* target, float band,
                                          const bool* rows, const void* field_ids, int ids_int32,
                                          const float* vectors, int F, int C, int m, float tau,
                                          bool normalize,
                                          float eps, float* scores, float* workspace,
                                          cudaStream_t stream);

#ifdef __cplusplus
}
#endif
