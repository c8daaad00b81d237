// edgeseq::rel_attention, the compute (no ExecuTorch types: et_kernel.cpp registers it).
//
// One encoder self-attention layer, every head: out = softmax(q k^T + bias + key_bias) v, for
// T5's relative-position bias, which is Toeplitz per head and arrives as its 2S-1 diagonals, so
// the [H, S, S] table is never built. In the graph this is bmm, add, softmax, bmm plus the
// head transposes and the table: five passes over [H, S, S] (25.8 ms of a 512-token
// t5-small-sized encode); here the scores live in a [6, S] scratch row block per task.
//
// Layouts: q, k, v, out are [S, H*Dh] (token-major, the projections' outputs as they are,
// so no transposes); head h is columns h*Dh .. h*Dh+Dh-1.
//
// Numerics: on CPUs with AVX512-BF16 the two products take bf16 operands (round to nearest
// even) and accumulate in fp32 (vdpbf16ps), as XNNPACK's and oneDNN's bf16 GEMMs do; the bias,
// the softmax (max-subtracted, fp32 exp) and the normalisation stay fp32. Elsewhere fp32 blocks
// written with vector extensions (AVX-512F / AVX2+FMA / SSE2 clones on x86, NEON on ARM), and for
// head sizes that are not a multiple of 8, plain fp32 reference loops.
#include "rel_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__)
#include <immintrin.h>
#define EDGESEQ_X86 1
#endif

namespace edgeseq {
namespace {

constexpr int kRows = 6;  // query rows per task: 6 x 4 accumulators of 16 lanes fit the 32 zmm registers

// ---- fp32, any CPU: blocks of query rows against one head's keys packed [Dh, Sp] ------------
//
// Written with GCC/Clang vector extensions (8 floats), which compile to NEON on ARM and, through
// target_clones on x86, to AVX-512F, AVX2+FMA or SSE2 code picked at load time. A task is kF
// query rows of one head: scores [kF][Sp] start as the bias row (the Toeplitz diagonals and the
// key mask), take q.k^T as rank-1 updates over Dh (each packed key row read once for kF queries),
// go through the softmax in place, then out[r] = sum_j p[r][j] v[j] over 8-float slices of Dh.
typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
constexpr int kF = 4;  // query rows per fp32 task: 4 x 2 accumulators + 2 key loads fit 16 registers

#ifdef EDGESEQ_X86
#define EDGESEQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EDGESEQ_CLONES
#endif

// Helpers are always inlined, so each clone gets them in its own instruction set (and no f8 ever
// crosses a call: GCC's -Wpsabi note about how one would be passed does not apply, hence off).
#define EDGESEQ_INLINE __attribute__((always_inline)) inline
// a vector-scalar operation broadcasts the scalar (one vbroadcastss / dup); building f8{x, x, ...}
// became a chain of lane inserts in GCC 12's output
EDGESEQ_INLINE f8 splat(float x) { return f8{} + x; }
EDGESEQ_INLINE f8 load8(const float* p) { f8 v; std::memcpy(&v, p, sizeof v); return v; }
EDGESEQ_INLINE void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof v); }

// exp(x) for x <= 0 lane by lane: 2^n * e^r with n = round(x log2 e), |r| <= ln2/2, e^r by its
// degree-6 Taylor polynomial (relative error < 3e-7); exactly 0 below -87 (masked keys: a padded
// key gets no weight at all, as exp(-1e9) = 0 in the reference).
EDGESEQ_INLINE f8 exp8(f8 x) {
  const f8 lo = splat(-87.0f);
  const i8 dead = x < lo;
  x = dead ? lo : x;
  const f8 magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to the nearest integer
  const f8 n = (x * splat(1.44269504088896341f) + magic) - magic;
  const f8 r = (x - n * splat(0.693145751953125f)) - n * splat(1.428606765330187e-06f);  // ln2, split
  f8 p = splat(1.0f / 720);
  p = p * r + splat(1.0f / 120);
  p = p * r + splat(1.0f / 24);
  p = p * r + splat(1.0f / 6);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  const i8 bits = (i8)p + (__builtin_convertvector(n, i8) << 23);
  return dead ? splat(0.0f) : (f8)bits;
}

