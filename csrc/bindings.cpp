// pybind11 module svf_kernels._C: the compiled backends of svf_kernels.field_update_.
#include <torch/extension.h>

#include "cpu/field_update_cpu.h"
#ifdef SVF_WITH_CUDA
#include "cuda/field_update_cuda.h"
#endif

namespace {

bool has_cuda() {
#ifdef SVF_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "svf-kernels compiled backends of field_update_ (DESIGN.md section 3)";
  m.def("field_update_cpu", &field_update_cpu,
        "Fused field update on CPU tensors, in place; returns float32 scores [N, C]. With "
        "field_ids [N] (int64/int32): A is a table [F, C, m, d], row r uses field field_ids[r], "
        "ids outside [0, F) leave the row untouched with NaN scores. B (the shape of A): the "
        "direction's matrix, None: A. target [N] (NaN: none for the row) and band > 0: each "
        "row's strength is alpha times the gate of its target. vectors [F, d] (with field_ids): "
        "each field's static vector, added to the row's unit direction",
        py::arg("hidden"), py::arg("A"), py::arg("c"), py::arg("w2"), py::arg("b2"),
        py::arg("alpha"), py::arg("tau"), py::arg("normalize"), py::arg("eps"),
        py::arg("rows") = py::none(), py::arg("field_ids") = py::none(),
        py::arg("B") = py::none(), py::arg("target") = py::none(), py::arg("band") = 1.0,
        py::arg("vectors") = py::none());
#ifdef SVF_WITH_CUDA
  m.def("field_update_cuda", &field_update_cuda,
        "Fused field update on CUDA tensors, in place; returns float32 scores [N, C]; "
        "field_ids, B, target, band and vectors as for field_update_cpu",
        py::arg("hidden"), py::arg("A"), py::arg("c"), py::arg("w2"), py::arg("b2"),
        py::arg("alpha"), py::arg("tau"), py::arg("normalize"), py::arg("eps"),
        py::arg("rows") = py::none(), py::arg("field_ids") = py::none(),
        py::arg("B") = py::none(), py::arg("target") = py::none(), py::arg("band") = 1.0,
        py::arg("vectors") = py::none());
#endif
  m.def("has_cuda", &has_cuda, "Whether this build includes the CUDA kernels");
}
