// GEMM for the products of a transformer on the CPU: C = A·B with B in panels of NR columns (k-major,
// zero-padded), packed once for frozen weights (as onnxruntime's MLAS prepacks) or on the fly otherwise.
// A register-blocked MR × NR micro-kernel written with GCC vector extensions: 512-bit vectors with
// AVX-512, 256-bit with AVX, 128-bit elsewhere. Threads split the panels (every row of A meets a panel
// once), which suits the small row counts of inference (a decoding step is one row per sequence).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <omp.h>

namespace akgemm {
#if defined(__AVX512F__)
constexpr int VL = 16, MR = 12;
#elif defined(__AVX__)
constexpr int VL = 8, MR = 6;
#else
constexpr int VL = 4, MR = 6;
#endif
constexpr int NR = 2 * VL;
typedef float vf __attribute__((vector_size(VL * 4)));

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

/** Panels of B: ceil(N / NR) panels, each K × NR floats (k-major, zero-padded columns). */
inline size_t packed_size(int K, int N) { return (size_t)((N + NR - 1) / NR) * K * NR; }

/** Packs B [K, N] (row-major, ldb; or Bᵀ given as [N, K] when trans) into panels. */
inline void pack(const float* B, int ldb, bool trans, int K, int N, float* out) {
  const int panels = (N + NR - 1) / NR;
#pragma omp parallel for schedule(static) if ((size_t)K * N > 262144)
  for (int p = 0; p < panels; p++) {
    float* dst = out + (size_t)p * K * NR;
    const int c0 = p * NR, nc = std::min(NR, N - c0);
    for (int k = 0; k < K; k++) {
      float* row = dst + (size_t)k * NR;
      if (!trans) {
        std::memcpy(row, B + (size_t)k * ldb + c0, sizeof(float) * nc);
      } else {
        for (int c = 0; c < nc; c++) row[c] = B[(size_t)(c0 + c) * ldb + k];
      }
      for (int c = nc; c < NR; c++) row[c] = 0.f;
    }
  }
}

/** C[R rows, one panel] (+)= A[R rows, K] · panel. */
template <int R>
inline void micro(int K, const float* A, int lda, const float* P, float* C, int ldc, int ncols, bool accumulate) {
  vf acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = vf{};
  for (int k = 0; k < K; k++) {
    const vf b0 = load(P + (size_t)k * NR), b1 = load(P + (size_t)k * NR + VL);
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
      const float a = A[(size_t)r * lda + k];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  for (int r = 0; r < R; r++) {
    float* c = C + (size_t)r * ldc;
    if (ncols == NR) {
      if (accumulate) acc[r][0] += load(c), acc[r][1] += load(c + VL);
      store(c, acc[r][0]);
      store(c + VL, acc[r][1]);
    } else {
      float tmp[NR];
      store(tmp, acc[r][0]);
      store(tmp + VL, acc[r][1]);
      for (int j = 0; j < ncols; j++) c[j] = accumulate ? c[j] + tmp[j] : tmp[j];
    }
  }
}

template <int R>
inline void rows(int K, const float* A, int lda, const float* P, float* C, int ldc, int ncols, bool acc) {
  micro<R>(K, A, lda, P, C, ldc, ncols, acc);
}

inline void tail(int r, int K, const float* A, int lda, const float* P, float* C, int ldc, int ncols, bool acc) {
  switch (r) {
#define AK_CASE(n) case n: return micro<n>(K, A, lda, P, C, ldc, ncols, acc);
    AK_CASE(1) AK_CASE(2) AK_CASE(3) AK_CASE(4) AK_CASE(5) AK_CASE(6) AK_CASE(7) AK_CASE(8) AK_CASE(9) AK_CASE(10) AK_CASE(11)
#undef AK_CASE
  }
}

/** C [M, N] (ldc) (+)= A [M, K] (lda) · packed B; threads split the panels. */
inline void gemm_packed(int M, int N, int K, const float* A, int lda, const float* Bp, float* C, int ldc, bool accumulate, int threads) {
  const int panels = (N + NR - 1) / NR;
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) for (int i = 0; i < M; i++) std::memset(C + (size_t)i * ldc, 0, sizeof(float) * N);
    return;
  }
  const double flops = 2.0 * M * N * K;
  const int t = omp_in_parallel() || flops < 2e5 ? 1 : std::min(threads, panels);
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1)
  for (int p = 0; p < panels; p++) {
    const float* P = Bp + (size_t)p * K * NR;
    const int c0 = p * NR, nc = std::min(NR, N - c0);
    int i = 0;
    for (; i + MR <= M; i += MR) micro<MR>(K, A + (size_t)i * lda, lda, P, C + (size_t)i * ldc + c0, ldc, nc, accumulate);
    if (i < M) tail(M - i, K, A + (size_t)i * lda, lda, P, C + (size_t)i * ldc + c0, ldc, nc, accumulate);
  }
}
}  // namespace akgemm
