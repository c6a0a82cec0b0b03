// Fused steering-vector-field update: CUDA kernels (no torch headers). See field_update_kernel.h
// for the contract and svf_kernels/ops/reference.py for the exact arithmetic.
//
// The C concepts' gradients are combined before the RMS-Jacobian projection, which is linear:
//   v = sum_i w_i (g_i - hn (hn . g_i) / d) / rms = (G - hn (hn . G) / d) / rms,
//   G = B_flat^T coef,  coef[i*m + u] = w_i * act'(z_iu) * w2_iu      (B_flat: [C*m, d])
// so each row needs one [C*m] -> [d] product and one d-vector. B is the direction's matrix: the
// caller passes A itself when there is no separate B (then G is the gradient).
//
// Target (optional, per row): the row's strength is alpha scaled by the gate of its target,
// computed from the row's scores where they are computed (scores_and_coef, see gated_alpha), so
// nothing leaves the device. The split schedule's later kernels read that strength from the
// workspace (p.strength); without a target p.strength is alpha itself.
//
// Field table (batched serving): the parameters are F fields stacked (A [F, C, m, d], ...) and
// row n uses field ids[n]; every kernel that reads parameters looks the row's field up once
// and moves its parameter pointers there (with_field; the static vector too, when the table has
// them: the update is a * (dir + V[f]), see updated). Without ids every row uses field 0: the
// one-field op runs the kTable = false instantiations, which pass the kernel's parameters
// through untouched. A row whose id lies outside [0, F) does
// no compute: k_split_z marks it with a NaN sum of squares (which the later kernels already
// treat as "leave the row alone"), k_split_g / k_fused write NaN scores.
//
// Non-finite values: the sum of squares also accumulates h * 0, so it is NaN exactly when the
// input row is not finite (+Inf only for a finite row so large that h*h overflows, which is
// left alone: the reference's update of such a row is exactly zero). A NaN sum of
// squares makes the scores NaN (written so in scores_and_coef). A row that would move but whose
// new row does not store as a finite T is left alone and its scores are overwritten with NaN
// where that is decided (k_split_write, the end of fused_row).
//
// Two schedules, both with no host synchronisation (CUDA-graph capturable):
//  * split (decoding, few rows): five short kernels over grid (rows, tiles of d or of units)
//      k_split_z       sum(h^2) and z = A h / rms + c           (blocks over units)
//      k_split_g       scores, softmin, coef; G tile; partial hn.G (blocks over 256 columns)
//      k_split_v       v tile (overwrites G); partial ||v||^2
//      k_split_check   updated tile finite? -> per-tile flag
//      k_split_write   write the tile when the whole row may be updated
//  * fused (prefill, many rows): one block per row does all of the above with block barriers.
// Workspace (floats): sumsq[n] | z[n, C*m] | gv[n, d] | part1[n, T] | part2[n, T] | flag[n, T]
// [| strength[n] with a target], T = ceil(d / kTile).

#include "field_update_kernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cmath>

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 256;            // columns per block in the split schedule (one per thread)
constexpr int64_t kFusedMinRows = 96;  // automatic schedule: fused from this many rows on
constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;
// ||v|| below kTinyNorm: sum(v*v) may have underflowed, so it is measured again on v * 2^100
// (exact) and scaled back; a tiny v is still normalised to a unit direction.
constexpr float kTinyNorm = 0x1p-50f;
constexpr float kNormUp = 0x1p+100f;
constexpr float kNormDown = 0x1p-100f;

template <typename T>
struct Io;
template <>
struct Io<float> {
  static __device__ __forceinline__ float load(const float* p) { return *p; }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
  static __device__ __forceinline__ float round(float v) { return v; }
};
template <>
struct Io<__nv_bfloat16> {
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) {
    return __bfloat162float(*p);
  }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) {
    *p = __float2bfloat16_rn(v);
  }
  // v as it would be stored (an overflow becomes +-Inf)
  static __device__ __forceinline__ float round(float v) {
    return __bfloat162float(__float2bfloat16_rn(v));
  }
};
template <>
struct Io<__half> {
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
  static __device__ __forceinline__ float round(float v) { return __half2float(__float2half_rn(v)); }
};