struct Fp32Plan {
  const RelAttentionArgs& a;
  int64_t Sp, HD;
  std::vector<float> kt;  // [H][Dh][Sp]: kt[h][d][j] = k[j, h*Dh + d]; keys past S are zeros
  std::vector<float> vh;  // [H][S][Dh]: head h's values, contiguous (v's rows are H*Dh apart)
  explicit Fp32Plan(const RelAttentionArgs& args)
      : a(args), Sp((args.S + 15) / 16 * 16), HD(args.H * args.Dh), kt(static_cast<size_t>(args.H * args.Dh * Sp)),
        vh(static_cast<size_t>(args.H * args.S * args.Dh)) {}

  void pack(int64_t h) {
    float* kh = kt.data() + h * a.Dh * Sp;
    float* vo = vh.data() + h * a.S * a.Dh;
    for (int64_t j = 0; j < a.S; ++j)
      for (int64_t d = 0; d < a.Dh; ++d) {
        kh[d * Sp + j] = a.k[j * HD + h * a.Dh + d];
        vo[j * a.Dh + d] = a.v[j * HD + h * a.Dh + d];
      }
  }

  // Query rows r0 .. r0+kF-1 (fewer at the end) of head h; sc: the caller's [kF][Sp] scratch.
  EDGESEQ_CLONES void rows(int64_t h, int64_t r0, float* sc) const {
    const int64_t S = a.S, Dh = a.Dh, rn = std::min<int64_t>(kF, S - r0);
    const float* kh = kt.data() + h * Dh * Sp;
    float q[kF][256];  // this block's queries (Dh <= 256: fp32_shape)
    for (int64_t r = 0; r < kF; ++r)
      for (int64_t d = 0; d < Dh; ++d) q[r][d] = r < rn ? a.q[(r0 + r) * HD + h * Dh + d] : 0.f;
    for (int64_t j0 = 0; j0 < Sp; j0 += 16) {  // scores, 16 keys x kF rows in registers
      f8 acc[kF][2];
      for (int r = 0; r < kF; ++r) acc[r][0] = acc[r][1] = splat(0.f);
      for (int64_t d = 0; d < Dh; ++d) {
        const f8 k0 = load8(kh + d * Sp + j0), k1 = load8(kh + d * Sp + j0 + 8);
        for (int r = 0; r < kF; ++r) {
          acc[r][0] += q[r][d] * k0;
          acc[r][1] += q[r][d] * k1;
        }
      }
      for (int r = 0; r < kF; ++r) {
        store8(sc + r * Sp + j0, acc[r][0]);
        store8(sc + r * Sp + j0 + 8, acc[r][1]);
      }
    }
    float inv[kF];
    for (int64_t r = 0; r < rn; ++r) {  // bias, then the softmax over the S real keys
      float* __restrict s = sc + r * Sp;
      const float* __restrict dg = a.diagonals + h * (2 * S - 1) + (S - 1 - (r0 + r));  // dg[j] = bias[h, r0+r, j]
      const float* __restrict kb = a.key_bias;
      for (int64_t j = 0; j < S; ++j) s[j] += dg[j] + kb[j];
      for (int64_t j = S; j < Sp; ++j) s[j] = -INFINITY;  // padding: exp8 gives exactly 0
      f8 mx = splat(-INFINITY);
      for (int64_t j = 0; j < Sp; j += 8) {
        const f8 x = load8(s + j);
        mx = x > mx ? x : mx;
      }
      float m = mx[0];
      for (int l = 1; l < 8; ++l) m = std::max(m, mx[l]);
      f8 sum = splat(0.f);
      for (int64_t j = 0; j < Sp; j += 8) {
        const f8 e = exp8(load8(s + j) - m);
        store8(s + j, e);
        sum += e;
      }
      float total = 0.f;
      for (int l = 0; l < 8; ++l) total += sum[l];
      inv[r] = 1.f / total;
    }
    const float* vo = vh.data() + h * S * Dh;
    int64_t d0 = 0;
    for (; d0 + 16 <= Dh; d0 += 16) {  // out = p v, 16 head dims x kF rows in registers
      f8 acc[kF][2];
      for (int r = 0; r < kF; ++r) acc[r][0] = acc[r][1] = splat(0.f);
      for (int64_t j = 0; j < S; ++j) {
        const f8 v0 = load8(vo + j * Dh + d0), v1 = load8(vo + j * Dh + d0 + 8);
        for (int r = 0; r < kF; ++r) {
          acc[r][0] += sc[r * Sp + j] * v0;
          acc[r][1] += sc[r * Sp + j] * v1;
        }
      }
      for (int64_t r = 0; r < rn; ++r) {
        store8(a.out + (r0 + r) * HD + h * Dh + d0, acc[r][0] * inv[r]);
        store8(a.out + (r0 + r) * HD + h * Dh + d0 + 8, acc[r][1] * inv[r]);
      }
    }
    if (d0 < Dh) {  // Dh = 16k + 8: the last 8 head dims
      f8 acc[kF];
      for (int r = 0; r < kF; ++r) acc[r] = splat(0.f);
      for (int64_t j = 0; j < S; ++j) {
        const f8 vj = load8(vo + j * Dh + d0);
        for (int r = 0; r < kF; ++r) acc[r] += sc[r * Sp + j] * vj;
      }
      for (int64_t r = 0; r < rn; ++r) store8(a.out + (r0 + r) * HD + h * Dh + d0, acc[r] * inv[r]);
    }
  }
};

