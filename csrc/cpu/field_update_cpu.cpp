// Fused field update on CPU tensors: the whole of DESIGN.md §3 for every row in one call.
//
// Per row (fp32 arithmetic whatever the storage dtype; see svf_kernels/ops/reference.py):
//   x = float(h); rms = sqrt(sum(x*x)/d + eps); hn = x / rms
//   z = A_flat @ hn + c                  (A_flat = A.reshape(C*m, d))
//   s_i = w2_i . gelu(z_i) + b2_i;  weights = softmax(-s / tau)
//   g = B_flat^T (weights_i * gelu'(z_i) * w2_i)   (B: the direction's matrix; A itself, the
//                                         same pointer, when the caller gives no B)
//   v = (g - hn * dot(hn, g) / d) / rms  (the RMS-norm Jacobian is linear in g, so the softmin
//                                         sum over concepts is taken before projecting)
//   a = alpha[r], or with a target a = alpha[r] * gate (gated_alpha: the soft minimum of the
//                                         scores against target[r], linear over the last band)
//   dir = v / max(||v||, FLT_MIN) or v;  h += a * (dir + s)   (in place, when kept; ||v|| of
//                                         a tiny v is measured on v * 2^100, see kTinyNorm;
//                                         s: the row's field's static vector, 0 without one)
// A row is left bit-identical when rows[r] is False, a == 0, or the input or the new row
// (as stored in T: an fp16/bf16 overflow counts) is not finite. Its scores are still computed,
// except for a row skipped because of non-finite values (non-finite input, or a row that would
// move but whose new row is not finite): all its C scores are NaN.
//
// Field table (field_ids given): A is [F, C, m, d] and row r uses field field_ids[r], i.e. the
// same body with the parameter pointers offset by that field (no ids: field 0 for every row, the
// one-field op). A row whose id lies outside [0, F) is not touched at all: no arithmetic, scores
// NaN, the row bit-identical.
//
// Rows of one field go two at a time: their mat-vecs load each block of the field's matrices
// once for both rows (matvec2, matvec_t2), and each row's sums are formed exactly as for a row
// alone, so a row's result does not depend on the rows beside it.
//
// Parallelism: pairs of rows across threads (at::parallel_for); when there are fewer rows than
// threads and a row is large, the two mat-vecs of each row are split across threads instead
// (units for z, columns for g). Small problems (decode, N = 1) run inline on the calling thread. Inner loops
// are contiguous fp32 loops with `omp simd` reductions, vectorised by the compiler at -O3 for
// the baseline ISA (no -march flags), plus AVX-512 and AVX2/FMA clones of the mat-vecs, the
// activation and the per-row passes over d (sum_squares ... step), chosen at load time.
#include "field_update_cpu.h"

#include "as_float32.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;
// Work (multiply-adds) below which a chunk of rows is not worth a thread hand-off.
constexpr int64_t kMinParallelWork = int64_t{1} << 17;
// ||v|| below kTinyNorm: sum(v*v) may have underflowed (|v_k| < 1e-19 squares to 0 in fp32), so
// the norm is measured again on v * 2^100 (exact) and scaled back: a tiny v is still normalised
// to a unit direction instead of being divided by FLT_MIN.
constexpr float kTinyNorm = 0x1p-50f;
constexpr float kNormUp = 0x1p+100f;
constexpr float kNormDown = 0x1p-100f;

// The parameters of one field: A, B [C*m, d], c, w2 [C*m], b2 [C] (fp32, contiguous; B is A
// itself when the caller gives no separate B), and its static vector V [d] or nullptr (none).
struct Field {
  const float* A;
  const float* B;
  const float* c;
  const float* w2;
  const float* b2;
  const float* V;
};

struct Problem {
  Field f0;  // field 0 (the only one without field_ids); field k is f0 offset by k fields
  int64_t C, m, d;
  float tau, eps;
  bool normalize;
  // Field table: F fields and the per-row ids (one of the two pointers, or neither: all field 0).
  int64_t F;
  const int64_t* ids64;
  const int32_t* ids32;
  // Per-row target scores (NaN: none for that row), or nullptr: no targets; the gate's band.
  const float* target;
  float band;