struct Params {
  void* hidden;
  int64_t n, d, stride;
  const float* A;
  const float* B;  // the direction's matrix (A itself when there is no separate B)
  const float* c;
  const float* w2;
  const float* b2;
  const float* V;  // [F, d] static vectors (with_field: the row's own), or nullptr: none
  const float* alpha;
  const float* target;  // [n] target scores (NaN: none for that row), or nullptr: no targets
  float band;
  const float* strength;  // each row's strength after scores_and_coef: alpha, or the workspace
  const bool* rows;
  const void* ids;  // [n] field ids (int64, or int32 when ids_i32), or nullptr: field 0
  bool ids_i32;
  int F;  // fields in the table (1 without ids)
  int C, m;
  float tau, eps;
  bool normalize;
  float* scores;
  int64_t tiles;  // T
  // workspace views
  float* sumsq;
  float* z;
  float* gv;
  float* part1;
  float* part2;
  float* flag;
  float* strength_ws;  // [n] (with a target), else nullptr
};

// The field of row n of a table (p.ids not null); -1 (no steering) for an id outside [0, F).
__device__ __forceinline__ int64_t row_field(const Params& p, int64_t n) {
  const int64_t f = p.ids_i32 ? static_cast<int64_t>(static_cast<const int32_t*>(p.ids)[n])
                              : static_cast<const int64_t*>(p.ids)[n];
  return (f >= 0 && f < p.F) ? f : -1;
}

// p with its parameter pointers moved to field f (0 <= f < F) of the table.
__device__ __forceinline__ Params with_field(Params p, int64_t f) {
  const int64_t Cm = static_cast<int64_t>(p.C) * p.m;
  p.A += f * Cm * p.d;
  p.B += f * Cm * p.d;
  p.c += f * Cm;
  p.w2 += f * Cm;
  p.b2 += f * p.C;
  if (p.V != nullptr) p.V += f * p.d;
  return p;
}

// The static vector of steered row n, or nullptr (no vectors); p not moved by with_field.
__device__ __forceinline__ const float* row_vector(const Params& p, int64_t n) {
  if (p.V == nullptr) return nullptr;
  return p.V + (p.ids != nullptr ? row_field(p, n) : 0) * p.d;
}

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

// Scores of a row with no field, or skipped for non-finite values: NaN. Every thread calls it.
__device__ __forceinline__ void nan_scores(const Params& p, int64_t n) {
  for (int i = threadIdx.x; i < p.C; i += kThreads) p.scores[n * p.C + i] = quiet_nan();
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sum, broadcast to every thread; deterministic. Every thread must call it.
__device__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[w] = v;
  __syncthreads();
  if (w == 0) {
    float t = lane < kWarps ? scratch[lane] : 0.f;
    t = warp_sum(t);
    if (lane == 0) scratch[kWarps] = t;
  }
  __syncthreads();
  return scratch[kWarps];
}

__device__ __forceinline__ float gelu_tanh(float z) {
  const float t = tanhf(kGeluK * (z + kGeluC * z * z * z));
  return 0.5f * z * (1.f + t);
}

// The derivative in its sigmoid form, s + 2K (1 + 3c z^2) z s (1 - s) with s = sigmoid(2y): no
// cancellation in 1 - tanh^2 (svf_kernels/ops/reference.py, gelu_tanh_grad).
__device__ __forceinline__ float gelu_tanh_grad(float z) {
  const float y2 = 2.f * kGeluK * (z + kGeluC * z * z * z);
  const float s = 1.f / (1.f + expf(-y2));
  const float q = 1.f / (1.f + expf(y2));  // 1 - s
  return s + 2.f * kGeluK * (1.f + 3.f * kGeluC * z * z) * z * s * q;
}

