// Native CPU kernels of adapterkit's named ops, for the tfjs wasm backend in Node.
//
// Every tensor argument is a typed array viewing the wasm heap (inputs and the output the JS side
// allocated with backend.makeOutput), so nothing is copied in or out. Matrix products use gemm.h (frozen
// weights packed once, see packWeights); everything around them — RMS norm, adapter terms, activations,
// residuals, softmax with position bias and masks — runs here, multi-threaded with OpenMP over rows or
// (row, head). Semantics are those of packages/kernels/src/reference.ts; the JS side checks every shape.

#define NAPI_VERSION 8
#include <node_api.h>

#include <malloc.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gemm.h"

namespace {

constexpr float kMask = -1e9f;
// Heads up to this size take direct loops in attention instead of a GEMM per (row, head).
constexpr int kSmallHead = 32;
int g_threads = 1;

// Scratch memory reused across calls (the JS thread calls one kernel at a time). Fresh allocations of this
// size come from mmap: every call would page-fault its temporaries in again.
struct Scratch {
  std::vector<float> data;
  float* get(size_t n) {
    if (data.size() < n) data.resize(n);
    return data.data();
  }
};
Scratch g_normed, g_scaled, g_pre, g_down, g_base, g_dpre, g_dbase, g_ddown, g_dxn, g_inv, g_sdown;

// ------------------------------------------------------------------------------------------ N-API helpers
struct Args {
  napi_env env;
  size_t argc = 0;
  napi_value argv[40];
  bool ok = true;
};

Args args_of(napi_env env, napi_callback_info info) {
  Args a;
  a.env = env;
  a.argc = 40;
  napi_get_cb_info(env, info, &a.argc, a.argv, nullptr, nullptr);
  return a;
}

void fail(napi_env env, const char* message) { napi_throw_error(env, "ADAPTERKIT_NATIVE", message); }

template <typename T>
T* array_arg(Args& a, size_t i, bool optional = false) {
  if (i >= a.argc) {
    if (!optional) a.ok = false;
    return nullptr;
  }
  napi_valuetype vt;
  napi_typeof(a.env, a.argv[i], &vt);
  if (vt == napi_null || vt == napi_undefined) {
    if (!optional) a.ok = false;
    return nullptr;
  }
  bool is_typed = false;
  napi_is_typedarray(a.env, a.argv[i], &is_typed);
  if (!is_typed) {
    a.ok = false;
    return nullptr;
  }
  napi_typedarray_type type;
  size_t length;
  void* data;
  napi_value buffer;
  size_t offset;
  napi_get_typedarray_info(a.env, a.argv[i], &type, &length, &data, &buffer, &offset);
  return static_cast<T*>(data);
}

int64_t int_arg(Args& a, size_t i) {
  int64_t v = 0;
  if (i >= a.argc || napi_get_value_int64(a.env, a.argv[i], &v) != napi_ok) a.ok = false;
  return v;
}

double num_arg(Args& a, size_t i) {
  double v = 0;
  if (i >= a.argc || napi_get_value_double(a.env, a.argv[i], &v) != napi_ok) a.ok = false;
  return v;
}

bool bool_arg(Args& a, size_t i) {
  bool v = false;
  if (i >= a.argc || napi_get_value_bool(a.env, a.argv[i], &v) != napi_ok) a.ok = false;
  return v;
}

napi_value undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

// ------------------------------------------------------------------------------------------ GEMM
// Per-thread scratch for operands packed on the fly.
thread_local std::vector<float> t_packedB, t_rowsA;

// c (+)= op(a)·op(b) for operands not packed in advance (row-major, leading dimensions as BLAS).
void gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  if (m == 0 || n == 0) return;
  if (ta) {  // Aᵀ given as [k, m]: rows of A made contiguous
    t_rowsA.resize((size_t)m * k);
    for (int kk = 0; kk < k; kk++)
      for (int i = 0; i < m; i++) t_rowsA[(size_t)i * k + kk] = a[(size_t)kk * lda + i];
    a = t_rowsA.data();
    lda = k;
  }
  t_packedB.resize(akgemm::packed_size(k, n));
  akgemm::pack(b, ldb, tb, k, n, t_packedB.data());
  akgemm::gemm_packed(m, n, k, a, lda, t_packedB.data(), c, ldc, beta != 0.f, g_threads);
}

// A frozen weight [K, N] packed once (packWeights), owned by a JS external.
struct PackedWeights {
  int K, N;
  std::vector<float> data;
};

void finalize_packed(napi_env, void* data, void*) { delete static_cast<PackedWeights*>(data); }

// ------------------------------------------------------------------------------------------ activations
enum Activation { kLinear = 0, kRelu = 1, kGelu = 2, kGeluNew = 3, kSilu = 4 };

// exp and erf as plain arithmetic, so that `omp simd` loops vectorise them (libm's calls do not).
// expf: Cephes' range reduction and polynomial (≈ 1 ulp); arguments clamped to float's range.
inline float fast_expf(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return e * scale;
}

// erf: Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7).
inline float fast_erff(float x) {
  const float a = std::fabs(x);
  const float t = 1.f / (1.f + 0.3275911f * a);
  const float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  const float y = 1.f - poly * fast_expf(-a * a);
  return x < 0.f ? -y : y;
}

// 0.5·(1 + tanh(u)) = 1 / (1 + e^(−2u)), so gelu_new is one exp and a division.
template <int ACT>
inline float activate(float x) {
  if constexpr (ACT == kRelu) return x > 0.f ? x : 0.f;
  if constexpr (ACT == kGelu) return 0.5f * x * (1.f + fast_erff(x * 0.70710678118654752f));
  if constexpr (ACT == kGeluNew) return x / (1.f + fast_expf(-2.f * 0.7978845608028654f * (x + 0.044715f * x * x * x)));
  if constexpr (ACT == kSilu) return x / (1.f + fast_expf(-x));
  return x;
}