  // Row r's field id, or -1 when it has none (an id outside [0, F)).
  int64_t field_of(int64_t r) const {
    if (ids64 == nullptr && ids32 == nullptr) return 0;
    const int64_t f = ids64 != nullptr ? ids64[r] : static_cast<int64_t>(ids32[r]);
    return (f >= 0 && f < F) ? f : -1;
  }
  Field field(int64_t f) const {
    const int64_t cm = C * m;
    return Field{f0.A + f * cm * d, f0.B + f * cm * d, f0.c + f * cm, f0.w2 + f * cm,
                 f0.b2 + f * C, f0.V != nullptr ? f0.V + f * d : nullptr};
  }
};

// One row's work vectors: x, hn, g [d], z, act, coef [C*m], s [C].
struct RowScratch {
  float *x, *hn, *g, *z, *act, *coef, *s;
};

// Per-thread work vectors of two rows, carved from one thread-local buffer that only ever
// grows: no heap allocation per call (decoding calls this once per layer per token).
struct Scratch {
  RowScratch rows[2];
  explicit Scratch(const Problem& p) {
    thread_local std::vector<float> buffer;
    const int64_t nu = p.C * p.m, per_row = 3 * p.d + 3 * nu + p.C;
    if (buffer.size() < static_cast<size_t>(2 * per_row)) buffer.resize(static_cast<size_t>(2 * per_row));
    for (int64_t r = 0; r < 2; ++r) {
      float* x = buffer.data() + r * per_row;
      rows[r] = RowScratch{x, x + p.d, x + 2 * p.d, x + 3 * p.d, x + 3 * p.d + nu,
                           x + 3 * p.d + 2 * nu, x + 3 * p.d + 3 * nu};
    }
  }
};

// The mat-vecs carry most of the arithmetic, and the per-row passes over d the rest. On x86-64
// (GCC >= 12 / Clang >= 14) both are also compiled for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 +
// FMA), and the loader picks the clone the running CPU supports; the default clone targets the
// baseline ISA, so the build still runs anywhere.
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12) || \
     (defined(__clang__) && __clang_major__ >= 14))
#define SVF_MATVEC_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SVF_MATVEC_CLONES
#endif

inline float load(float v) { return v; }
inline float load(c10::BFloat16 v) { return static_cast<float>(v); }
inline float load(c10::Half v) { return static_cast<float>(v); }

// The smallest magnitude that no longer stores as a finite T (round to nearest even): a new row
// is written only if every |x| < overflow_at<T>() (NaN fails the comparison too).
template <typename T>
constexpr float overflow_at();
template <>
constexpr float overflow_at<float>() { return INFINITY; }
template <>
constexpr float overflow_at<c10::BFloat16>() { return 0x1.ffp+127f; }  // bf16 max + half an ulp
template <>
constexpr float overflow_at<c10::Half>() { return 0x1.ffep+15f; }  // 65520 = fp16 max + half an ulp

inline void nan_scores(float* scores, int64_t C) {
  for (int64_t i = 0; i < C; ++i) scores[i] = NAN;
}

// The row's strength with a target: alpha * gate, gate = clamp(sign(alpha) (target - s_mix) /
// band, 0, 1), s_mix = smin - tau log(sum_i exp(-(s_i - smin) / tau)) (C = 1: exactly s_1; a
// +inf score weighs 0). A NaN target (no target for the row) or alpha == 0: alpha itself; a
// gate of 0: 0. NaN propagates (a NaN gate gives a NaN strength: the update is not finite).
inline float gated_alpha(float a, const float* s, int64_t C, float tau, float target,
                         float band) {
  if (std::isnan(target) || a == 0.f) return a;
  float smin = s[0];
  for (int64_t i = 1; i < C; ++i) smin = std::fmin(smin, s[i]);
  float total = 0.f;
  for (int64_t i = 0; i < C; ++i) total += std::exp(-(s[i] - smin) / tau);
  const float smix = smin - tau * std::log(total);
  const float sgn = a > 0.f ? 1.f : (a < 0.f ? -1.f : a);
  const float t = sgn * (target - smix) / band;
  const float gate = t < 0.f ? 0.f : (t > 1.f ? 1.f : t);
  return gate == 0.f ? 0.f : a * gate;
}