__device__ __forceinline__ float rms_of(const Params& p, float ss) {
  return sqrtf(ss / static_cast<float>(p.d) + p.eps);
}

// Whether row n may be updated at all (the finiteness of the result is checked later); `a` is
// the row's strength. A non-finite sum of squares means a non-finite input (or one so large
// that the reference's update is exactly zero): the row is left unchanged either way.
__device__ __forceinline__ bool row_active(const Params& p, int64_t n, float ss, float a) {
  return (p.rows == nullptr || p.rows[n]) && a != 0.f && isfinite(ss);
}

// The row's strength with a target: alpha * gate, gate = clamp(sign(alpha) (target - s_mix) /
// band, 0, 1), s_mix = smin - tau log(sum_i exp(-(s_i - smin) / tau)) (C = 1: exactly s_1; a
// +inf score weighs 0). A NaN target (no target for the row) or alpha == 0: alpha itself; a
// gate of 0: 0. NaN propagates (a NaN gate gives a NaN strength: the update is not finite).
__device__ __forceinline__ float gated_alpha(float a, const float* s, int C, float tau,
                                             float target, float band) {
  if (isnan(target) || a == 0.f) return a;
  float smin = s[0];
  for (int i = 1; i < C; ++i) smin = fminf(smin, s[i]);
  float total = 0.f;
  for (int i = 0; i < C; ++i) total += expf(-(s[i] - smin) / tau);
  const float smix = smin - tau * logf(total);
  const float sgn = a > 0.f ? 1.f : (a < 0.f ? -1.f : a);
  const float t = sgn * (target - smix) / band;
  const float gate = t < 0.f ? 0.f : (t > 1.f ? 1.f : t);
  return gate == 0.f ? 0.f : a * gate;
}

template <typename T>
__device__ float row_sumsq(const Params& p, const T* h, float* scratch) {
  float acc = 0.f;
  for (int64_t j = threadIdx.x; j < p.d; j += kThreads) {
    const float x = Io<T>::load(h + j);
    acc += x * x;
    acc += x * 0.f;  // NaN for a non-finite x; +-0 (no change) otherwise
  }
  return block_sum(acc, scratch);
}

// z[u] = (A[u] . h) / rms + c[u] for units u0 <= u < u1, one warp per unit.
template <typename T>
__device__ void row_z(const Params& p, const T* h, float rms, int u0, int u1, float* z) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  for (int u = u0 + w; u < u1; u += kWarps) {
    const float* a = p.A + static_cast<int64_t>(u) * p.d;
    float s = 0.f;
    for (int64_t j = lane; j < p.d; j += 32) s += a[j] * Io<T>::load(h + j);
    s = warp_sum(s);
    if (lane == 0) z[u] = s / rms + p.c[u];
  }
}

// From z (row n's [C*m], global): scores (written to scores_out when not null; NaN when
// nan_out, a non-finite input), softmin weights, and coef[u] = w_i act'(z_u) w2_u into shared
// memory. sc: C + 1 floats of shared memory. Returns the row's strength (alpha, or with a target
// alpha * gate, also written to strength_out when not null), the same in every thread.
__device__ float scores_and_coef(const Params& p, int64_t n, const float* z, float* coef,
                                 float* sc, float* scratch, float* scores_out, bool nan_out,
                                 float* strength_out) {
  const int m = p.m, C = p.C, Cm = C * m;
  for (int i = 0; i < C; ++i) {
    float acc = 0.f;
    for (int u = threadIdx.x; u < m; u += kThreads) {
      acc += p.w2[i * m + u] * gelu_tanh(z[i * m + u]);
    }
    const float s = block_sum(acc, scratch) + p.b2[i];
    if (threadIdx.x == 0) sc[i] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float mx = -INFINITY;
    for (int i = 0; i < C; ++i) mx = fmaxf(mx, -sc[i] / p.tau);
    if (scores_out != nullptr) {
      for (int i = 0; i < C; ++i) scores_out[i] = nan_out ? quiet_nan() : sc[i];
    }
    if (p.target != nullptr) {
      const float a = gated_alpha(p.alpha[n], sc, C, p.tau, p.target[n], p.band);
      sc[C] = a;
      if (strength_out != nullptr) *strength_out = a;
    }
    float total = 0.f;
    for (int i = 0; i < C; ++i) {
      const float e = expf(-sc[i] / p.tau - mx);
      sc[i] = e;
      total += e;
    }
    for (int i = 0; i < C; ++i) sc[i] = sc[i] / total;
  }
  __syncthreads();
  for (int u = threadIdx.x; u < Cm; u += kThreads) {
    coef[u] = sc[u / m] * gelu_tanh_grad(z[u]) * p.w2[u];
  }
  __syncthreads();
  return p.target != nullptr ? sc[C] : p.alpha[n];
}

