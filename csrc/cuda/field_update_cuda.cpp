// Torch wrapper: argument checks, fp32 parameter conversion, workspace, launch on the current
// stream. Compiled only where torch has CUDA (SVF_WITH_CUDA).
#include "field_update_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <cstdint>

#include "as_float32.h"
#include "field_update_kernel.h"

using svf::as_f32;

at::Tensor field_update_cuda(at::Tensor hidden, at::Tensor A, at::Tensor c, at::Tensor w2,
                             at::Tensor b2, at::Tensor alpha, double tau, bool normalize,
                             double eps, c10::optional<at::Tensor> rows,
                             c10::optional<at::Tensor> field_ids, c10::optional<at::Tensor> B,
                             c10::optional<at::Tensor> target, double band,
                             c10::optional<at::Tensor> vectors) {
  TORCH_CHECK(hidden.is_cuda(), "field_update_cuda: hidden must be a CUDA tensor");
  TORCH_CHECK(hidden.dim() == 2, "field_update_cuda: hidden must be [N, d]");
  TORCH_CHECK(hidden.stride(1) == 1 || hidden.size(1) <= 1,
              "field_update_cuda: hidden rows must be contiguous in the last dimension");
  int dtype = -1;
  if (hidden.scalar_type() == at::kFloat) {
    dtype = SVF_DTYPE_F32;
  } else if (hidden.scalar_type() == at::kBFloat16) {
    dtype = SVF_DTYPE_BF16;
  } else if (hidden.scalar_type() == at::kHalf) {
    dtype = SVF_DTYPE_F16;
  }
  TORCH_CHECK(dtype >= 0, "field_update_cuda: hidden must be float32, bfloat16 or float16, got ",
              hidden.scalar_type());
  const int64_t n = hidden.size(0), d = hidden.size(1);
  const bool table = field_ids.has_value() && field_ids->defined();
  // A one-field call is a table of F = 1 fields with no ids (every row uses field 0).
  const int64_t lead = table ? 1 : 0;
  TORCH_CHECK(A.dim() == 3 + lead && A.size(2 + lead) == d,
              table ? "field_update_cuda: A must be a table [F, C, m, d]"
                    : "field_update_cuda: A must be [C, m, d]");
  const int64_t F = table ? A.size(0) : 1, C = A.size(lead), m = A.size(lead + 1);
  TORCH_CHECK(F >= 1 && F <= INT32_MAX, "field_update_cuda: bad number of fields F");
  TORCH_CHECK(C >= 1 && m >= 1 && C * m <= (1 << 20), "field_update_cuda: bad C, m");
  TORCH_CHECK(c.numel() == F * C * m && w2.numel() == F * C * m && b2.numel() == F * C,
              table ? "field_update_cuda: c, w2 must be [F, C, m] and b2 [F, C]"
                    : "field_update_cuda: c, w2 must be [C, m] and b2 [C]");
  TORCH_CHECK(alpha.numel() == n, "field_update_cuda: alpha must be [N]");
  const at::Device dev = hidden.device();
  for (const at::Tensor* t : {&A, &c, &w2, &b2, &alpha}) {
    TORCH_CHECK(t->device() == dev, "field_update_cuda: all tensors must be on ", dev);
  }
  const bool has_b = B.has_value() && B->defined();
  if (has_b) {
    TORCH_CHECK(B->sizes() == A.sizes() && B->device() == dev,
                "field_update_cuda: B must have the shape of A (", A.sizes(), ") on ", dev);
  }
  const bool has_target = target.has_value() && target->defined();
  if (has_target) {
    TORCH_CHECK(target->numel() == n && target->device() == dev,
                "field_update_cuda: target must be [N] on ", dev);
    TORCH_CHECK(std::isfinite(band) && band > 0, "field_update_cuda: band must be finite and > 0");
  }
  const bool has_vectors = vectors.has_value() && vectors->defined();
  if (has_vectors) {
    TORCH_CHECK(table && vectors->dim() == 2 && vectors->size(0) == F && vectors->size(1) == d &&
                    vectors->device() == dev,
                "field_update_cuda: vectors must be [F, d] on ", dev, " and come with field_ids");
  }
  at::Tensor ids;
  if (table) {
    TORCH_CHECK(field_ids->scalar_type() == at::kLong || field_ids->scalar_type() == at::kInt,
                "field_update_cuda: field_ids must be int64 or int32, got ",
                field_ids->scalar_type());
    TORCH_CHECK(field_ids->numel() == n && field_ids->device() == dev,
                "field_update_cuda: field_ids must be [N] on ", dev);
    ids = field_ids->contiguous();
  }
  c10::cuda::CUDAGuard guard(dev);

  const at::Tensor A32 = as_f32(A), c32 = as_f32(c), w232 = as_f32(w2), b232 = as_f32(b2);
  const at::Tensor alpha32 = as_f32(alpha);
  // Without B the direction reads A itself (the same pointer: no extra memory traffic).
  const at::Tensor B32 = has_b ? as_f32(*B) : A32;
  const at::Tensor target32 = has_target ? as_f32(*target) : at::Tensor();
  const at::Tensor vectors32 = has_vectors ? as_f32(*vectors) : at::Tensor();
  at::Tensor rows_b;
  if (rows.has_value() && rows->defined()) {
    TORCH_CHECK(rows->scalar_type() == at::kBool && rows->numel() == n &&
                    rows->device() == dev,
                "field_update_cuda: rows must be a [N] bool mask on ", dev);
    rows_b = rows->contiguous();
  }
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor scores = at::empty({n, C}, fopts);
  if (n == 0 || d == 0) {
    if (n > 0) scores.zero_();
    if (n > 0 && table) {  // rows with no field: NaN (on the device, no synchronisation)
      scores.masked_fill_(((ids < 0) | (ids >= F)).unsqueeze(1), NAN);
    }
    return scores;
  }
  at::Tensor ws = at::empty({svf_field_update_workspace_floats(n, d, static_cast<int>(C),
                                                               static_cast<int>(m),
                                                               has_target ? 1 : 0)},
                            fopts);
  const int64_t row_stride = n > 1 ? hidden.stride(0) : d;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream(dev.index()).stream();
  const cudaError_t err = svf_field_table_update_launch(
      hidden.data_ptr(), dtype, n, d, row_stride, A32.data_ptr<float>(), B32.data_ptr<float>(),
      c32.data_ptr<float>(), w232.data_ptr<float>(), b232.data_ptr<float>(),
      alpha32.data_ptr<float>(), has_target ? target32.data_ptr<float>() : nullptr,
      static_cast<float>(band), rows_b.defined() ? rows_b.data_ptr<bool>() : nullptr,
      table ? ids.data_ptr() : nullptr, table && ids.scalar_type() == at::kInt ? 1 : 0,
      has_vectors ? vectors32.data_ptr<float>() : nullptr,
      static_cast<int>(F), static_cast<int>(C), static_cast<int>(m), static_cast<float>(tau),
      normalize, static_cast<float>(eps), scores.data_ptr<float>(), ws.data_ptr<float>(), stream);
  TORCH_CHECK(err != cudaErrorInvalidValue,
              "field_update_cuda: shapes not supported by the kernel (C*m too large for shared "
              "memory, or too many rows/columns)");
  C10_CUDA_CHECK(err);
  return scores;
}