// exp(x) for |x| <= 88, in plain arithmetic so that loops of it vectorise: 2^n p(r), n = x /
// ln 2 rounded, r = x - n ln 2 in two steps (Cody-Waite), p Cephes' degree-6 polynomial for
// expf (about 1 ulp).
inline float exp_poly(float x) {
  const float t = x * 1.44269504088896341f;
  const int32_t n = static_cast<int32_t>(t + std::copysign(0.5f, t));
  const float nf = static_cast<float>(n);
  float r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Per unit u: act[u] = w2[u] * gelu(z[u]) and coef[u] = w2[u] * gelu'(z[u]). With y = K (z + c
// z^3) and s = sigmoid(2 y) = (1 + tanh(y)) / 2: gelu(z) = z s and gelu'(z) = s + 2 K (1 + 3 c
// z^2) z s (1 - s), the tanh form of the reference without its cancellation in 1 - tanh^2.
// 2y is clamped to 40 above (s is 1 in fp32 from 2y = 17 on) and e = 0 below -87 (where
// exp_poly stops: s underflows); NaN stays NaN.
SVF_MATVEC_CLONES void gelu_terms(const float* __restrict__ z, const float* __restrict__ w2,
                                  float* __restrict__ act, float* __restrict__ coef, int64_t n) {
#pragma omp simd
  for (int64_t u = 0; u < n; ++u) {
    const float zz = z[u];
    const float y2 = 2.f * kGeluK * (zz + kGeluC * zz * zz * zz);
    // NaN first: min and max keep it, and NaN * 0 is NaN
    const float e = exp_poly(std::max(std::min(y2, 40.f), -87.f)) * static_cast<float>(y2 >= -87.f);
    const float inv = 1.f / (1.f + e);
    const float sig = e * inv;
    act[u] = w2[u] * (zz * sig);
    coef[u] = w2[u] * (sig + 2.f * kGeluK * (1.f + 3.f * kGeluC * zz * zz) * zz * sig * inv);
  }
}

// z[u] = A[u, :] . hn + c[u] for u in [u0, u1).
SVF_MATVEC_CLONES void matvec(const float* __restrict__ A, const float* __restrict__ hn,
            const float* __restrict__ c, float* __restrict__ z, int64_t u0, int64_t u1,
            int64_t d) {
  int64_t u = u0;
  for (; u + 4 <= u1; u += 4) {
    const float* __restrict__ a0 = A + u * d;
    const float* __restrict__ a1 = a0 + d;
    const float* __restrict__ a2 = a1 + d;
    const float* __restrict__ a3 = a2 + d;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t k = 0; k < d; ++k) {
      const float h = hn[k];
      s0 += a0[k] * h;
      s1 += a1[k] * h;
      s2 += a2[k] * h;
      s3 += a3[k] * h;
    }
    z[u] = s0 + c[u];
    z[u + 1] = s1 + c[u + 1];
    z[u + 2] = s2 + c[u + 2];
    z[u + 3] = s3 + c[u + 3];
  }
  for (; u < u1; ++u) {
    const float* __restrict__ a0 = A + u * d;
    float s0 = 0.f;
#pragma omp simd reduction(+ : s0)
    for (int64_t k = 0; k < d; ++k) s0 += a0[k] * hn[k];
    z[u] = s0 + c[u];
  }
}

// g[k] = sum_u coef[u] * A[u, k] for k in [k0, k1).
SVF_MATVEC_CLONES void matvec_t(const float* __restrict__ A, const float* __restrict__ coef,
              float* __restrict__ g, int64_t nu, int64_t d, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) g[k] = 0.f;
  int64_t u = 0;
  for (; u + 4 <= nu; u += 4) {
    const float* __restrict__ a0 = A + u * d;
    const float* __restrict__ a1 = a0 + d;
    const float* __restrict__ a2 = a1 + d;
    const float* __restrict__ a3 = a2 + d;
    const float c0 = coef[u], c1 = coef[u + 1], c2 = coef[u + 2], c3 = coef[u + 3];
#pragma omp simd
    for (int64_t k = k0; k < k1; ++k) {
      g[k] += c0 * a0[k] + c1 * a1[k] + c2 * a2[k] + c3 * a3[k];
    }
  }
  for (; u < nu; ++u) {
    const float* __restrict__ a0 = A + u * d;
    const float c0 = coef[u];
#pragma omp simd
    for (int64_t k = k0; k < k1; ++k) g[k] += c0 * a0[k];
  }
}