__device__ __forceinline__ float g_column(const Params& p, const float* coef, int64_t j) {
  const int Cm = p.C * p.m;
  float g = 0.f;
  for (int u = 0; u < Cm; ++u) g += coef[u] * p.B[static_cast<int64_t>(u) * p.d + j];
  return g;
}

// Element j of the new row: h + a * (dir + V[j]) (V: the row's static vector, or nullptr).
__device__ __forceinline__ float updated(const Params& p, float h, float v, float nrm, float a,
                                         const float* V, int64_t j) {
  const float dir = p.normalize ? v / fmaxf(nrm, FLT_MIN) : v;
  return h + a * (V != nullptr ? dir + V[j] : dir);
}

// ---------------------------------------------------------------- split schedule (decoding)

template <typename T>
__device__ __forceinline__ void split_z_row(const Params& p, int64_t n, int units_per_block) {
  __shared__ float scratch[kWarps + 1];
  const T* h = static_cast<const T*>(p.hidden) + n * p.stride;
  const float ss = row_sumsq<T>(p, h, scratch);
  if (blockIdx.y == 0 && threadIdx.x == 0) p.sumsq[n] = ss;
  const int Cm = p.C * p.m;
  const int u0 = blockIdx.y * units_per_block;
  const int u1 = min(u0 + units_per_block, Cm);
  row_z<T>(p, h, rms_of(p, ss), u0, u1, p.z + n * Cm);
}

template <typename T, bool kTable>
__global__ void __launch_bounds__(kThreads) k_split_z(Params p, int units_per_block) {
  const int64_t n = blockIdx.x;
  if constexpr (kTable) {
    const int64_t f = row_field(p, n);
    if (f < 0) {  // no field (uniform over the block): no compute
      // a NaN sum of squares makes every later kernel leave the row alone
      if (blockIdx.y == 0 && threadIdx.x == 0) p.sumsq[n] = quiet_nan();
      return;
    }
    split_z_row<T>(with_field(p, f), n, units_per_block);
  } else {
    split_z_row<T>(p, n, units_per_block);
  }
}

template <typename T>
__device__ __forceinline__ void split_g_row(const Params& p, int64_t n) {
  extern __shared__ float smem[];
  __shared__ float scratch[kWarps + 1];
  const int Cm = p.C * p.m;
  float* coef = smem;
  float* sc = smem + Cm;
  const float ss = p.sumsq[n];
  const bool first = blockIdx.y == 0;
  const float a = scores_and_coef(p, n, p.z + n * Cm, coef, sc, scratch,
                                  first ? p.scores + n * p.C : nullptr, isnan(ss),
                                  first && p.strength_ws != nullptr ? p.strength_ws + n : nullptr);
  if (!row_active(p, n, ss, a)) return;  // uniform over the block
  const T* h = static_cast<const T*>(p.hidden) + n * p.stride;
  const float rms = rms_of(p, ss);
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.x;
  float part = 0.f;
  if (j < p.d) {
    const float g = g_column(p, coef, j);
    p.gv[n * p.d + j] = g;
    part = (Io<T>::load(h + j) / rms) * g;
  }
  part = block_sum(part, scratch);
  if (threadIdx.x == 0) p.part1[n * p.tiles + blockIdx.y] = part;
}