// Derivative of an activation at its input (for the backward passes).
/**
 * One row of attention weights in place, shared by the forward and backward passes: scores + position bias
 * (table[index·heads + h], index < 0: none) + additive mask + causal mask (key slot j − p past `lastKey`),
 * then softmax. The backward recomputes the forward's weights with exactly this.
 */
inline void biased_softmax_row(float* s, const int32_t* idx, const float* table, int heads, int h, const float* mrow, bool causal, int p, int lastKey, int cols) {
  float mx = -3.4e38f;
  for (int j = 0; j < cols; j++) {
    float v = s[j];
    if (idx && idx[j] >= 0) v += table[idx[j] * heads + h];
    if (mrow) v += mrow[j];
    if (causal && j >= p && (j - p) > lastKey) v += kMask;
    s[j] = v;
    mx = std::max(mx, v);
  }
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < cols; j++) sum += (s[j] = fast_expf(s[j] - mx));
  const float inv = 1.f / sum;
  for (int j = 0; j < cols; j++) s[j] *= inv;
}

inline float activate_grad(int act, float x) {
  switch (act) {
    case kRelu:
      return x > 0.f ? 1.f : 0.f;
    case kGelu: {
      const float pdf = 0.3989422804014327f * std::exp(-0.5f * x * x);
      return 0.5f * (1.f + fast_erff(x * 0.70710678118654752f)) + x * pdf;
    }
    case kGeluNew: {
      const float c = 0.7978845608028654f;
      const float t = std::tanh(c * (x + 0.044715f * x * x * x));
      return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * c * (1.f + 3.f * 0.044715f * x * x);
    }
    case kSilu: {
      const float sg = 1.f / (1.f + std::exp(-x));
      return sg * (1.f + x * (1.f - sg));
    }
    default:
      return 1.f;
  }
}

inline float activate_value(int act, float x) {
  switch (act) {
    case kRelu: return activate<kRelu>(x);
    case kGelu: return activate<kGelu>(x);
    case kGeluNew: return activate<kGeluNew>(x);
    case kSilu: return activate<kSilu>(x);
    default: return x;
  }
}

// One row of the linear's epilogue: o = act(y) (gated: act(y₀) ⊙ y₁) + residual. Specialised per
// activation and residual so that the loop has no branch and no conditional load (a masked load from a
// null pointer costs a fault-suppression assist per vector).
template <int ACT, bool RES>
void epilogue_row(const float* y, const float* res, float* o, int outF, bool gated) {
  if (gated) {
#pragma omp simd
    for (int j = 0; j < outF; j++) o[j] = activate<ACT>(y[j]) * y[outF + j] + (RES ? res[j] : 0.f);
  } else {
#pragma omp simd
    for (int j = 0; j < outF; j++) o[j] = activate<ACT>(y[j]) + (RES ? res[j] : 0.f);
  }
}

template <int ACT>
void epilogue_act(const float* y, const float* res, float* o, int outF, bool gated) {
  if (res) epilogue_row<ACT, true>(y, res, o, outF, gated);
  else epilogue_row<ACT, false>(y, nullptr, o, outF, gated);
}

void epilogue(int act, const float* y, const float* res, float* o, int outF, bool gated) {
  switch (act) {
    case kRelu: return epilogue_act<kRelu>(y, res, o, outF, gated);
    case kGelu: return epilogue_act<kGelu>(y, res, o, outF, gated);
    case kGeluNew: return epilogue_act<kGeluNew>(y, res, o, outF, gated);
    case kSilu: return epilogue_act<kSilu>(y, res, o, outF, gated);
    default: return epilogue_act<kLinear>(y, res, o, outF, gated);
  }
}

// ------------------------------------------------------------------------------------------ ops
// gemm(a, b, out, batch, m, n, k, transA, transB, aBatchStride, bBatchStride): out[i] = op(a[i])·op(b[i]).
// A batch stride of 0 broadcasts that operand.
napi_value BatchMatMul(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* A = array_arg<float>(a, 0);
  const float* B = array_arg<float>(a, 1);
  float* C = array_arg<float>(a, 2);
  const int batch = int_arg(a, 3), m = int_arg(a, 4), n = int_arg(a, 5), k = int_arg(a, 6);
  const bool ta = bool_arg(a, 7), tb = bool_arg(a, 8);
  const int64_t sa = int_arg(a, 9), sb = int_arg(a, 10);
  if (!a.ok) return fail(env, "batchMatMul: bad arguments"), nullptr;
  const int lda = ta ? m : k, ldb = tb ? k : n;
  if (batch == 1) {
    gemm(ta, tb, m, n, k, A, lda, B, ldb, 0.f, C, n);
  } else if (sb == 0 && !ta) {
    // one right-hand side for every batch: a single product over batch·m rows
    gemm(false, tb, batch * m, n, k, A, lda, B, ldb, 0.f, C, n);
  } else {
#pragma omp parallel for schedule(static) num_threads(g_threads) if (batch > 1 && 2.0 * batch * m * n * k > 1e6)
    for (int i = 0; i < batch; i++) gemm(ta, tb, m, n, k, A + i * sa, lda, B + i * sb, ldb, 0.f, C + (int64_t)i * m * n, n);
  }
  return undefined(env);
}

// rmsNorm(x, weight, out, rows, d, eps)
napi_value RmsNorm(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* x = array_arg<float>(a, 0);
  const float* w = array_arg<float>(a, 1);
  float* out = array_arg<float>(a, 2);
  const int64_t rows = int_arg(a, 3);
  const int d = int_arg(a, 4);
  const float eps = num_arg(a, 5);
  if (!a.ok) return fail(env, "rmsNorm: bad arguments"), nullptr;
#pragma omp parallel for schedule(static) num_threads(g_threads) if (rows * d > 65536)
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * d;
    float ss = 0.f;
    for (int j = 0; j < d; j++) ss += xr[j] * xr[j];
    const float inv = 1.f / std::sqrt(ss / d + eps);
    for (int j = 0; j < d; j++) out[r * d + j] = xr[j] * inv * w[j];
  }
  return undefined(env);
}