bool fp32_shape(const RelAttentionArgs& a) { return a.Dh % 8 == 0 && a.Dh <= 256; }

// ---- fp32 reference, any shape: one query row per task (other head sizes only) --------------
void fp32_rows(const RelAttentionArgs& a, int64_t begin, int64_t end) {
  const int64_t S = a.S, Dh = a.Dh, HD = a.H * a.Dh;
  std::vector<float> s(S), acc(Dh);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t h = t / S, i = t % S;
    const float* qi = a.q + i * HD + h * Dh;
    const float* dg = a.diagonals + h * (2 * S - 1) + (S - 1 - i);  // dg[j] = bias[h, i, j]
    float m = -INFINITY;
    for (int64_t j = 0; j < S; ++j) {
      const float* kj = a.k + j * HD + h * Dh;
      float dot = 0.f;
      for (int64_t d = 0; d < Dh; ++d) dot += qi[d] * kj[d];
      s[j] = dot + dg[j] + a.key_bias[j];
      m = std::max(m, s[j]);
    }
    float sum = 0.f;
    for (int64_t j = 0; j < S; ++j) sum += (s[j] = std::exp(s[j] - m));
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t j = 0; j < S; ++j) {
      const float* vj = a.v + j * HD + h * Dh;
      for (int64_t d = 0; d < Dh; ++d) acc[d] += s[j] * vj[d];
    }
    float* o = a.out + i * HD + h * Dh;
    for (int64_t d = 0; d < Dh; ++d) o[d] = acc[d] / sum;
  }
}

#ifdef EDGESEQ_X86
#define EDGESEQ_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

// exp(x) for x <= 0 (scores minus their row max): 2^(x log2 e), split into an integer n and
// f in [-0.5, 0.5]; 2^f by its degree-4 Taylor polynomial (relative error < 5e-5, far below the
// bf16 rounding, 2^-9, the probabilities then get), scaled by 2^n.
EDGESEQ_BF16 inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(9.618129107628477e-3f);                  // ln2^4 / 24
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866482158e-2f));  // ln2^3 / 6
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265069591007e-1f));  // ln2^2 / 2
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471805599453e-1f));  // ln2
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Lanes of a 16-key group starting `left` keys before the end of the sequence (keys past it
// are padding of the 64-key blocks).
inline __mmask16 keys_left(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1u);
}

// 32 floats -> 16 words, each a bf16 pair (element 2p in the low half, 2p+1 in the high half:
// the pairing vdpbf16ps multiplies lane by lane).
EDGESEQ_BF16 inline __m512i pairs32(const float* x) {
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
}

// The bf16 path's per-call state: K and V of every head repacked once, so the inner loops load
// 16 keys (QK) or 16 head dims (PV) per register:
//   kp [H][Sp/64][Dh/2][64] words: kp[h][j/64][p][j%64] = (k[j, 2p], k[j, 2p+1]) of head h (each
//      64-key block one contiguous run, read front to back by the score loop);
//   vp [H][Sp/2][Dh] words: vp[h][jj][d] = (v[2jj, d], v[2jj+1, d]) of head h;
// Sp = S rounded up to 64 (the QK block); keys past S are zeros and their scores -inf.
struct Bf16Plan {
  const RelAttentionArgs& a;
  int64_t Sp, P2, HD;
  std::vector<uint32_t> kp, vp;
  explicit Bf16Plan(const RelAttentionArgs& args)
      : a(args), Sp((args.S + 63) / 64 * 64), P2(args.Dh / 2), HD(args.H * args.Dh),
        kp(static_cast<size_t>(args.H * P2 * Sp)), vp(static_cast<size_t>(args.H * (Sp / 2) * args.Dh)) {}