template <typename T, bool kTable>
__global__ void __launch_bounds__(kThreads) k_split_g(Params p) {
  const int64_t n = blockIdx.x;
  if constexpr (kTable) {
    const int64_t f = row_field(p, n);
    if (f < 0) {  // no field (uniform over the block): no compute
      if (blockIdx.y == 0) nan_scores(p, n);
      return;
    }
    split_g_row<T>(with_field(p, f), n);
  } else {
    split_g_row<T>(p, n);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) k_split_v(Params p) {
  __shared__ float scratch[kWarps + 1];
  const int64_t n = blockIdx.x;
  const float ss = p.sumsq[n];
  if (!row_active(p, n, ss, p.strength[n])) return;
  float dot = 0.f;  // same order in every block and thread: deterministic
  for (int64_t t = 0; t < p.tiles; ++t) dot += p.part1[n * p.tiles + t];
  const T* h = static_cast<const T*>(p.hidden) + n * p.stride;
  const float rms = rms_of(p, ss);
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.x;
  float part = 0.f;
  if (j < p.d) {
    const float hn = Io<T>::load(h + j) / rms;
    const float v = (p.gv[n * p.d + j] - hn * dot / static_cast<float>(p.d)) / rms;
    p.gv[n * p.d + j] = v;
    part = v * v;
  }
  part = block_sum(part, scratch);
  if (threadIdx.x == 0) p.part2[n * p.tiles + blockIdx.y] = part;
}

// nrm = sqrt(sum(v*v)) of the row v[0, d), or, when that is below kTinyNorm (uniform over the
// block: every thread holds the same nrm), the norm of v * 2^100 scaled back, summed by the
// block in a fixed order (the same value in every block of the row). Every thread calls it.
__device__ float tiny_norm_fix(float nrm, const float* v, int64_t d, float* scratch) {
  if (!(nrm < kTinyNorm)) return nrm;
  float part = 0.f;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) {
    const float x = v[j] * kNormUp;
    part += x * x;
  }
  return sqrtf(block_sum(part, scratch)) * kNormDown;
}

// ||v|| of row n (k_split_v's partial sums). Every thread of the block calls it.
__device__ __forceinline__ float row_norm(const Params& p, int64_t n, float* scratch) {
  float s = 0.f;
  for (int64_t t = 0; t < p.tiles; ++t) s += p.part2[n * p.tiles + t];
  return tiny_norm_fix(sqrtf(s), p.gv + n * p.d, p.d, scratch);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) k_split_check(Params p) {
  __shared__ float scratch[kWarps + 1];
  const int64_t n = blockIdx.x;
  const float a = p.strength[n];
  if (!row_active(p, n, p.sumsq[n], a)) return;
  const float nrm = row_norm(p, n, scratch);
  const T* h = static_cast<const T*>(p.hidden) + n * p.stride;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.x;
  bool ok = true;
  if (j < p.d) {
    ok = isfinite(Io<T>::round(
        updated(p, Io<T>::load(h + j), p.gv[n * p.d + j], nrm, a, row_vector(p, n), j)));
  }
  ok = __syncthreads_and(ok);
  if (threadIdx.x == 0) p.flag[n * p.tiles + blockIdx.y] = ok ? 1.f : 0.f;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) k_split_write(Params p) {
  __shared__ float scratch[kWarps + 1];
  const int64_t n = blockIdx.x;
  const float a = p.strength[n];
  if (!row_active(p, n, p.sumsq[n], a)) return;
  for (int64_t t = 0; t < p.tiles; ++t) {
    if (p.flag[n * p.tiles + t] == 0.f) {  // not finite: left alone, and the scores say so
      if (blockIdx.y == 0) nan_scores(p, n);  // k_split_g wrote them earlier in the stream
      return;
    }
  }
  const float nrm = row_norm(p, n, scratch);
  T* h = static_cast<T*>(p.hidden) + n * p.stride;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.x;
  if (j < p.d) {
    Io<T>::store(h + j, updated(p, Io<T>::load(h + j), p.gv[n * p.d + j], nrm, a,
                                row_vector(p, n), j));
  }
}