// packWeights(kernel, K, N, transposed) → an external holding kernel [K, N] in GEMM panels (freed with the
// external); transposed: the kernel is given as [N, K] (Wᵀ of a weight, for backward passes).
napi_value PackWeights(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* w = array_arg<float>(a, 0);
  const int K = int_arg(a, 1), N = int_arg(a, 2);
  const bool transposed = bool_arg(a, 3);
  if (!a.ok || K <= 0 || N <= 0) return fail(env, "packWeights: bad arguments"), nullptr;
  auto* packed = new PackedWeights{K, N, std::vector<float>(akgemm::packed_size(K, N))};
  akgemm::pack(w, transposed ? K : N, transposed, K, N, packed->data.data());
  napi_value external;
  napi_create_external(env, packed, finalize_packed, nullptr, &external);
  napi_adjust_external_memory(env, (int64_t)(packed->data.size() * sizeof(float)), nullptr);
  return external;
}

// linear(x, packedKernel, out, normWeight?, bias?, residual?, loraA?, loraB?, loraScale?, inScale?, outScale?,
//        n, perGroup, in, pre, rank, eps, normScale, activation, gated, loraScaleRows, inScaleRows, outScaleRows)
// x [n, in] (rows n = groups·perGroup; per-row tensors index groups), kernel [in, pre] packed; out [n, pre or pre/2].
napi_value Linear(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* x = array_arg<float>(a, 0);
  PackedWeights* W = nullptr;
  if (a.argc < 2 || napi_get_value_external(env, a.argv[1], reinterpret_cast<void**>(&W)) != napi_ok) a.ok = false;
  float* out = array_arg<float>(a, 2);
  const float* normW = array_arg<float>(a, 3, true);
  const float* bias = array_arg<float>(a, 4, true);
  const float* residual = array_arg<float>(a, 5, true);
  const float* loraA = array_arg<float>(a, 6, true);
  const float* loraB = array_arg<float>(a, 7, true);
  const float* loraS = array_arg<float>(a, 8, true);
  const float* inS = array_arg<float>(a, 9, true);
  const float* outS = array_arg<float>(a, 10, true);
  const int64_t n = int_arg(a, 11), perGroup = int_arg(a, 12);
  const int in = int_arg(a, 13), pre = int_arg(a, 14), rank = int_arg(a, 15);
  const float eps = num_arg(a, 16), normScale = num_arg(a, 17);
  const int act = int_arg(a, 18);
  const bool gated = bool_arg(a, 19);
  const int64_t sRows = int_arg(a, 20), inRows = int_arg(a, 21), outRows = int_arg(a, 22);
  if (!a.ok || n <= 0 || W->K != in || W->N != pre) return fail(env, "linear: bad arguments"), nullptr;
  const int outF = gated ? pre / 2 : pre;
  const int threads = n * (int64_t)std::max(in, pre) > 65536 ? g_threads : 1;
  auto rowOf = [&](int64_t r, int64_t rows) { return rows == 1 ? 0 : r / perGroup; };

  // x̂: the normalised input (or x itself)
  const float* xn = x;
  if (normW) {
    float* normed = g_normed.get(n * in);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
      const float* xr = x + r * in;
      float ss = 0.f;
      for (int j = 0; j < in; j++) ss += xr[j] * xr[j];
      const float inv = normScale / std::sqrt(ss / in + eps);
      float* o = normed + r * in;
      for (int j = 0; j < in; j++) o[j] = xr[j] * inv * normW[j];
    }
    xn = normed;
  }
  // the base projection's input: x̂ ⊙ inScale
  const float* xb = xn;
  if (inS) {
    float* scaledIn = g_scaled.get(n * in);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
      const float* v = inS + rowOf(r, inRows) * in;
      for (int j = 0; j < in; j++) scaledIn[r * in + j] = xn[r * in + j] * v[j];
    }
    xb = scaledIn;
  }
  // the pre-activation: straight into the output when nothing follows that needs it apart
  const bool direct = !gated;
  float* y = direct ? out : g_pre.get(n * pre);
  akgemm::gemm_packed(n, pre, in, xb, in, W->data.data(), y, pre, false, g_threads);
  if (outS) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
      const float* v = outS + rowOf(r, outRows) * pre;
      for (int j = 0; j < pre; j++) y[r * pre + j] *= v[j];
    }
  }
  if (loraA && loraB && rank > 0) {
    float* down = g_down.get(n * rank);
    gemm(false, false, n, rank, in, xn, in, loraA, rank, 0.f, down, rank);
    if (loraS) {
      for (int64_t r = 0; r < n; r++) {
        const float* s = loraS + rowOf(r, sRows) * rank;
        for (int j = 0; j < rank; j++) down[r * rank + j] *= s[j];
      }
    }
    gemm(false, false, n, pre, rank, down, rank, loraB, pre, 1.f, y, pre);
  }
  // bias, activation (or gating), residual
  if (gated || bias || act != kLinear || residual) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
      float* yr = y + r * pre;
      if (bias) {
#pragma omp simd
        for (int j = 0; j < pre; j++) yr[j] += bias[j];
      }
      epilogue(act, yr, residual ? residual + r * outF : nullptr, out + r * outF, outF, gated);
    }
  }
  return undefined(env);
}