// matvec for two rows at once: each block of A is loaded once for both. Each row's sums are
// formed exactly as matvec forms them (the same blocks of four units, the same reductions), so
// a row's z does not depend on the row beside it.
SVF_MATVEC_CLONES void matvec2(const float* __restrict__ A, const float* __restrict__ hn0,
                               const float* __restrict__ hn1, const float* __restrict__ c,
                               float* __restrict__ z0, float* __restrict__ z1, int64_t nu,
                               int64_t d) {
  int64_t u = 0;
  for (; u + 4 <= nu; u += 4) {
    const float* __restrict__ a0 = A + u * d;
    const float* __restrict__ a1 = a0 + d;
    const float* __restrict__ a2 = a1 + d;
    const float* __restrict__ a3 = a2 + d;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, t0 = 0.f, t1 = 0.f, t2 = 0.f, t3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3, t0, t1, t2, t3)
    for (int64_t k = 0; k < d; ++k) {
      const float h = hn0[k], q = hn1[k];
      s0 += a0[k] * h;
      s1 += a1[k] * h;
      s2 += a2[k] * h;
      s3 += a3[k] * h;
      t0 += a0[k] * q;
      t1 += a1[k] * q;
      t2 += a2[k] * q;
      t3 += a3[k] * q;
    }
    z0[u] = s0 + c[u];
    z0[u + 1] = s1 + c[u + 1];
    z0[u + 2] = s2 + c[u + 2];
    z0[u + 3] = s3 + c[u + 3];
    z1[u] = t0 + c[u];
    z1[u + 1] = t1 + c[u + 1];
    z1[u + 2] = t2 + c[u + 2];
    z1[u + 3] = t3 + c[u + 3];
  }
  for (; u < nu; ++u) {
    const float* __restrict__ a0 = A + u * d;
    float s0 = 0.f, t0 = 0.f;
#pragma omp simd reduction(+ : s0, t0)
    for (int64_t k = 0; k < d; ++k) {
      s0 += a0[k] * hn0[k];
      t0 += a0[k] * hn1[k];
    }
    z0[u] = s0 + c[u];
    z1[u] = t0 + c[u];
  }
}

// matvec_t for two rows at once (every g[k] is the sum matvec_t forms for its row).
SVF_MATVEC_CLONES void matvec_t2(const float* __restrict__ A, const float* __restrict__ coef0,
                                 const float* __restrict__ coef1, float* __restrict__ g0,
                                 float* __restrict__ g1, int64_t nu, int64_t d) {
  for (int64_t k = 0; k < d; ++k) g0[k] = g1[k] = 0.f;
  int64_t u = 0;
  for (; u + 4 <= nu; u += 4) {
    const float* __restrict__ a0 = A + u * d;
    const float* __restrict__ a1 = a0 + d;
    const float* __restrict__ a2 = a1 + d;
    const float* __restrict__ a3 = a2 + d;
    const float c0 = coef0[u], c1 = coef0[u + 1], c2 = coef0[u + 2], c3 = coef0[u + 3];
    const float e0 = coef1[u], e1 = coef1[u + 1], e2 = coef1[u + 2], e3 = coef1[u + 3];
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) {
      g0[k] += c0 * a0[k] + c1 * a1[k] + c2 * a2[k] + c3 * a3[k];
      g1[k] += e0 * a0[k] + e1 * a1[k] + e2 * a2[k] + e3 * a3[k];
    }
  }
  for (; u < nu; ++u) {
    const float* __restrict__ a0 = A + u * d;
    const float c0 = coef0[u], e0 = coef1[u];
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) {
      g0[k] += c0 * a0[k];
      g1[k] += e0 * a0[k];
    }
  }
}

// sum(x * x), and 0 iff every x is finite (x * 0 is NaN otherwise).
SVF_MATVEC_CLONES void sum_squares(const float* __restrict__ x, int64_t d, float* ss_out,
                                   float* fin_out) {
  float ss = 0.f, fin = 0.f;
#pragma omp simd reduction(+ : ss, fin)
  for (int64_t k = 0; k < d; ++k) {
    ss += x[k] * x[k];
    fin += x[k] * 0.f;
  }
  *ss_out = ss;
  *fin_out = fin;
}

// hn = x / rms.
SVF_MATVEC_CLONES void divide(const float* __restrict__ x, float rms, float* __restrict__ hn,
                              int64_t d) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) hn[k] = x[k] / rms;
}