// ---------------------------------------------------------------- fused schedule (prefill)

template <typename T>
__device__ __forceinline__ void fused_row(const Params& p, int64_t n) {
  extern __shared__ float smem[];
  __shared__ float scratch[kWarps + 1];
  const int Cm = p.C * p.m;
  float* coef = smem;
  float* sc = smem + Cm;
  T* h = static_cast<T*>(p.hidden) + n * p.stride;
  float* z = p.z + n * Cm;
  float* gv = p.gv + n * p.d;

  const float ss = row_sumsq<T>(p, h, scratch);
  const float rms = rms_of(p, ss);
  row_z<T>(p, h, rms, 0, Cm, z);
  __syncthreads();  // z (global) written by other warps of this block
  const float a = scores_and_coef(p, n, z, coef, sc, scratch, p.scores + n * p.C, isnan(ss),
                                  nullptr);
  if (!row_active(p, n, ss, a)) return;  // uniform over the block

  float part = 0.f;
  for (int64_t j = threadIdx.x; j < p.d; j += kThreads) {
    const float g = g_column(p, coef, j);
    gv[j] = g;
    part += (Io<T>::load(h + j) / rms) * g;
  }
  const float dot = block_sum(part, scratch);
  part = 0.f;
  for (int64_t j = threadIdx.x; j < p.d; j += kThreads) {  // each thread reads its own gv[j]
    const float hn = Io<T>::load(h + j) / rms;
    const float v = (gv[j] - hn * dot / static_cast<float>(p.d)) / rms;
    gv[j] = v;
    part += v * v;
  }
  const float nrm = tiny_norm_fix(sqrtf(block_sum(part, scratch)), gv, p.d, scratch);
  bool ok = true;
  for (int64_t j = threadIdx.x; j < p.d; j += kThreads) {
    ok = ok && isfinite(Io<T>::round(updated(p, Io<T>::load(h + j), gv[j], nrm, a, p.V, j)));
  }
  if (!__syncthreads_and(ok)) {  // not finite: left alone, and the scores say so
    nan_scores(p, n);  // after the barrier: thread 0's scores_and_coef write is ordered before
    return;
  }
  for (int64_t j = threadIdx.x; j < p.d; j += kThreads) {
    Io<T>::store(h + j, updated(p, Io<T>::load(h + j), gv[j], nrm, a, p.V, j));
  }
}

template <typename T, bool kTable>
__global__ void __launch_bounds__(kThreads) k_fused(Params p) {
  const int64_t n = blockIdx.x;
  if constexpr (kTable) {
    const int64_t f = row_field(p, n);
    if (f < 0) {  // no field (uniform over the block): no compute
      nan_scores(p, n);
      return;
    }
    fused_row<T>(with_field(p, f), n);
  } else {
    fused_row<T>(p, n);
  }
}

// Shared memory of the kernels that hold coef and the scores: C*m + C + 1 floats.
size_t coef_smem_bytes(int C, int m) {
  return (static_cast<size_t>(C) * m + C + 1) * sizeof(float);
}