// linearBackward(dy, x, packedW, packedWT, normW?, bias?, loraA?, loraB?, loraS?, inS?, outS?,
//                dx?, dA?, dB?, dInS?, dOutS?, dBias?,
//                n, perGroup, in, pre, rank, eps, normScale, activation, gated, sRows, inRows, outRows)
// The gradients of linear (reference: backward.ts linearBackwardReference) for the outputs given.
napi_value LinearBackward(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* dy = array_arg<float>(a, 0);
  const float* x = array_arg<float>(a, 1);
  PackedWeights *W = nullptr, *WT = nullptr;
  if (a.argc < 4 || napi_get_value_external(env, a.argv[2], reinterpret_cast<void**>(&W)) != napi_ok ||
      napi_get_value_external(env, a.argv[3], reinterpret_cast<void**>(&WT)) != napi_ok)
    a.ok = false;
  const float* normW = array_arg<float>(a, 4, true);
  const float* bias = array_arg<float>(a, 5, true);
  const float* loraA = array_arg<float>(a, 6, true);
  const float* loraB = array_arg<float>(a, 7, true);
  const float* loraS = array_arg<float>(a, 8, true);
  const float* inS = array_arg<float>(a, 9, true);
  const float* outS = array_arg<float>(a, 10, true);
  float* dx = array_arg<float>(a, 11, true);
  float* dA = array_arg<float>(a, 12, true);
  float* dB = array_arg<float>(a, 13, true);
  float* dInS = array_arg<float>(a, 14, true);
  float* dOutS = array_arg<float>(a, 15, true);
  float* dBias = array_arg<float>(a, 16, true);
  const int64_t n = int_arg(a, 17), perGroup = int_arg(a, 18);
  const int in = int_arg(a, 19), pre = int_arg(a, 20), rank = int_arg(a, 21);
  const float eps = num_arg(a, 22), normScale = num_arg(a, 23);
  const int act = int_arg(a, 24);
  const bool gated = bool_arg(a, 25);
  const int64_t sRows = int_arg(a, 26), inRows = int_arg(a, 27), outRows = int_arg(a, 28);
  if (!a.ok || n <= 0 || W->K != in || W->N != pre || WT->K != pre || WT->N != in) return fail(env, "linearBackward: bad arguments"), nullptr;
  const int outF = gated ? pre / 2 : pre;
  const int threads = n * (int64_t)std::max(in, pre) > 65536 ? g_threads : 1;
  auto groupOf = [&](int64_t r, int64_t rows) { return rows == 1 ? 0 : r / perGroup; };
  const bool lora = loraA && loraB && rank > 0;

  // x̂ and the per-row factors r = 1/√(mean(x²)+eps)
  float* invr = g_inv.get(n);
  const float* xn = x;
  if (normW) {
    float* normed = g_normed.get(n * in);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
      const float* xr = x + r * in;
      float ss = 0.f;
      for (int j = 0; j < in; j++) ss += xr[j] * xr[j];
      invr[r] = 1.f / std::sqrt(ss / in + eps);
      for (int j = 0; j < in; j++) normed[r * in + j] = xr[j] * invr[r] * normScale * normW[j];
    }
    xn = normed;
  }
  const float* xb = xn;
  if (inS) {
    float* scaled = g_scaled.get(n * in);
    for (int64_t r = 0; r < n; r++) {
      const float* v = inS + groupOf(r, inRows) * in;
      for (int j = 0; j < in; j++) scaled[r * in + j] = xn[r * in + j] * v[j];
    }
    xb = scaled;
  }
  float* down = lora ? g_down.get(n * rank) : nullptr;  // x̂·A (unscaled)
  if (lora) gemm(false, false, n, rank, in, xn, in, loraA, rank, 0.f, down, rank);
  // the pre-activation, when the activation or dOutScale needs it: base = (x̂ ⊙ inS)·W, pre = base ⊙ outS + lora + bias
  const bool needPre = gated || act != kLinear;
  float* base = nullptr;
  if (needPre || dOutS) {
    base = g_base.get(n * pre);
    akgemm::gemm_packed(n, pre, in, xb, in, W->data.data(), base, pre, false, g_threads);
  }
  const float* dpre = dy;
  if (needPre) {
    float* p = g_pre.get(n * pre);
    for (int64_t r = 0; r < n; r++) {
      const float* v = outS ? outS + groupOf(r, outRows) * pre : nullptr;
      for (int j = 0; j < pre; j++) p[r * pre + j] = base[r * pre + j] * (v ? v[j] : 1.f) + (bias ? bias[j] : 0.f);
    }
    if (lora) {
      float* ds = g_ddown.get(n * rank);
      for (int64_t r = 0; r < n; r++) {
        const float* sv = loraS ? loraS + groupOf(r, sRows) * rank : nullptr;
        for (int q = 0; q < rank; q++) ds[r * rank + q] = down[r * rank + q] * (sv ? sv[q] : 1.f);
      }
      gemm(false, false, n, pre, rank, ds, rank, loraB, pre, 1.f, p, pre);
    }
    float* dp = g_dpre.get(n * pre);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
      const float* pr = p + r * pre;
      const float* g = dy + r * outF;
      float* d = dp + r * pre;
      if (gated) {
        for (int j = 0; j < outF; j++) {
          d[j] = g[j] * pr[outF + j] * activate_grad(act, pr[j]);
          d[outF + j] = g[j] * activate_value(act, pr[j]);
        }
      } else {
        for (int j = 0; j < pre; j++) d[j] = g[j] * activate_grad(act, pr[j]);
      }
    }
    dpre = dp;
  }
  // dL/d(base projection output)
  const float* dBase = dpre;
  if (outS) {
    float* db = g_dbase.get(n * pre);
    for (int64_t r = 0; r < n; r++) {
      const float* v = outS + groupOf(r, outRows) * pre;
      for (int j = 0; j < pre; j++) db[r * pre + j] = dpre[r * pre + j] * v[j];
    }
    dBase = db;
  }
  // LoRA: dL/d(x̂·A ⊙ S) = (dpre·Bᵀ) ⊙ S
  float* dDownS = nullptr;
  if (lora && (dx || dA || dB)) {
    float* dd = g_ddown.get(n * rank);
    gemm(false, true, n, rank, pre, dpre, pre, loraB, pre, 0.f, dd, rank);
    for (int64_t r = 0; r < n; r++) {
      const float* sv = loraS ? loraS + groupOf(r, sRows) * rank : nullptr;
      if (sv) for (int q = 0; q < rank; q++) dd[r * rank + q] *= sv[q];
    }
    dDownS = dd;
  }
  if (dA) {  // x̂ᵀ · dDownS
    gemm(true, false, in, rank, n, xn, in, dDownS, rank, 0.f, dA, rank);
  }
  if (dB) {  // (x̂·A ⊙ S)ᵀ · dpre
    float* ds = g_sdown.get(n * rank);
    for (int64_t r = 0; r < n; r++) {
      const float* sv = loraS ? loraS + groupOf(r, sRows) * rank : nullptr;
      for (int q = 0; q < rank; q++) ds[r * rank + q] = down[r * rank + q] * (sv ? sv[q] : 1.f);
    }
    gemm(true, false, rank, pre, n, ds, rank, dpre, pre, 0.f, dB, pre);
  }
  if (dOutS) {
    std::memset(dOutS, 0, sizeof(float) * outRows * pre);
    for (int64_t r = 0; r < n; r++) {
      float* o = dOutS + groupOf(r, outRows) * pre;
      for (int j = 0; j < pre; j++) o[j] += dpre[r * pre + j] * base[r * pre + j];
    }
  }
  if (dBias) {
    std::memset(dBias, 0, sizeof(float) * pre);
    for (int64_t r = 0; r < n; r++)
      for (int j = 0; j < pre; j++) dBias[j] += dpre[r * pre + j];
  }
  if (dx || dInS) {
    // t = dBase·Wᵀ; dInS = Σ_group x̂ ⊙ t; dx̂ = t ⊙ inS + dDownS·Aᵀ
    float* t = g_dxn.get(n * in);
    akgemm::gemm_packed(n, in, pre, dBase, pre, WT->data.data(), t, in, false, g_threads);
    if (dInS) {
      std::memset(dInS, 0, sizeof(float) * inRows * in);
      for (int64_t r = 0; r < n; r++) {
        float* o = dInS + groupOf(r, inRows) * in;
        for (int j = 0; j < in; j++) o[j] += xn[r * in + j] * t[r * in + j];
      }
    }
    if (dx) {
      if (inS)
        for (int64_t r = 0; r < n; r++) {
          const float* v = inS + groupOf(r, inRows) * in;
          for (int j = 0; j < in; j++) t[r * in + j] *= v[j];
        }
      if (lora) gemm(false, true, n, in, rank, dDownS, rank, loraA, rank, 1.f, t, in);
      if (normW) {
        // dx = s·r·(w ⊙ g) − s·x·r³/d·Σ(x ⊙ w ⊙ g)
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t r = 0; r < n; r++) {
          const float* xr = x + r * in;
          const float* g = t + r * in;
          float dot = 0.f;
          for (int j = 0; j < in; j++) dot += xr[j] * normW[j] * g[j];
          const float rr = invr[r];
          const float c = rr * rr * rr * dot / in;
          for (int j = 0; j < in; j++) dx[r * in + j] = normScale * (rr * normW[j] * g[j] - xr[j] * c);
        }
      } else {
        std::memcpy(dx, t, sizeof(float) * n * in);
      }
    }
  }
  return undefined(env);
}