// g = (g - hn * dot(hn, g) / d) / rms: g through the RMS-norm Jacobian.
SVF_MATVEC_CLONES void project(const float* __restrict__ hn, float* __restrict__ g, float rms,
                               int64_t d) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t k = 0; k < d; ++k) dot += hn[k] * g[k];
  const float proj = dot / static_cast<float>(d);
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) g[k] = (g[k] - hn[k] * proj) / rms;
}

// g = g / max(||g||, FLT_MIN), ||g|| of a tiny g measured on g * 2^100 (kTinyNorm).
SVF_MATVEC_CLONES void unit_direction(float* __restrict__ g, int64_t d) {
  float nn = 0.f;
#pragma omp simd reduction(+ : nn)
  for (int64_t k = 0; k < d; ++k) nn += g[k] * g[k];
  float nrm = std::sqrt(nn);
  if (nrm < kTinyNorm) {  // rare: keep the common path as it was
    float ns = 0.f;
#pragma omp simd reduction(+ : ns)
    for (int64_t k = 0; k < d; ++k) ns += (g[k] * kNormUp) * (g[k] * kNormUp);
    nrm = std::sqrt(ns) * kNormDown;
  }
  const float den = std::max(nrm, FLT_MIN);  // v = 0: den = FLT_MIN, direction 0
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) g[k] = g[k] / den;
}

// g += V.
SVF_MATVEC_CLONES void add_vector(float* __restrict__ g, const float* __restrict__ V, int64_t d) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) g[k] += V[k];
}

// x += a * g; returns how many entries of the new x are not below lim in magnitude (NaN counts).
SVF_MATVEC_CLONES int64_t step(float* __restrict__ x, const float* __restrict__ g, float a,
                               float lim, int64_t d) {
  int64_t bad = 0;
#pragma omp simd reduction(+ : bad)
  for (int64_t k = 0; k < d; ++k) {
    x[k] = x[k] + a * g[k];
    bad += !(std::fabs(x[k]) < lim);
  }
  return bad;
}