template <typename T, bool kTable>
cudaError_t launch_typed(const Params& p, cudaStream_t stream, bool fused) {
  const size_t smem = coef_smem_bytes(p.C, p.m);
  if (fused) {
    k_fused<T, kTable><<<dim3(static_cast<unsigned>(p.n)), kThreads, smem, stream>>>(p);
    return cudaGetLastError();
  }
  const int Cm = p.C * p.m;
  // Few rows: one unit per warp spreads A over many blocks; more rows: fewer, fuller blocks.
  const int upb = p.n >= 16 ? 4 * kWarps : kWarps;
  const dim3 grid_z(static_cast<unsigned>(p.n), static_cast<unsigned>((Cm + upb - 1) / upb));
  const dim3 grid_d(static_cast<unsigned>(p.n), static_cast<unsigned>(p.tiles));
  k_split_z<T, kTable><<<grid_z, kThreads, 0, stream>>>(p, upb);
  k_split_g<T, kTable><<<grid_d, kThreads, smem, stream>>>(p);
  k_split_v<T><<<grid_d, kThreads, 0, stream>>>(p);
  k_split_check<T><<<grid_d, kThreads, 0, stream>>>(p);
  k_split_write<T><<<grid_d, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

extern "C" int64_t svf_field_update_workspace_floats(int64_t n, int64_t d, int C, int m,
                                                     int has_target) {
  const int64_t tiles = (d + kTile - 1) / kTile;
  return n + n * static_cast<int64_t>(C) * m + n * d + 3 * n * tiles + (has_target ? n : 0);
}

extern "C" cudaError_t svf_field_table_update_launch(
    void* hidden, int dtype, int64_t n, int64_t d, int64_t row_stride, const float* A,
    const float* B, const float* c, const float* w2, const float* b2, const float* alpha,
    const float* target, float band, const bool* rows, const void* field_ids, int ids_int32,
    const float* vectors, int F, int C, int m, float tau, bool normalize, float eps, float* scores, float* workspace,
    cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n < 0 || d <= 0 || C <= 0 || m <= 0 || hidden == nullptr || workspace == nullptr ||
      A == nullptr || B == nullptr || F <= 0 || (field_ids == nullptr && F != 1) ||
      (target != nullptr && !(band > 0.f)) || (vectors != nullptr && field_ids == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const int64_t tiles = (d + kTile - 1) / kTile;
  const size_t smem = coef_smem_bytes(C, m);
  if (smem > 48 * 1024 || n > 0x7fffffffLL || tiles > 65535) return cudaErrorInvalidValue;
  Params p;
  p.hidden = hidden;
  p.n = n;
  p.d = d;
  p.stride = row_stride;
  p.A = A;
  p.B = B;
  p.c = c;
  p.w2 = w2;
  p.b2 = b2;
  p.V = vectors;
  p.alpha = alpha;
  p.target = target;
  p.band = band;
  p.rows = rows;
  p.ids = field_ids;
  p.ids_i32 = ids_int32 != 0;
  p.F = F;
  p.C = C;
  p.m = m;
  p.tau = tau;
  p.eps = eps;
  p.normalize = normalize;
  p.scores = scores;
  p.tiles = tiles;
  p.sumsq = workspace;
  p.z = p.sumsq + n;
  p.gv = p.z + n * static_cast<int64_t>(C) * m;
  p.part1 = p.gv + n * d;
  p.part2 = p.part1 + n * tiles;
  p.flag = p.part2 + n * tiles;
  p.strength_ws = target != nullptr ? p.flag + n * tiles : nullptr;
  p.strength = target != nullptr ? p.strength_ws : alpha;
  const bool fused = n >= kFusedMinRows;
  const bool table = field_ids != nullptr;
  switch (dtype) {
    case SVF_DTYPE_F32:
      return table ? launch_typed<float, true>(p, stream, fused)
                   : launch_typed<float, false>(p, stream, fused);
    case SVF_DTYPE_BF16:
      return table ? launch_typed<__nv_bfloat16, true>(p, stream, fused)
                   : launch_typed<__nv_bfloat16, false>(p, stream, fused);
    case SVF_DTYPE_F16:
      return table ? launch_typed<__half, true>(p, stream, fused)
                   : launch_typed<__half, false>(p, stream, fused);
    default:
      return cudaErrorInvalidValue;
  }
}