// out[i, :d] = Σ_j w[i, j]·value(j)[:d] for small heads (d ≤ kSmallHead). With D > 0 (d known at compile
// time) the row's sums stay in registers; D = 0 takes d at run time.
template <int D, class Value>
inline void weighted_rows(int rows, int cols, int d, const float* w, int ldw, const Value& value, float* out, int ldo) {
  const int n = D > 0 ? D : d;
  for (int i = 0; i < rows; i++) {
    float acc[D > 0 ? D : kSmallHead] = {};
    const float* wi = w + (int64_t)i * ldw;
    for (int j = 0; j < cols; j++) {
      const float wj = wi[j];
      const float* v = value(j);
#pragma omp simd
      for (int c = 0; c < n; c++) acc[c] += wj * v[c];
    }
    std::memcpy(out + (int64_t)i * ldo, acc, sizeof(float) * n);
  }
}

// attention(q, kv, out, prefixK?, prefixV?, biasTable?, biasIndex?, mask?,
//           b, lq, lk, p, heads, d, qCols, qOffset, kvCols, kOffset, vOffset, prefixRows, maskRows, causal, causalOffset)
napi_value Attention(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* q = array_arg<float>(a, 0);
  const float* kv = array_arg<float>(a, 1);
  float* out = array_arg<float>(a, 2);
  const float* pk = array_arg<float>(a, 3, true);
  const float* pv = array_arg<float>(a, 4, true);
  const float* table = array_arg<float>(a, 5, true);
  const int32_t* index = array_arg<int32_t>(a, 6, true);
  const float* mask = array_arg<float>(a, 7, true);
  const int b = int_arg(a, 8), lq = int_arg(a, 9), lk = int_arg(a, 10), p = int_arg(a, 11);
  const int heads = int_arg(a, 12), d = int_arg(a, 13);
  const int qCols = int_arg(a, 14), qOffset = int_arg(a, 15), kvCols = int_arg(a, 16), kOffset = int_arg(a, 17), vOffset = int_arg(a, 18);
  const int prefixRows = int_arg(a, 19), maskRows = int_arg(a, 20);
  const bool causal = bool_arg(a, 21);
  const int causalOffset = int_arg(a, 22);
  if (!a.ok) return fail(env, "attention: bad arguments"), nullptr;
  const int cols = p + lk;
  const int outCols = heads * d;
  const int pairs = b * heads;
  const bool parallel = (double)pairs * lq * cols * d > 2e5;
#pragma omp parallel num_threads(parallel ? g_threads : 1)
  {
    std::vector<float> scores((size_t)lq * cols), keysT;
#pragma omp for schedule(static)
    for (int pair = 0; pair < pairs; pair++) {
      const int bi = pair / heads, h = pair % heads;
      const float* qh = q + (int64_t)bi * lq * qCols + qOffset + h * d;
      const float* kh = kv + (int64_t)bi * lk * kvCols + kOffset + h * d;
      const float* vh = kv + (int64_t)bi * lk * kvCols + vOffset + h * d;
      const int64_t prow = prefixRows == 1 ? 0 : bi;
      const float* pkh = pk ? pk + ((prow * heads + h) * (int64_t)p) * d : nullptr;
      const float* pvh = pv ? pv + ((prow * heads + h) * (int64_t)p) * d : nullptr;
      // scores = q·kᵀ (T5: no 1/√d), prefix columns first. One query (a cached decoding step): plain dot
      // products — packing a GEMM per (row, head) costs far more than the product itself.
      if (lq == 1) {
        // keys after the query's causal bound are cache slots not written yet (zeros): their score is 0
        const int end = causal ? std::min(cols, std::max(p, p + causalOffset + 1)) : cols;
        for (int j = end; j < cols; j++) scores[j] = 0.f;
        for (int j = 0; j < end; j++) {
          const float* kr = j < p ? pkh + (int64_t)j * d : kh + (int64_t)(j - p) * kvCols;
          float acc = 0.f;
          for (int c = 0; c < d; c++) acc += qh[c] * kr[c];
          scores[j] = acc;
        }
      } else if (d <= kSmallHead) {
        // Small heads (d_kv ≤ 32): direct dot products. A packed GEMM per (row, head) pair costs ~10 µs of
        // packing and dispatch, several times the product itself at these sizes.
        // keys transposed ([d, cols]) so each query's scores are d vector sweeps over the keys
        keysT.resize((size_t)d * cols);
        for (int j = 0; j < cols; j++) {
          const float* kr = j < p ? pkh + (int64_t)j * d : kh + (int64_t)(j - p) * kvCols;
          for (int c = 0; c < d; c++) keysT[(size_t)c * cols + j] = kr[c];
        }
        for (int i = 0; i < lq; i++) {
          const float* qi = qh + (int64_t)i * qCols;
          float* si = scores.data() + (int64_t)i * cols;
          std::memset(si, 0, sizeof(float) * cols);
          for (int c = 0; c < d; c++) {
            const float qc = qi[c];
            const float* kc = keysT.data() + (size_t)c * cols;
#pragma omp simd
            for (int j = 0; j < cols; j++) si[j] += qc * kc[j];
          }
        }
      } else {
        if (p > 0) gemm(false, true, lq, p, d, qh, qCols, pkh, d, 0.f, scores.data(), cols);
        if (lk > 0) gemm(false, true, lq, lk, d, qh, qCols, kh, kvCols, 0.f, scores.data() + p, cols);
      }
      const float* mrow = mask ? mask + (int64_t)(maskRows == 1 ? 0 : bi) * cols : nullptr;
      for (int i = 0; i < lq; i++)
        biased_softmax_row(scores.data() + (int64_t)i * cols, index ? index + (int64_t)i * cols : nullptr, table, heads, h, mrow, causal, p, i + causalOffset, cols);
      float* oh = out + (int64_t)bi * lq * outCols + h * d;
      if (lq == 1) {
        // weights of masked keys are exactly 0: skipping them changes nothing
        std::memset(oh, 0, sizeof(float) * d);
        for (int j = 0; j < cols; j++) {
          const float w = scores[j];
          if (w == 0.f) continue;
          const float* vr = j < p ? pvh + (int64_t)j * d : vh + (int64_t)(j - p) * kvCols;
          for (int c = 0; c < d; c++) oh[c] += w * vr[c];
        }
        continue;
      }
      if (d <= kSmallHead) {
        const auto value = [&](int j) { return j < p ? pvh + (int64_t)j * d : vh + (int64_t)(j - p) * kvCols; };
        const float* si = scores.data();
        if (d == 8) weighted_rows<8>(lq, cols, d, si, cols, value, oh, outCols);
        else if (d == 16) weighted_rows<16>(lq, cols, d, si, cols, value, oh, outCols);
        else if (d == 32) weighted_rows<32>(lq, cols, d, si, cols, value, oh, outCols);
        else weighted_rows<0>(lq, cols, d, si, cols, value, oh, outCols);
        continue;
      }
      if (p > 0) gemm(false, false, lq, d, p, scores.data(), cols, pvh, d, 0.f, oh, outCols);
      if (lk > 0) gemm(false, false, lq, d, lk, scores.data() + p, cols, vh, kvCols, p > 0 ? 1.f : 0.f, oh, outCols);
      if (p == 0 && lk == 0)
        for (int i = 0; i < lq; i++) std::memset(oh + (int64_t)i * outCols, 0, sizeof(float) * d);
    }
  }
  return undefined(env);
}