// One row, or two rows of one field (`count` 2: their mat-vecs read the field's matrices once
// for both; each row's arithmetic is the one-row arithmetic). `inner_parallel` (one row) splits
// the two mat-vecs across threads (few large rows). `target`: the rows' target scores (read only
// when p.target is set).
template <typename T>
void update_rows(const Problem& p, const Field& f, int64_t count, T* const* h, const float* alpha,
                 const float* target, const bool* active, float* const* scores, Scratch& scratch,
                 bool inner_parallel) {
  const int64_t d = p.d, C = p.C, m = p.m, nu = C * m;
  float rms[2], a[2];
  bool live[2] = {false, false};
  for (int64_t r = 0; r < count; ++r) {
    const RowScratch& w = scratch.rows[r];
    // x = float(h); sum of squares; `fin` stays 0 iff every x is finite.
    float ss, fin;
    for (int64_t k = 0; k < d; ++k) w.x[k] = load(h[r][k]);
    sum_squares(w.x, d, &ss, &fin);
    rms[r] = std::sqrt(ss / static_cast<float>(d) + p.eps);
    divide(w.x, rms[r], w.hn, d);
    live[r] = fin == 0.f;  // a non-finite input is skipped (scores NaN, below)
  }

  if (count == 2) {
    matvec2(f.A, scratch.rows[0].hn, scratch.rows[1].hn, f.c, scratch.rows[0].z,
            scratch.rows[1].z, nu, d);
  } else if (inner_parallel) {
    const RowScratch& w = scratch.rows[0];
    at::parallel_for(0, nu, 8, [&](int64_t u0, int64_t u1) { matvec(f.A, w.hn, f.c, w.z, u0, u1, d); });
  } else {
    matvec(f.A, scratch.rows[0].hn, f.c, scratch.rows[0].z, 0, nu, d);
  }

  for (int64_t r = 0; r < count; ++r) {
    const RowScratch& w = scratch.rows[r];
    // Scores and act'(z) * w2, per concept.
    gelu_terms(w.z, f.w2, w.act, w.coef, nu);
    for (int64_t i = 0; i < C; ++i) {
      float s = 0.f;
      for (int64_t j = i * m; j < (i + 1) * m; ++j) s += w.act[j];
      w.s[i] = s + f.b2[i];
      scores[r][i] = w.s[i];
    }
    if (!live[r]) {  // non-finite input: skipped, and the scores say so
      nan_scores(scores[r], C);
      continue;
    }
    a[r] = alpha[r];
    if (!active[r]) {
      live[r] = false;
      continue;
    }
    if (p.target != nullptr) a[r] = gated_alpha(a[r], w.s, C, p.tau, target[r], p.band);
    if (a[r] == 0.f) {
      live[r] = false;
      continue;
    }
    // Softmin weights, folded into the coefficients.
    float mx = -INFINITY;
    for (int64_t i = 0; i < C; ++i) mx = std::max(mx, -w.s[i] / p.tau);
    float tot = 0.f;
    for (int64_t i = 0; i < C; ++i) {
      w.s[i] = std::exp(-w.s[i] / p.tau - mx);
      tot += w.s[i];
    }
    for (int64_t i = 0; i < C; ++i) {
      const float wi = w.s[i] / tot;
      for (int64_t j = i * m; j < (i + 1) * m; ++j) w.coef[j] *= wi;
    }
  }

  if (live[0] && count == 2 && live[1]) {
    matvec_t2(f.B, scratch.rows[0].coef, scratch.rows[1].coef, scratch.rows[0].g,
              scratch.rows[1].g, nu, d);
  } else {
    for (int64_t r = 0; r < count; ++r) {
      if (!live[r]) continue;
      const RowScratch& w = scratch.rows[r];
      if (inner_parallel) {
        at::parallel_for(0, d, 256, [&](int64_t k0, int64_t k1) { matvec_t(f.B, w.coef, w.g, nu, d, k0, k1); });
      } else {
        matvec_t(f.B, w.coef, w.g, nu, d, 0, d);
      }
    }
  }

  for (int64_t r = 0; r < count; ++r) {
    if (!live[r]) continue;
    const RowScratch& w = scratch.rows[r];
    float* __restrict__ x = w.x;
    const float* __restrict__ hn = w.hn;
    float* __restrict__ g = w.g;
    project(hn, g, rms[r], d);  // through the RMS-norm Jacobian
    if (p.normalize) unit_direction(g, d);
    if (f.V != nullptr) add_vector(g, f.V, d);  // the field's static vector joins the direction
    // New row (fp32); written back only if every entry stores as a finite T.
    if (step(x, g, a[r], overflow_at<T>(), d) != 0) {  // the update would not be finite: skipped, and the scores say so
      nan_scores(scores[r], C);
      continue;
    }
    T* __restrict__ out = h[r];
    for (int64_t k = 0; k < d; ++k) out[k] = static_cast<T>(x[k]);
  }
}

// Rows r0 and r1 of one field (r1 < 0: r0 alone).
template <typename T>
inline void some_rows(const Problem& p, T* base, int64_t stride, int64_t r0, int64_t r1,
                      const float* alpha, const bool* rows, float* scores, Scratch& w,
                      bool inner_parallel) {
  const int64_t idx[2] = {r0, r1};
  const int64_t count = r1 < 0 ? 1 : 2;
  T* h[2];
  float al[2], tg[2];
  bool act[2];
  float* sc[2];
  for (int64_t r = 0; r < count; ++r) {
    h[r] = base + idx[r] * stride;
    al[r] = alpha[idx[r]];
    tg[r] = p.target != nullptr ? p.target[idx[r]] : 0.f;
    act[r] = rows == nullptr || rows[idx[r]];
    sc[r] = scores + idx[r] * p.C;
  }
  update_rows<T>(p, p.field(p.field_of(r0)), count, h, al, tg, act, sc, w, inner_parallel);
}

