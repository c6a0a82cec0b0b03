// Shared by the CPU and CUDA wrappers: parameters as contiguous fp32 tensors.
#pragma once

#include <ATen/ATen.h>

namespace svf {

// `t` as a contiguous fp32 tensor. The common case (already so) returns `t` itself without a
// dispatcher round trip: ten of those per call cost more than the decode-time kernel when the
// caches are cold.
inline at::Tensor as_f32(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t;
  return t.to(at::kFloat).contiguous();
}

}  // namespace svf