// gather(params, indices, out, numIndices, rowSize, numRows) → -1, or the position of an out-of-range index
// (nothing is written then). Embedding lookups: whole rows copied.
napi_value Gather(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* params = array_arg<float>(a, 0);
  const int32_t* indices = array_arg<int32_t>(a, 1);
  float* out = array_arg<float>(a, 2);
  const int64_t count = int_arg(a, 3), rowSize = int_arg(a, 4), numRows = int_arg(a, 5);
  if (!a.ok) return fail(env, "gather: bad arguments"), nullptr;
  int64_t bad = -1;
  for (int64_t i = 0; i < count && bad < 0; i++)
    if (indices[i] < 0 || indices[i] >= numRows) bad = i;
  if (bad < 0)
    for (int64_t i = 0; i < count; i++) std::memcpy(out + i * rowSize, params + (int64_t)indices[i] * rowSize, sizeof(float) * rowSize);
  napi_value result;
  napi_create_int64(env, bad, &result);
  return result;
}

// attentionBackward(dy, q, kv, prefixK?, prefixV?, biasTable?, biasIndex?, mask?, dq?, dkv?, dPk?, dPv?,
//                   b, lq, lk, p, heads, d, qCols, qOffset, kvCols, kOffset, vOffset, prefixRows, maskRows, causal, causalOffset)
// Gradients of attention (reference: backward.ts attentionBackwardReference): dq and dkv are zero outside
// their columns; the prefix gradients sum over rows when the prefix has one row for all.
napi_value AttentionBackward(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* dy = array_arg<float>(a, 0);
  const float* q = array_arg<float>(a, 1);
  const float* kv = array_arg<float>(a, 2);
  const float* pk = array_arg<float>(a, 3, true);
  const float* pv = array_arg<float>(a, 4, true);
  const float* table = array_arg<float>(a, 5, true);
  const int32_t* index = array_arg<int32_t>(a, 6, true);
  const float* mask = array_arg<float>(a, 7, true);
  float* dq = array_arg<float>(a, 8, true);
  float* dkv = array_arg<float>(a, 9, true);
  float* dpk = array_arg<float>(a, 10, true);
  float* dpv = array_arg<float>(a, 11, true);
  const int b = int_arg(a, 12), lq = int_arg(a, 13), lk = int_arg(a, 14), p = int_arg(a, 15);
  const int heads = int_arg(a, 16), d = int_arg(a, 17);
  const int qCols = int_arg(a, 18), qOffset = int_arg(a, 19), kvCols = int_arg(a, 20), kOffset = int_arg(a, 21), vOffset = int_arg(a, 22);
  const int prefixRows = int_arg(a, 23), maskRows = int_arg(a, 24);
  const bool causal = bool_arg(a, 25);
  const int causalOffset = int_arg(a, 26);
  if (!a.ok) return fail(env, "attentionBackward: bad arguments"), nullptr;
  const int cols = p + lk;
  const int outCols = heads * d;
  if (dq) std::memset(dq, 0, sizeof(float) * (size_t)b * lq * qCols);
  if (dkv) std::memset(dkv, 0, sizeof(float) * (size_t)b * lk * kvCols);
  if (dpk) std::memset(dpk, 0, sizeof(float) * (size_t)prefixRows * heads * p * d);
  if (dpv) std::memset(dpv, 0, sizeof(float) * (size_t)prefixRows * heads * p * d);
  const int pairs = b * heads;
#pragma omp parallel num_threads((double)pairs * lq * cols * d > 2e5 ? g_threads : 1)
  {
    std::vector<float> P((size_t)lq * cols), dP((size_t)lq * cols), dK((size_t)cols * d), dV((size_t)cols * d);
#pragma omp for schedule(static)
    for (int pair = 0; pair < pairs; pair++) {
      const int bi = pair / heads, h = pair % heads;
      const float* qh = q + (int64_t)bi * lq * qCols + qOffset + h * d;
      const float* kh = kv + (int64_t)bi * lk * kvCols + kOffset + h * d;
      const float* vh = kv + (int64_t)bi * lk * kvCols + vOffset + h * d;
      const float* dyh = dy + (int64_t)bi * lq * outCols + h * d;
      const int64_t prow = prefixRows == 1 ? 0 : bi;
      const float* pkh = pk ? pk + ((prow * heads + h) * (int64_t)p) * d : nullptr;
      const float* pvh = pv ? pv + ((prow * heads + h) * (int64_t)p) * d : nullptr;
      // the forward's weights P
      if (p > 0) gemm(false, true, lq, p, d, qh, qCols, pkh, d, 0.f, P.data(), cols);
      if (lk > 0) gemm(false, true, lq, lk, d, qh, qCols, kh, kvCols, 0.f, P.data() + p, cols);
      const float* mrow = mask ? mask + (int64_t)(maskRows == 1 ? 0 : bi) * cols : nullptr;
      for (int i = 0; i < lq; i++)
        biased_softmax_row(P.data() + (int64_t)i * cols, index ? index + (int64_t)i * cols : nullptr, table, heads, h, mrow, causal, p, i + causalOffset, cols);
      // dV = Pᵀ·dO; dP = dO·Vᵀ
      gemm(true, false, cols, d, lq, P.data(), cols, dyh, outCols, 0.f, dV.data(), d);
      if (p > 0) gemm(false, true, lq, p, d, dyh, outCols, pvh, d, 0.f, dP.data(), cols);
      if (lk > 0) gemm(false, true, lq, lk, d, dyh, outCols, vh, kvCols, 0.f, dP.data() + p, cols);
      // dS = P ⊙ (dP − Σ dP ⊙ P), in place in dP
      for (int i = 0; i < lq; i++) {
        float* ps = P.data() + (int64_t)i * cols;
        float* ds = dP.data() + (int64_t)i * cols;
        float dot = 0.f;
        for (int j = 0; j < cols; j++) dot += ds[j] * ps[j];
        for (int j = 0; j < cols; j++) ds[j] = ps[j] * (ds[j] - dot);
      }
      // dQ = dS·K (prefix keys first), dK = dSᵀ·Q
      if (dq) {
        float* dqh = dq + (int64_t)bi * lq * qCols + qOffset + h * d;
        if (p > 0) gemm(false, false, lq, d, p, dP.data(), cols, pkh, d, 0.f, dqh, qCols);
        if (lk > 0) gemm(false, false, lq, d, lk, dP.data() + p, cols, kh, kvCols, p > 0 ? 1.f : 0.f, dqh, qCols);
      }
      if (dkv || dpk) gemm(true, false, cols, d, lq, dP.data(), cols, qh, qCols, 0.f, dK.data(), d);
      if (dkv) {
        for (int j = 0; j < lk; j++) {
          float* row = dkv + ((int64_t)bi * lk + j) * kvCols;
          for (int e = 0; e < d; e++) {
            row[kOffset + h * d + e] += dK[(size_t)(p + j) * d + e];
            row[vOffset + h * d + e] += dV[(size_t)(p + j) * d + e];
          }
        }
      }
      if (p > 0 && (dpk || dpv)) {
        // a prefix shared by every row gathers every row's gradient
#pragma omp critical(adapterkit_prefix_grad)
        {
          float* k = dpk ? dpk + ((prow * heads + h) * (int64_t)p) * d : nullptr;
          float* v = dpv ? dpv + ((prow * heads + h) * (int64_t)p) * d : nullptr;
          for (int j = 0; j < p * d; j++) {
            if (k) k[j] += dK[j];
            if (v) v[j] += dV[j];
          }
        }
      }
    }
  }
  return undefined(env);
}