template <typename T>
void run(const Problem& p, at::Tensor& hidden, const float* alpha, const bool* rows,
         float* scores) {
  const int64_t n = hidden.size(0);
  const int64_t stride = hidden.stride(0);
  T* base = hidden.data_ptr<T>();
  const int64_t row_work = std::max<int64_t>(1, 2 * p.C * p.m * p.d);
  const int64_t threads = at::get_num_threads();
  // The rows of each field (a stable counting sort; a row with no field: NaN scores, no work),
  // then taken two at a time. Thread-local, grown only: no heap allocation per call.
  thread_local std::vector<int64_t> order, counts;
  order.resize(static_cast<size_t>(n));
  counts.assign(static_cast<size_t>(p.F + 1), 0);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t f = p.field_of(r);
    if (f < 0) {
      nan_scores(scores + r * p.C, p.C);
    } else {
      ++counts[static_cast<size_t>(f + 1)];
    }
  }
  for (int64_t f = 1; f <= p.F; ++f) counts[static_cast<size_t>(f)] += counts[static_cast<size_t>(f - 1)];
  const int64_t steered = counts[static_cast<size_t>(p.F)];
  for (int64_t r = 0; r < n; ++r) {
    const int64_t f = p.field_of(r);
    if (f >= 0) order[static_cast<size_t>(counts[static_cast<size_t>(f)]++)] = r;
  }
  const int64_t* ord = order.data();
  const bool inner = threads > 1 && steered < threads && row_work >= 4 * kMinParallelWork &&
                     !at::in_parallel_region();
  if (inner) {
    Scratch w(p);
    for (int64_t k = 0; k < steered; ++k) some_rows<T>(p, base, stride, ord[k], -1, alpha, rows, scores, w, true);
    return;
  }
  // Work item k: rows ord[2k] and ord[2k + 1] when both belong to one field, else ord[2k] and
  // ord[2k + 1] one after the other.
  const int64_t items = (steered + 1) / 2;
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / (2 * row_work));
  at::parallel_for(0, items, grain, [&](int64_t k0, int64_t k1) {
    Scratch w(p);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t a = ord[2 * k];
      const int64_t b = 2 * k + 1 < steered ? ord[2 * k + 1] : -1;
      if (b >= 0 && p.field_of(a) == p.field_of(b)) {
        some_rows<T>(p, base, stride, a, b, alpha, rows, scores, w, false);
      } else {
        some_rows<T>(p, base, stride, a, -1, alpha, rows, scores, w, false);
        if (b >= 0) some_rows<T>(p, base, stride, b, -1, alpha, rows, scores, w, false);
      }
    }
  });
}

}  // namespace

using svf::as_f32;