  EDGESEQ_BF16 void pack(int64_t h) {
    const int64_t S = a.S, Dh = a.Dh;
    std::vector<uint32_t> rows(static_cast<size_t>(Sp * P2), 0u);  // [Sp][P2], transposed below
    for (int64_t j = 0; j < S; ++j)
      for (int64_t c = 0; c < Dh; c += 32)
        _mm512_storeu_si512(rows.data() + j * P2 + c / 2, pairs32(a.k + j * HD + h * Dh + c));
    uint32_t* kh = kp.data() + h * P2 * Sp;
    for (int64_t j = 0; j < Sp; ++j)
      for (int64_t p = 0; p < P2; ++p) kh[(j / 64) * P2 * 64 + p * 64 + j % 64] = rows[j * P2 + p];
    uint32_t* vh = vp.data() + h * (Sp / 2) * Dh;
    for (int64_t jj = 0; jj < Sp / 2; ++jj)
      for (int64_t d = 0; d < Dh; d += 16) {
        const int64_t j0 = 2 * jj, j1 = j0 + 1;
        const __m512 zero = _mm512_setzero_ps();
        const __m256i x0 = (__m256i)_mm512_cvtneps_pbh(j0 < S ? _mm512_loadu_ps(a.v + j0 * HD + h * Dh + d) : zero);
        const __m256i x1 = (__m256i)_mm512_cvtneps_pbh(j1 < S ? _mm512_loadu_ps(a.v + j1 * HD + h * Dh + d) : zero);
        // interleave 16-bit lanes: unpack works per 128-bit half, the permutes restore order
        const __m256i lo = _mm256_unpacklo_epi16(x0, x1), hi = _mm256_unpackhi_epi16(x0, x1);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(vh + jj * Dh + d), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(vh + jj * Dh + d + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
      }
  }

  // Query rows r0 .. r0+5 of head h. sc [6][Sp] fp32 scores, pw [6][Sp/2] bf16-pair probabilities,
  // qw [6][P2] bf16-pair queries: the caller's scratch.
  template <int NT>  // NT = Dh / 16 output registers per row
  EDGESEQ_BF16 void rows(int64_t h, int64_t r0, float* sc, uint32_t* pw, uint32_t* qw) const {
    const int64_t S = a.S, Dh = a.Dh, rn = std::min<int64_t>(kRows, S - r0);
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t c = 0; c < Dh; c += 32) {
        const __m512i w = r < rn ? pairs32(a.q + (r0 + r) * HD + h * Dh + c) : _mm512_setzero_si512();
        _mm512_storeu_si512(qw + r * P2 + c / 2, w);
      }
    const uint32_t* kh = kp.data() + h * P2 * Sp;
    __m512 rowmax[kRows];
    for (auto& x : rowmax) x = _mm512_set1_ps(-INFINITY);
    for (int64_t jb = 0; jb < Sp; jb += 64) {  // scores, 64 keys at a time
      __m512 acc[kRows][4];
      for (auto& row : acc) for (auto& x : row) x = _mm512_setzero_ps();
      for (int64_t p = 0; p < P2; ++p) {
        const uint32_t* b = kh + jb * P2 + p * 64;
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16),
                       b2 = (__m512bh)_mm512_loadu_si512(b + 32), b3 = (__m512bh)_mm512_loadu_si512(b + 48);
#pragma GCC unroll 6
        for (int r = 0; r < kRows; ++r) {
          const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(qw[r * P2 + p]));
          acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
          acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
          acc[r][2] = _mm512_dpbf16_ps(acc[r][2], x, b2);
          acc[r][3] = _mm512_dpbf16_ps(acc[r][3], x, b3);
        }
      }
      // + bias + key mask while the scores are in registers (keys past S: -inf), running row max
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) {
        const int64_t j = jb + 16 * t;
        const __mmask16 live = keys_left(S - j);
        const __m512 kb = _mm512_maskz_loadu_ps(live, a.key_bias + j);
#pragma GCC unroll 6
        for (int r = 0; r < kRows; ++r) {
          const float* dg = a.diagonals + h * (2 * S - 1) + (S - 1 - std::min(r0 + r, S - 1));
          const __m512 bias = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), live, dg + j);
          const __m512 x = _mm512_add_ps(acc[r][t], _mm512_add_ps(bias, kb));
          rowmax[r] = _mm512_max_ps(rowmax[r], x);
          _mm512_storeu_ps(sc + r * Sp + j, x);
        }
      }
    }
    float inv[kRows];
    for (int64_t r = 0; r < kRows; ++r) {  // softmax numerators (bf16 pairs), 1 / sum
      uint32_t* prow = pw + r * (Sp / 2);
      if (r >= rn) { std::memset(prow, 0, sizeof(uint32_t) * (Sp / 2)); inv[r] = 0.f; continue; }
      const float* s = sc + r * Sp;
      const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(rowmax[r]));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < Sp; j += 32) {
        const __m512 e0 = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
        const __m512 e1 = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j + 16), m));
        sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
        _mm512_storeu_si512(prow + j / 2, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      }
      inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    const uint32_t* vh = vp.data() + h * (Sp / 2) * Dh;
    __m512 acc[kRows][NT];
    for (auto& row : acc) for (auto& x : row) x = _mm512_setzero_ps();
    for (int64_t jj = 0; jj < Sp / 2; ++jj) {  // probabilities x values, two keys per step
      __m512bh b[NT];
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) b[t] = (__m512bh)_mm512_loadu_si512(vh + jj * Dh + 16 * t);
#pragma GCC unroll 6
      for (int r = 0; r < kRows; ++r) {
        const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(pw[r * (Sp / 2) + jj]));