// adamW(p, g, m, v, outP, outM, outV, n, lr, beta1, beta2, eps, weightDecay, bc1, bc2): torch.optim.AdamW
napi_value AdamW(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* p = array_arg<float>(a, 0);
  const float* g = array_arg<float>(a, 1);
  const float* m = array_arg<float>(a, 2);
  const float* v = array_arg<float>(a, 3);
  float* op = array_arg<float>(a, 4);
  float* om = array_arg<float>(a, 5);
  float* ov = array_arg<float>(a, 6);
  const int64_t n = int_arg(a, 7);
  const float lr = num_arg(a, 8), b1 = num_arg(a, 9), b2 = num_arg(a, 10), eps = num_arg(a, 11), wd = num_arg(a, 12), bc1 = num_arg(a, 13), bc2 = num_arg(a, 14);
  if (!a.ok) return fail(env, "adamW: bad arguments"), nullptr;
  const float decay = 1.f - lr * wd, step = lr / bc1, sbc2 = std::sqrt(bc2);
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float m1 = b1 * m[i] + (1.f - b1) * g[i];
    const float v1 = b2 * v[i] + (1.f - b2) * g[i] * g[i];
    om[i] = m1;
    ov[i] = v1;
    op[i] = p[i] * decay - step * (m1 / (std::sqrt(v1) / sbc2 + eps));
  }
  return undefined(env);
}