at::Tensor field_update_cpu(at::Tensor hidden, at::Tensor A, at::Tensor c, at::Tensor w2,
                            at::Tensor b2, at::Tensor alpha, double tau, bool normalize,
                            double eps, c10::optional<at::Tensor> rows,
                            c10::optional<at::Tensor> field_ids, c10::optional<at::Tensor> B,
                            c10::optional<at::Tensor> target, double band,
                            c10::optional<at::Tensor> vectors) {
  TORCH_CHECK(hidden.device().is_cpu(), "field_update_cpu: hidden must be a CPU tensor");
  TORCH_CHECK(hidden.dim() == 2, "field_update_cpu: hidden must be [N, d], got ", hidden.sizes());
  const auto st = hidden.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf,
              "field_update_cpu: hidden must be float32, bfloat16 or float16, got ", st,
              " (float64 goes to the torch reference backend)");
  const int64_t n = hidden.size(0), d = hidden.size(1);
  TORCH_CHECK(hidden.stride(1) == 1 || d <= 1,
              "field_update_cpu: hidden rows must be contiguous in the last dimension");
  const bool table = field_ids.has_value() && field_ids->defined();
  // The table's leading dimension F; without field_ids the one field is "field 0 of 1".
  const int64_t lead = table ? 1 : 0;
  if (table) {
    TORCH_CHECK(A.dim() == 4 && A.size(3) == d, "field_update_cpu: with field_ids, A must be [F, C, m, ",
                d, "], got ", A.sizes());
  } else {
    TORCH_CHECK(A.dim() == 3 && A.size(2) == d, "field_update_cpu: A must be [C, m, ", d, "], got ",
                A.sizes());
  }
  const int64_t F = table ? A.size(0) : 1, C = A.size(lead), m = A.size(lead + 1);
  TORCH_CHECK(F >= 1 && C >= 1 && m >= 1, "field_update_cpu: A must have F, C, m >= 1, got ",
              A.sizes());
  TORCH_CHECK(c.numel() == F * C * m && w2.numel() == F * C * m && b2.numel() == F * C,
              table ? "field_update_cpu: c, w2 must be [F, C, m] and b2 [F, C]"
                    : "field_update_cpu: c, w2 must be [C, m] and b2 [C]");
  TORCH_CHECK(alpha.numel() == n, "field_update_cpu: alpha must be [N]");
  for (const at::Tensor* t : {&A, &c, &w2, &b2, &alpha}) {
    TORCH_CHECK(t->device().is_cpu(), "field_update_cpu: all tensors must be on the CPU");
  }
  TORCH_CHECK(tau > 0, "field_update_cpu: tau must be > 0");
  const bool has_b = B.has_value() && B->defined();
  if (has_b) {
    TORCH_CHECK(B->sizes() == A.sizes() && B->device().is_cpu(),
                "field_update_cpu: B must have the shape of A (", A.sizes(), ") on the CPU");
  }
  const bool has_target = target.has_value() && target->defined();
  if (has_target) {
    TORCH_CHECK(target->numel() == n && target->device().is_cpu(),
                "field_update_cpu: target must be a [N] tensor on the CPU");
    TORCH_CHECK(std::isfinite(band) && band > 0, "field_update_cpu: band must be finite and > 0");
  }

  const bool has_vectors = vectors.has_value() && vectors->defined();
  if (has_vectors) {
    TORCH_CHECK(table && vectors->dim() == 2 && vectors->size(0) == F && vectors->size(1) == d &&
                    vectors->device().is_cpu(),
                "field_update_cpu: vectors must be [F, d] = [", F, ", ", d,
                "] on the CPU and come with field_ids, got ", vectors->sizes());
  }

  at::Tensor rows_b;
  const bool* rows_ptr = nullptr;
  if (rows.has_value() && rows->defined()) {
    TORCH_CHECK(!table, "field_update_cpu: rows and field_ids are exclusive (use id -1 instead)");
    TORCH_CHECK(rows->scalar_type() == at::kBool && rows->numel() == n && rows->device().is_cpu(),
                "field_update_cpu: rows must be a [N] bool mask on the CPU");
    rows_b = rows->contiguous();
    rows_ptr = rows_b.data_ptr<bool>();
  }
  at::Tensor ids_c;
  const int64_t* ids64 = nullptr;
  const int32_t* ids32 = nullptr;
  if (table) {
    const auto it = field_ids->scalar_type();
    TORCH_CHECK((it == at::kLong || it == at::kInt) && field_ids->numel() == n &&
                    field_ids->device().is_cpu(),
                "field_update_cpu: field_ids must be a [N] int64 or int32 tensor on the CPU");
    ids_c = field_ids->contiguous();
    if (it == at::kLong) {
      ids64 = ids_c.data_ptr<int64_t>();
    } else {
      ids32 = ids_c.data_ptr<int32_t>();
    }
  }
  // Parameters not already contiguous fp32 are converted here, the whole table at every call
  // (F * C * m * d elements): callers that care pass fp32 tables, as the library does.
  const at::Tensor A32 = as_f32(A), c32 = as_f32(c), w232 = as_f32(w2), b232 = as_f32(b2);
  const at::Tensor alpha32 = as_f32(alpha);
  // Without B the direction reads A itself (the same pointer: no extra memory traffic).
  const at::Tensor B32 = has_b ? as_f32(*B) : A32;
  const at::Tensor target32 = has_target ? as_f32(*target) : at::Tensor();
  const at::Tensor vectors32 = has_vectors ? as_f32(*vectors) : at::Tensor();
  at::Tensor scores = at::empty({n, C}, hidden.options().dtype(at::kFloat));
  if (n == 0) return scores;

  const Problem p{Field{A32.data_ptr<float>(), B32.data_ptr<float>(), c32.data_ptr<float>(),
                        w232.data_ptr<float>(), b232.data_ptr<float>(),
                        has_vectors ? vectors32.data_ptr<float>() : nullptr},
                  C, m, d, static_cast<float>(tau), static_cast<float>(eps), normalize,
                  F, ids64, ids32, has_target ? target32.data_ptr<float>() : nullptr,
                  static_cast<float>(band)};
  const float* alpha_ptr = alpha32.data_ptr<float>();
  float* scores_ptr = scores.data_ptr<float>();
  switch (st) {
    case at::kFloat:
      run<float>(p, hidden, alpha_ptr, rows_ptr, scores_ptr);
      break;
    case at::kBFloat16:
      run<c10::BFloat16>(p, hidden, alpha_ptr, rows_ptr, scores_ptr);
      break;
    default:
      run<c10::Half>(p, hidden, alpha_ptr, rows_ptr, scores_ptr);
      break;
  }
  return scores;
}
