// Registers the compiled kernels for the CPU (and CUDA) dispatch keys of svf::field_update_ and
// of its field-table variant svf::field_table_update_, and the CPU kernel of
// svf::residual_table_update_ (the table on a decoder layer's (hidden, residual) pair).
//
// The op and its schema are defined in Python (svf_kernels/ops/op.py), where a CompositeExplicitAutograd
// kernel picks a backend by device and SVF_BACKEND. Registering the kernels here as well lets a
// call on CPU (CUDA) tensors go straight from the dispatcher to C++, without the Python hop that
// costs ~100 us per call when decoding has evicted the interpreter from cache. Whatever the
// compiled kernel does not serve (SVF_BACKEND naming another backend, float64 reference checks)
// goes to svf::_field_update_python, the op's Python dispatch (svf::_field_table_update_python
// for the table op).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "cpu/field_update_cpu.h"
#ifdef SVF_WITH_CUDA
#include "cuda/field_update_cuda.h"
#endif

namespace {

// True when the compiled kernel `name` serves this call; else the Python dispatch decides.
// This mirrors svf_kernels.ops.dispatch.select_backend, the one place the routing is decided:
// float64 goes to the torch reference, and SVF_BACKEND (read per call; only "" or the exact
// lower-case name stays here, every other spelling is normalised and checked in Python) may name
// another backend.
bool compiled_serves(const char* name, const at::Tensor& hidden) {
  const char* requested = std::getenv("SVF_BACKEND");
  if (requested != nullptr && requested[0] != '\0' && std::strcmp(requested, name) != 0) {
    return false;
  }
  return hidden.scalar_type() != at::kDouble;
}

at::Tensor python_dispatch(at::Tensor& hidden, const at::Tensor& A, const at::Tensor& c,
                           const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& alpha,
                           double tau, bool normalize, double eps,
                           const std::optional<at::Tensor>& rows,
                           const std::optional<at::Tensor>& B,
                           const std::optional<at::Tensor>& target, double band) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("svf::_field_update_python", "");
  std::vector<c10::IValue> stack{hidden, A, c, w2, b2, alpha, tau, normalize,
                                 eps, rows, B, target, band};
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

at::Tensor field_update_cpu_op(at::Tensor& hidden, const at::Tensor& A, const at::Tensor& c,
                               const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& alpha,
                               double tau, bool normalize, double eps,
                               const std::optional<at::Tensor>& rows,
                               const std::optional<at::Tensor>& B,
                               const std::optional<at::Tensor>& target, double band) {
  if (!compiled_serves("cpu", hidden)) {
    return python_dispatch(hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows, B,
                           target, band);
  }
  return field_update_cpu(hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows, c10::nullopt,
                          B, target, band, c10::nullopt);
}

at::Tensor python_table_dispatch(at::Tensor& hidden, const at::Tensor& A, const at::Tensor& c,
                                 const at::Tensor& w2, const at::Tensor& b2,
                                 const at::Tensor& field_ids, const at::Tensor& alpha, double tau,
                                 bool normalize, double eps,
                                 const std::optional<at::Tensor>& B,
                                 const std::optional<at::Tensor>& target, double band,
                                 const std::optional<at::Tensor>& vectors) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("svf::_field_table_update_python", "");
  std::vector<c10::IValue> stack{hidden, A, c, w2, b2, field_ids, alpha, tau, normalize,
                                 eps, B, target, band, vectors};
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

at::Tensor field_table_update_cpu_op(at::Tensor& hidden, const at::Tensor& A, const at::Tensor& c,
                                     const at::Tensor& w2, const at::Tensor& b2,
                                     const at::Tensor& field_ids, const at::Tensor& alpha,
                                     double tau, bool normalize, double eps,
                                     const std::optional<at::Tensor>& B,
                                     const std::optional<at::Tensor>& target, double band,
                                     const std::optional<at::Tensor>& vectors) {
  if (!compiled_serves("cpu", hidden)) {
    return python_table_dispatch(hidden, A, c, w2, b2, field_ids, alpha, tau, normalize,
                                 eps, B, target, band, vectors);
  }
  return field_update_cpu(hidden, A, c, w2, b2, alpha, tau, normalize, eps, c10::nullopt,
                          field_ids, B, target, band, vectors);
}

// svf::residual_table_update_ on CPU tensors: the steps of its Python kernel
// (svf_kernels/ops/op.py), without the Python hop, since a served model calls it once per steered
// layer per step. The table op goes through the dispatcher (its C++ kernel, or the Python
// dispatch for what that does not serve).
void residual_table_update_cpu_op(at::Tensor& hidden, at::Tensor& residual, const at::Tensor& A,
                                  const at::Tensor& c, const at::Tensor& w2,
                                  const at::Tensor& b2, const at::Tensor& field_ids,
                                  const at::Tensor& alpha, const at::Tensor& live, double tau,
                                  bool normalize, double eps, const std::optional<at::Tensor>& B,
                                  const std::optional<at::Tensor>& targets, double band,
                                  const std::optional<at::Tensor>& vectors) {
  TORCH_CHECK(live.scalar_type() == at::kBool && live.numel() == 1 && live.device().is_cpu(),
              "residual_table_update_: live must be a one-element bool tensor on the CPU");
  if (!*live.const_data_ptr<bool>()) return;
  static const auto table_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("svf::field_table_update_", "")
          .typed<at::Tensor(at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool,
                            double, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, double,
                            const std::optional<at::Tensor>&)>();
  const int64_t n = hidden.size(0);
  const at::Tensor ids = field_ids.narrow(0, 0, n), a = alpha.narrow(0, 0, n);
  hidden.add_(residual);
  std::optional<at::Tensor> target;
  if (targets.has_value() && targets->defined()) {
    const at::Tensor t = targets->index_select(0, ids.clamp(0, targets->size(0) - 1));
    target = at::where(a < 0, -t, t);
  }
  table_op.call(hidden, A, c, w2, b2, ids, a, tau, normalize, eps, B, target, band, vectors);
  residual.zero_();
}

#ifdef SVF_WITH_CUDA
at::Tensor field_update_cuda_op(at::Tensor& hidden, const at::Tensor& A, const at::Tensor& c,
                                const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& alpha,
                                double tau, bool normalize, double eps,
                                const std::optional<at::Tensor>& rows,
                                const std::optional<at::Tensor>& B,
                                const std::optional<at::Tensor>& target, double band) {
  if (!compiled_serves("cuda", hidden)) {
    return python_dispatch(hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows, B,
                           target, band);
  }
  return field_update_cuda(hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows, c10::nullopt,
                           B, target, band, c10::nullopt);
}

at::Tensor field_table_update_cuda_op(at::Tensor& hidden, const at::Tensor& A,
                                      const at::Tensor& c, const at::Tensor& w2,
                                      const at::Tensor& b2, const at::Tensor& field_ids,
                                      const at::Tensor& alpha, double tau, bool normalize,
                                      double eps,
                                      const std::optional<at::Tensor>& B,
                                      const std::optional<at::Tensor>& target, double band,
                                      const std::optional<at::Tensor>& vectors) {
  if (!compiled_serves("cuda", hidden)) {
    return python_table_dispatch(hidden, A, c, w2, b2, field_ids, alpha, tau, normalize,
                                 eps, B, target, band, vectors);
  }
  return field_update_cuda(hidden, A, c, w2, b2, alpha, tau, normalize, eps, c10::nullopt,
                           field_ids, B, target, band, vectors);
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(svf, CPU, m) {
  m.impl("field_update_", &field_update_cpu_op);
  m.impl("field_table_update_", &field_table_update_cpu_op);
  m.impl("residual_table_update_", &residual_table_update_cpu_op);
}

#ifdef SVF_WITH_CUDA
TORCH_LIBRARY_IMPL(svf, CUDA, m) {
  m.impl("field_update_", &field_update_cuda_op);
  m.impl("field_table_update_", &field_table_update_cuda_op);
}
#endif