// cacheWrite(cache, source, out, b, capacity, c, sourceCols, sourceOffset, position)
napi_value CacheWrite(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* cache = array_arg<float>(a, 0);
  const float* src = array_arg<float>(a, 1);
  float* out = array_arg<float>(a, 2);
  const int b = int_arg(a, 3), capacity = int_arg(a, 4), c = int_arg(a, 5), srcCols = int_arg(a, 6), srcOffset = int_arg(a, 7), pos = int_arg(a, 8);
  if (!a.ok) return fail(env, "cacheWrite: bad arguments"), nullptr;
  const size_t rowBytes = (size_t)capacity * c * sizeof(float);
  for (int i = 0; i < b; i++) {
    float* o = out + (int64_t)i * capacity * c;
    if (o != cache + (int64_t)i * capacity * c) std::memcpy(o, cache + (int64_t)i * capacity * c, rowBytes);
    std::memcpy(o + (int64_t)pos * c, src + (int64_t)i * srcCols + srcOffset, sizeof(float) * c);
  }
  return undefined(env);
}

// crossEntropy(logits, labels, out, n, v, smoothing): per-token loss, 0 where label = -100
napi_value CrossEntropy(napi_env env, napi_callback_info info) {
  Args a = args_of(env, info);
  const float* logits = array_arg<float>(a, 0);
  const int32_t* labels = array_arg<int32_t>(a, 1);
  float* out = array_arg<float>(a, 2);
  const int64_t n = int_arg(a, 3);
  const int v = int_arg(a, 4);
  const float eps = num_arg(a, 5);
  if (!a.ok) return fail(env, "crossEntropy: bad arguments"), nullptr;
#pragma omp parallel for schedule(static) num_threads(n * (int64_t)v > 65536 ? g_threads : 1)
  for (int64_t r = 0; r < n; r++) {
    const int label = labels[r];
    if (label == -100) {
      out[r] = 0.f;
      continue;
    }
    const float* l = logits + r * v;
    float mx = -3.4e38f;
    for (int j = 0; j < v; j++) mx = std::max(mx, l[j]);
    double sum = 0, total = 0;
    for (int j = 0; j < v; j++) sum += std::exp((double)l[j] - mx), total += l[j];  // double: exact enough over 32k classes
    const double lse = mx + std::log(sum);
    const double nll = lse - l[label];
    out[r] = (float)(eps > 0 ? (1 - eps) * nll + eps * (lse - total / v) : nll);
  }
  return undefined(env);
}

// Sets the threads every kernel uses from now on, process-wide (a server keeps a core for its HTTP thread).
napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  int32_t n = 1;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &n) != napi_ok) n = 1;
  g_threads = std::max(1, std::min(n, 1024));
  return undefined(env);
}

napi_value Info(napi_env env, napi_callback_info) {
  napi_value obj, threads, procs, isa;
  napi_create_object(env, &obj);
  napi_create_int32(env, g_threads, &threads);
  napi_create_int32(env, omp_get_num_procs(), &procs);
  const char* name = akgemm::VL == 16 ? "AVX-512" : akgemm::VL == 8 ? "AVX2" : "128-bit SIMD";
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &isa);
  napi_set_named_property(env, obj, "threads", threads);
  napi_set_named_property(env, obj, "processors", procs);
  napi_set_named_property(env, obj, "simd", isa);
  return obj;
}

}  // namespace

NAPI_MODULE_INIT() {
  g_threads = std::max(1, omp_get_max_threads());  // OMP_NUM_THREADS, else every processor
#ifdef M_MMAP_THRESHOLD
  // Results read back from the wasm heap are large fresh ArrayBuffers (logits: 33 MB at batch 8). Above
  // glibc's mmap threshold (at most 32 MB) every one is a new mapping, page-faulted in on the copy — ~90 ms
  // for 33 MB on a VM. Served from the heap instead, the memory is reused from one read to the next.
  static bool tuned = false;
  if (!tuned && !std::getenv("MALLOC_MMAP_THRESHOLD_")) {
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    tuned = true;
  }
#endif
  const struct {
    const char* name;
    napi_callback fn;
  } fns[] = {{"batchMatMul", BatchMatMul}, {"packWeights", PackWeights}, {"rmsNorm", RmsNorm},
             {"linear", Linear},           {"attention", Attention},     {"cacheWrite", CacheWrite},
             {"crossEntropy", CrossEntropy}, {"gather", Gather},         {"info", Info}, {"setThreads", SetThreads},
             {"linearBackward", LinearBackward}, {"attentionBackward", AttentionBackward}, {"adamW", AdamW}};
  for (const auto& f : fns) {
    napi_value v;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.fn, nullptr, &v);
    napi_set_named_property(env, exports, f.name, v);
  }
  return exports;
}