#pragma GCC unroll 4
        for (int t = 0; t < NT; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], x, b[t]);
      }
    }
    for (int64_t r = 0; r < rn; ++r) {
      float* o = a.out + (r0 + r) * HD + h * Dh;
      for (int t = 0; t < NT; ++t) _mm512_storeu_ps(o + 16 * t, _mm512_mul_ps(acc[r][t], _mm512_set1_ps(inv[r])));
    }
  }
};

bool has_bf16() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  return yes;
}
#endif  // EDGESEQ_X86

bool bf16_shape(const RelAttentionArgs& a) { return a.Dh == 32 || a.Dh == 64; }

// EDGESEQ_REL_ATTENTION=fp32 keeps a CPU with AVX512-BF16 on the fp32 loops (tests, A/B runs).
bool bf16_allowed() {
  static const bool yes = [] {
    const char* env = std::getenv("EDGESEQ_REL_ATTENTION");
    return env == nullptr || std::strcmp(env, "fp32") != 0;
  }();
  return yes;
}

}  // namespace

const char* rel_attention_isa() {
#ifdef EDGESEQ_X86
  if (has_bf16() && bf16_allowed()) return "avx512-bf16";
  // the levels Fp32Plan::rows's clones are resolved by
  if (__builtin_cpu_supports("x86-64-v4")) return "fp32-avx512";
  if (__builtin_cpu_supports("x86-64-v3")) return "fp32-avx2";
  return "fp32-sse2";
#elif defined(__aarch64__)
  return "fp32-neon";
#else
  return "fp32";
#endif
}

void rel_attention(const RelAttentionArgs& a, const ParallelFor& pfor) {
#ifdef EDGESEQ_X86
  if (has_bf16() && bf16_allowed() && bf16_shape(a)) {
    Bf16Plan plan(a);
    pfor(a.H, [&](int64_t b, int64_t e) { for (int64_t h = b; h < e; ++h) plan.pack(h); });
    const int64_t blocks = (a.S + kRows - 1) / kRows;
    pfor(a.H * blocks, [&](int64_t b, int64_t e) {
      std::vector<float> sc(static_cast<size_t>(kRows * plan.Sp));
      std::vector<uint32_t> pw(static_cast<size_t>(kRows * plan.Sp / 2)), qw(static_cast<size_t>(kRows * plan.P2));
      for (int64_t t = b; t < e; ++t) {
        if (a.Dh == 64) plan.rows<4>(t / blocks, (t % blocks) * kRows, sc.data(), pw.data(), qw.data());
        else plan.rows<2>(t / blocks, (t % blocks) * kRows, sc.data(), pw.data(), qw.data());
      }
    });
    return;
  }
#endif
  if (fp32_shape(a)) {
    Fp32Plan plan(a);
    pfor(a.H, [&](int64_t b, int64_t e) { for (int64_t h = b; h < e; ++h) plan.pack(h); });
    const int64_t blocks = (a.S + kF - 1) / kF;
    pfor(a.H * blocks, [&](int64_t b, int64_t e) {
      std::vector<float> sc(static_cast<size_t>(kF * plan.Sp));
      for (int64_t t = b; t < e; ++t) plan.rows(t / blocks, (t % blocks) * kF, sc.data());
    });
    return;
  }
  pfor(a.H * a.S, [&](int64_t b, int64_t e) { fp32_rows(a, b, e); });
}

}  // namespace edgeseq
