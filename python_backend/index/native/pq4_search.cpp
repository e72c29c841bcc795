// Fused routed search over 4-bit product-quantised lists: one call per batch does, for every query,
// the routing, the PQ scan, the re-rank of the best candidates and the aggregation into the top-k
// distinct classes. Built by python_backend/index/native/build.py (plain C ABI for ctypes), for the machine
// it runs on (-march=native): AVX-512 VNNI and AVX2 paths where the CPU has them, the portable loops
// elsewhere (and in the "portable" build the tests compare against). Every path computes the same
// integers, so the builds give the same answers.
//
// Per query (python_backend/index/native/pq4.py builds the tables):
// 1. Routing. Centroids and query are quantised to int8 (a scale per vector); the integer dot products
//    with every centroid give approximate route scores with a proven error bound per centroid. The
//    clusters whose bound reaches the nprobe-th best lower bound are scored again exactly (float32),
//    so the probes are exactly the nprobe best clusters.
// 2. Scan. Each cluster's entries fill whole blocks of 32 slots; a block stores, for each pair of
//    sub-quantisers p, 32 bytes (one per slot) whose low nibble is the code of sub-quantiser 2p and
//    whose high nibble that of 2p+1. The query's look-up table is quantised to uint8 (one scale, an
//    offset per sub-quantiser), so a block is scored with byte shuffles (AVX2 pshufb: 32 slots x 2
//    sub-quantisers per step) into uint16 sums. The best `fetch` entries form the candidate pool.
// 3. Re-rank. The pool's distinct rows are scored with 8-bit codes of the exact vectors (a step per
//    dimension; a table a quarter the size of the float32 one, more of it stays in cache), then the
//    rows still in contention with a 4-bit refinement (14 times finer), each time with a proven error
//    bound: a row that cannot be the best row of a top-k class is dropped. Only the rows left (about k
//    on the glyph set, of ~60) are read in float32 and scored exactly, so the answer is the one an exact
//    re-rank of the whole pool gives, at a fraction of its memory traffic.
// 4. The top-k distinct classes of the exact scores, each with its best score.
//
// Memory latency, not arithmetic, sets the pace: each worker keeps three queries in flight (Pipeline),
// so that one query's rows arrive while it computes another's.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MC_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define MC_VNNI 1
#endif
#endif

extern "C" {
// The arguments of one search (mirrored by routed_index_pq4.Args, field for field).
struct mc_pq4_args {
  int64_t nq, dim, m, nlist, nprobe, fetch, top_k, residual, threads;
  double probe_margin;         // probes past the best only while within this of its route score (inf: all nprobe)
  const float* xq_lut;         // [nq, dim] queries as the PQ sees them (rotated when OPQ)
  const float* xq;             // [nq, dim] queries
  const float* centroids;      // [nlist, dim] router, float32
  const int8_t* route_codes;   // [ceil(nlist / 16), dim4 / 4, 16, 4] int8 centroids (dim4: dim rounded up to 4)
  const float* route_scale;    // [ceil(nlist / 16) * 16] scale of each int8 centroid (0: padding)
  const float* route_l1;       // [..] scale x sum of |int8 centroid|, for the error bound
  const int32_t* route_sum;    // [..] sum of the int8 centroid (AVX-512 VNNI multiplies unsigned bytes)
  const float* pq_centroids;   // [m, dsub, 16] (transposed)
  const int64_t* list_block;   // [nlist] first block of each cluster
  const int64_t* list_size;    // [nlist] entries of each cluster
  const uint8_t* codes;        // [blocks, m/2, 32]
  const int32_t* slot_row;     // [blocks * 32] prototype row of each slot (-1: empty)
  const float* vectors;        // [rows, dim] exact prototypes
  const uint8_t* row_codes;    // [rows, dim + ceil(dim / 2)] codes of the prototypes, per row dim bytes of c8
                               // then c4 packed two per byte: x_d ~ lo_d + (c8 + (c4 - 7) / 14) step_d
  const float* row_step;       // [dim] step_d
  const int64_t* row_class;    // [rows] class of each row (-1: removed)
  int64_t* out_class;          // [nq, top_k]
  float* out_score;            // [nq, top_k]
  int64_t* out_counts;         // [4, nq] per query: entries scanned, distinct rows scored with their codes,
                               // rows scored in float32, clusters probed
};
}

namespace {

using Args = mc_pq4_args;

constexpr int kBlock = 32;          // slots per scan block
constexpr int kLanes = 16;          // centroids per block of the int8 routing table
constexpr int64_t kQueryBlock = 8;  // queries routed together (each centroid block is read once for all)
// Memory is requested ahead of use: lists are short runs (a few KiB) that the hardware prefetchers,
// which stop at page boundaries, pick up late; re-ranked rows are scattered.
constexpr int64_t kPrefetchBlocks = 16;

inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off);
}

inline int64_t dim4(int64_t dim) { return (dim + 3) / 4 * 4; }

// Order of (score, id) pairs: higher score first, then smaller id (answers do not depend on scan order).
template <typename S>
inline bool better_pair(const std::pair<S, int64_t>& x, const std::pair<S, int64_t>& y) {
  return x.first > y.first || (x.first == y.first && x.second < y.second);
}

// better_pair as a function object: the standard algorithms inline it (a function pointer is an
// indirect call per comparison in nth_element and partial_sort).
struct BetterPair {
  template <typename S>
  bool operator()(const std::pair<S, int64_t>& x, const std::pair<S, int64_t>& y) const {
    return better_pair<S>(x, y);
  }
};

// True when no x[0..n) is NaN or infinite (a NaN fails every comparison).
inline bool all_finite(const float* x, int64_t n) {
  bool ok = true;
  for (int64_t d = 0; d < n; ++d) ok &= std::fabs(x[d]) <= std::numeric_limits<float>::max();
  return ok;
}

// Byte position, within a block's 32 bytes of one sub-quantiser pair, of slot v's code. The AVX2 scorer
// sums 16-bit words (even and odd bytes apart, as FAISS's fast scan does) and yields the slots in the
// order of even bytes 0-14, odd bytes 1-15, even 16-30, odd 17-31; storing slot v at this position
// makes that order the slot order. routed_index_pq4.py lays the codes out with the same table.
constexpr int slot_byte(int v) { return (v / 16) * 16 + 2 * (v % 8) + (v % 16) / 8; }

// ---------------------------------------------------------------- SIMD kernels (and portable twins)
// uint16 sums of the 32 slots of one block into `out`.
inline void block_scores(const uint8_t* blk, const uint8_t* lut, int64_t pairs, uint16_t* out) {
#ifdef MC_AVX2
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  // words: sums of whole 16-bit words (even byte + 256 x odd byte, mod 2^16); odd: sums of odd bytes.
  __m256i words = _mm256_setzero_si256(), odd = _mm256_setzero_si256();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + p * kBlock));
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lut + p * 64));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lut + p * 64 + 32));
    const __m256i r0 = _mm256_shuffle_epi8(l0, _mm256_and_si256(c, low4));
    const __m256i r1 = _mm256_shuffle_epi8(l1, _mm256_and_si256(_mm256_srli_epi16(c, 4), low4));
    words = _mm256_add_epi16(words, _mm256_add_epi16(r0, r1));
    odd = _mm256_add_epi16(odd, _mm256_add_epi16(_mm256_srli_epi16(r0, 8), _mm256_srli_epi16(r1, 8)));
  }
  const __m256i even = _mm256_sub_epi16(words, _mm256_slli_epi16(odd, 8));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(even, odd, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), _mm256_permute2x128_si256(even, odd, 0x31));
#else
  for (int v = 0; v < kBlock; ++v) out[v] = 0;
  for (int64_t p = 0; p < pairs; ++p) {
    const uint8_t* c = blk + p * kBlock;
    const uint8_t* l0 = lut + p * 64;
    const uint8_t* l1 = l0 + 32;
    for (int v = 0; v < kBlock; ++v) {
      const uint8_t code = c[slot_byte(v)];
      out[v] = uint16_t(out[v] + l0[code & 15] + l1[code >> 4]);
    }
  }
#endif
}

// Bit mask of the 32 sums in `s` that are >= t (0 < t < 2^15: sums stay below 128 x 255 + 1).
inline uint32_t at_least32(const uint16_t* s, int32_t t) {
#ifdef MC_AVX2
  const __m256i thr = _mm256_set1_epi16(int16_t(t - 1));
  const __m256i a = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)), thr);
  const __m256i b = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 16)), thr);
  // packs interleaves 128-bit lanes: a[0-7], b[0-7], a[8-15], b[8-15] -> put back in order.
  return uint32_t(_mm256_movemask_epi8(_mm256_permute4x64_epi64(_mm256_packs_epi16(a, b), 0xD8)));
#else
  uint32_t mask = 0;
  for (int v = 0; v < kBlock; ++v) mask |= uint32_t(s[v] >= t) << v;
  return mask;
#endif
}

inline float dot(const float* a, const float* b, int64_t d) {
  int64_t i = 0;
  float s = 0.f;
#ifdef MC_AVX2
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (; i + 16 <= d; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= d; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  s0 = _mm256_add_ps(s0, s1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  s = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
#endif
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

// Sum of w[d] * code[d] over d < dim: int16 weights, 8-bit codes, int32 sums (the caller bounds the weights
// so that no sum overflows).
inline int32_t code_dot(const int16_t* w, const uint8_t* code, int64_t dim) {
  int64_t d = 0;
  int32_t s = 0;
#ifdef MC_AVX2
  __m256i acc = _mm256_setzero_si256();
  for (; d + 16 <= dim; d += 16) {
    const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(code + d)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d))));
  }
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4E));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xB1));
  s = _mm_cvtsi128_si32(h);
#endif
  for (; d < dim; ++d) s += int32_t(w[d]) * int32_t(code[d]);
  return s;
}

// Sum of w[d] * c4[d] over d < dim, c4 packed two per byte (dimension 2j in the low nibble of byte j).
inline int32_t nibble_dot(const int16_t* w, const uint8_t* packed, int64_t dim) {
  int64_t d = 0;
  int32_t s = 0;
#ifdef MC_AVX2
  const __m128i low4 = _mm_set1_epi8(0x0f);
  __m256i acc = _mm256_setzero_si256();
  for (; d + 32 <= dim; d += 32) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + d / 2));
    const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
    const __m256i c0 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(lo, hi));  // dimensions d .. d+15
    const __m256i c1 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(lo, hi));  // d+16 .. d+31
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d))));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d + 16))));
  }
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4E));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xB1));
  s = _mm_cvtsi128_si32(h);
#endif
  for (; d < dim; ++d) s += int32_t(w[d]) * int32_t((packed[d / 2] >> (4 * (d % 2))) & 15);
  return s;
}

// ---------------------------------------------------------------- routing
// A query quantised for routing: q ~ scale * q8, with |q8| <= 127; l1 = sum |q|.
struct RouteQuery {
  float scale = 0.f, l1 = 0.f;
};

RouteQuery quantise_query(const float* q, int64_t dim, int8_t* q8) {
  RouteQuery r;
  float top = 0.f;
  for (int64_t d = 0; d < dim; ++d) {
    top = std::max(top, std::fabs(q[d]));
    r.l1 += std::fabs(q[d]);
  }
  r.scale = top > 0.f ? top / 127.f : 0.f;
  const float inv = top > 0.f ? 127.f / top : 0.f;
  for (int64_t d = 0; d < dim4(dim); ++d) {
    const float v = d < dim ? q[d] * inv : 0.f;
    q8[d] = int8_t(std::max(-127.f, std::min(127.f, std::nearbyint(v))));
  }
  return r;
}

// Integer dot products of NB quantised queries (q8: [NB, dim4]) with the 16 centroids of one block of
// the routing table (blk: [dim4 / 4, 16, 4]) into dots[t * 16 + lane].
template <int NB>
void route_dots(const int8_t* q8, int64_t d4, const int8_t* blk, const int32_t* sum, int32_t* dots) {
#if defined(MC_VNNI)
  // vpdpbusd multiplies unsigned by signed bytes: the query goes in as q8 + 128 and 128 x the centroid's
  // sum comes off again.
  __m512i acc[NB];
  for (int t = 0; t < NB; ++t) acc[t] = _mm512_setzero_si512();
  for (int64_t j = 0; j < d4 / 4; ++j) {
    const __m512i c = _mm512_loadu_si512(blk + j * 64);
    for (int t = 0; t < NB; ++t) {
      uint32_t quad;
      std::memcpy(&quad, q8 + t * d4 + j * 4, 4);
      acc[t] = _mm512_dpbusd_epi32(acc[t], _mm512_set1_epi32(int32_t(quad ^ 0x80808080u)), c);
    }
  }
  const __m512i off = _mm512_slli_epi32(_mm512_loadu_si512(sum), 7);
  for (int t = 0; t < NB; ++t) _mm512_storeu_si512(dots + t * kLanes, _mm512_sub_epi32(acc[t], off));
#elif defined(MC_AVX2)
  // maddubs multiplies unsigned by signed bytes into int16 pairs: |q| by c with q's sign moved onto c
  // (|q|, |c| <= 127, so a pair sum stays below 2^15), then pairs of int16 summed into int32.
  (void)sum;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[NB][2];
  for (int t = 0; t < NB; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
  for (int64_t j = 0; j < d4 / 4; ++j) {
    const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + j * 64));
    const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + j * 64 + 32));
    for (int t = 0; t < NB; ++t) {
      uint32_t quad;
      std::memcpy(&quad, q8 + t * d4 + j * 4, 4);
      const __m256i qv = _mm256_set1_epi32(int32_t(quad));
      const __m256i qa = _mm256_sign_epi8(qv, qv);
      acc[t][0] = _mm256_add_epi32(acc[t][0], _mm256_madd_epi16(_mm256_maddubs_epi16(qa, _mm256_sign_epi8(c0, qv)), ones));
      acc[t][1] = _mm256_add_epi32(acc[t][1], _mm256_madd_epi16(_mm256_maddubs_epi16(qa, _mm256_sign_epi8(c1, qv)), ones));
    }
  }
  for (int t = 0; t < NB; ++t) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dots + t * kLanes), acc[t][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dots + t * kLanes + 8), acc[t][1]);
  }
#else
  (void)sum;
  for (int t = 0; t < NB; ++t)
    for (int l = 0; l < kLanes; ++l) {
      int32_t s = 0;
      for (int64_t j = 0; j < d4 / 4; ++j)
        for (int k = 0; k < 4; ++k) s += int32_t(q8[t * d4 + j * 4 + k]) * int32_t(blk[j * 64 + l * 4 + k]);
      dots[t * kLanes + l] = s;
    }
#endif
}

// Approximate route scores of n <= kQueryBlock quantised queries against every centroid:
// out[t * nlist + c] = scale_q * scale_c * (q8 . c8).
void route_approx(const Args& a, const int8_t* q8, const RouteQuery* rq, int64_t n, float* out) {
  const int64_t d4 = dim4(a.dim), blocks = (a.nlist + kLanes - 1) / kLanes;
  int32_t dots[kQueryBlock * kLanes];
  for (int64_t b = 0; b < blocks; ++b) {
    const int8_t* blk = a.route_codes + b * d4 * kLanes;
    const int32_t* sum = a.route_sum + b * kLanes;
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) route_dots<8>(q8 + t * d4, d4, blk, sum, dots + t * kLanes);
    for (; t + 4 <= n; t += 4) route_dots<4>(q8 + t * d4, d4, blk, sum, dots + t * kLanes);
    for (; t < n; ++t) route_dots<1>(q8 + t * d4, d4, blk, sum, dots + t * kLanes);
    const int64_t lanes = std::min<int64_t>(kLanes, a.nlist - b * kLanes);
    for (t = 0; t < n; ++t)
      for (int64_t l = 0; l < lanes; ++l)
        out[t * a.nlist + b * kLanes + l] = float(dots[t * kLanes + l]) * (rq[t].scale * a.route_scale[b * kLanes + l]);
  }
}

// ---------------------------------------------------------------- per-query steps
struct Block {
  int64_t block;   // index in the codes
  int32_t valid;   // slots in use (the cluster's last block may be partial)
  int64_t offset;  // added to its sums (residual codes: the cluster's route score, relative)
};

struct Candidate {
  int64_t score;  // code score (filter_rows: integer units of the query's weights)
  int64_t row, cls;
};

struct Workspace {
  std::vector<float> lower, upper;                 // per cluster: bounds of its route score
  std::vector<float> values;                       // scratch of select_probes
  std::vector<float> chunk_max;                    // select_probes: the largest lower bound per chunk
  std::vector<int64_t> picked;
  std::vector<std::pair<float, int64_t>> probes;   // (route score, cluster), the best nprobe
  std::vector<float> lut_f;
  std::vector<uint8_t> lut;
  float scale = 0.f;             // integer units of the look-up table per unit of score
  std::vector<int64_t> offsets;  // per probed cluster (residual codes): route score in table units
  std::vector<Block> blocks;     // scanned blocks, in scan order
  std::vector<uint16_t> scores;  // their sums, 32 per block
  std::vector<uint32_t> hist;
  std::vector<std::pair<int64_t, int64_t>> pool;  // (scan score, row) of the best `fetch` entries
  std::vector<std::pair<int64_t, int64_t>> tied;
  std::vector<std::pair<int64_t, int64_t>> sorted;  // scratch of distinct_rows
  std::vector<uint64_t> seen;                     // bit per row: in the pool already (all clear between queries)
  std::vector<int16_t> weights;                   // the query's weights for the rows' 8-bit codes
  std::vector<Candidate> cand;                    // rows still in contention (filter_rows)
  std::vector<int64_t> top_class;                 // scratch of keep_within
  std::vector<int64_t> top_score;
  std::vector<std::pair<float, int64_t>> exact;   // (exact score, class)
};

// The k-th largest value of v (1 <= k <= v.size()); reorders v.
template <typename T>
T kth_largest(std::vector<T>& v, int64_t k) {
  std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), [](T x, T y) { return x > y; });
  return v[k - 1];
}

// Bounds of the route scores of one query: lower[c] = approx[c] - b_c, upper[c] = approx[c] + b_c with
// b_c = (scale_c |q|_1 + scale_q |scale_c c8|_1) / 2 >= |q.c - approx[c]| (plus slack for float rounding
// in the scores and the bound), and the maxima of lower over chunks of kChunk clusters.
constexpr int64_t kChunk = 64;

void route_bounds(const Args& a, const float* __restrict approx, const RouteQuery& rq, float* __restrict lower,
                  float* __restrict upper, float* __restrict chunk_max) {
  const float l1 = rq.l1, qs = rq.scale;
  const float* __restrict scale = a.route_scale;
  const float* __restrict cl1 = a.route_l1;
  for (int64_t s = 0; s < a.nlist; s += kChunk) {
    const int64_t e = std::min(a.nlist, s + kChunk);
    int64_t c = s;
    float mx = -std::numeric_limits<float>::infinity();
#ifdef MC_AVX2
    __m256 vmx = _mm256_set1_ps(mx);
    for (; c + 8 <= e; c += 8) {
      const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(scale + c), _mm256_set1_ps(l1)),
                                     _mm256_mul_ps(_mm256_set1_ps(qs), _mm256_loadu_ps(cl1 + c)));
      const __m256 b = _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), t), _mm256_set1_ps(1.0001f)),
                                     _mm256_set1_ps(1e-6f));
      const __m256 ap = _mm256_loadu_ps(approx + c), lo = _mm256_sub_ps(ap, b);
      _mm256_storeu_ps(lower + c, lo);
      _mm256_storeu_ps(upper + c, _mm256_add_ps(ap, b));
      vmx = _mm256_max_ps(vmx, lo);
    }
    float m8[8];
    _mm256_storeu_ps(m8, vmx);
    for (float v : m8) mx = std::max(mx, v);
#endif
    for (; c < e; ++c) {
      const float b = 0.5f * (scale[c] * l1 + qs * cl1[c]) * 1.0001f + 1e-6f;
      lower[c] = approx[c] - b;
      upper[c] = approx[c] + b;
      mx = std::max(mx, lower[c]);
    }
    chunk_max[s / kChunk] = mx;
  }
}

// Bit mask of x[0..8) >= t.
inline uint32_t at_least8(const float* x, float t) {
#ifdef MC_AVX2
  return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x), _mm256_set1_ps(t), _CMP_GE_OQ)));
#else
  uint32_t mask = 0;
  for (int k = 0; k < 8; ++k) mask |= uint32_t(x[k] >= t) << k;
  return mask;
#endif
}

// Append to out the indices c < n with x[c] >= t.
void indices_at_least(const float* x, int64_t n, float t, std::vector<int64_t>& out) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (uint32_t m = at_least8(x + c, t); m; m &= m - 1) out.push_back(c + __builtin_ctz(m));
  for (; c < n; ++c)
    if (x[c] >= t) out.push_back(c);
}

// The `nprobe` best clusters of one query, exactly. t is the nprobe-th largest lower bound, so at least
// nprobe clusters score >= t, and a cluster whose upper bound is below t cannot be among the best
// nprobe; the others (typically a few more than nprobe) are scored in float32 and the best nprobe kept
// (ties: smaller cluster first). t is looked for only among the lower bounds at or above the
// nprobe-th largest chunk maximum (each maximum is one of the values, so t is at least that), in the
// chunks whose maximum reaches that. Adaptive probing: of those, the ones after the best whose score
// falls more than probe_margin below the best's are dropped (a query deep inside one cluster probes
// fewer), and clusters whose upper bound is below the best lower bound - probe_margin are not scored
// in float32 at all.
void select_probes(const Args& a, const float* approx, const RouteQuery& rq, const float* q, Workspace& w) {
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  const int64_t nlist = a.nlist, chunks = (nlist + kChunk - 1) / kChunk;
  w.lower.resize(nlist);
  w.upper.resize(nlist);
  w.chunk_max.resize(chunks);
  route_bounds(a, approx, rq, w.lower.data(), w.upper.data(), w.chunk_max.data());
  // With a probe margin nothing below (best lower bound) - margin is kept (rounded down: none is lost to
  // float rounding), so the threshold is at least that.
  const float best = *std::max_element(w.chunk_max.begin(), w.chunk_max.end());
  const float floor = std::isinf(a.probe_margin) ? kNone : std::nextafter(float(double(best) - a.probe_margin), kNone);
  w.values.assign(w.chunk_max.begin(), w.chunk_max.end());
  const float est = std::max(chunks >= a.nprobe ? kth_largest(w.values, a.nprobe) : kNone, floor);
  w.picked.clear();
  for (int64_t ch = 0; ch < chunks; ++ch) {
    if (w.chunk_max[ch] < est) continue;
    const int64_t s = ch * kChunk, n = std::min(nlist, s + kChunk) - s;
    const size_t from = w.picked.size();
    indices_at_least(w.lower.data() + s, n, est, w.picked);
    for (size_t k = from; k < w.picked.size(); ++k) w.picked[k] += s;
  }
  w.values.clear();
  for (int64_t c : w.picked) w.values.push_back(w.lower[c]);
  // t: the nprobe-th largest lower bound, or the floor when fewer than nprobe reach that (t is below it).
  const float t = std::max((int64_t)w.values.size() >= a.nprobe ? kth_largest(w.values, a.nprobe) : kNone, floor);
  w.picked.clear();
  indices_at_least(w.upper.data(), nlist, t, w.picked);
  w.probes.clear();
  for (int64_t c : w.picked) w.probes.emplace_back(dot(q, a.centroids + c * a.dim, a.dim), c);
  int64_t keep = std::min<int64_t>(a.nprobe, (int64_t)w.probes.size());
  std::partial_sort(w.probes.begin(), w.probes.begin() + keep, w.probes.end(), BetterPair());
  const double cut = double(w.probes[0].first) - a.probe_margin;
  while (keep > 1 && double(w.probes[keep - 1].first) < cut) --keep;
  w.probes.resize(keep);
}

// uint8 look-up table of one query, laid out per sub-quantiser as 32 bytes (the 16 entries twice:
// AVX2 shuffles within 128-bit lanes). Entry = round((q_j . c_jk - min_k q_j . c_jk) * scale), one
// scale for all sub-quantisers so that sums stay comparable. The centroids come transposed,
// [m, dsub, 16], so that every loop here is a plain 16-wide one the compiler vectorises.
void quantised_lut(const Args& a, const float* q, Workspace& w) {
  const int64_t m = a.m, dsub = a.dim / a.m;
  w.lut_f.resize(m * 16);
  float* f = w.lut_f.data();
  float range = 0.f;
  for (int64_t j = 0; j < m; ++j) {
    const float* qj = q + j * dsub;
    const float* ct = a.pq_centroids + j * dsub * 16;
#ifdef MC_AVX2
    // The loops below, 8 lanes at a time: the same float operations in the same order.
    __m256 v0 = _mm256_mul_ps(_mm256_set1_ps(qj[0]), _mm256_loadu_ps(ct));
    __m256 v1 = _mm256_mul_ps(_mm256_set1_ps(qj[0]), _mm256_loadu_ps(ct + 8));
    for (int64_t t = 1; t < dsub; ++t) {
      v0 = _mm256_add_ps(v0, _mm256_mul_ps(_mm256_set1_ps(qj[t]), _mm256_loadu_ps(ct + t * 16)));
      v1 = _mm256_add_ps(v1, _mm256_mul_ps(_mm256_set1_ps(qj[t]), _mm256_loadu_ps(ct + t * 16 + 8)));
    }
    __m256 lo8 = _mm256_min_ps(v0, v1), hi8 = _mm256_max_ps(v0, v1);
    lo8 = _mm256_min_ps(lo8, _mm256_permute2f128_ps(lo8, lo8, 1));
    hi8 = _mm256_max_ps(hi8, _mm256_permute2f128_ps(hi8, hi8, 1));
    lo8 = _mm256_min_ps(lo8, _mm256_shuffle_ps(lo8, lo8, 0x4E));
    hi8 = _mm256_max_ps(hi8, _mm256_shuffle_ps(hi8, hi8, 0x4E));
    lo8 = _mm256_min_ps(lo8, _mm256_shuffle_ps(lo8, lo8, 0xB1));  // every lane: the minimum
    hi8 = _mm256_max_ps(hi8, _mm256_shuffle_ps(hi8, hi8, 0xB1));
    _mm256_storeu_ps(f + j * 16, _mm256_sub_ps(v0, lo8));
    _mm256_storeu_ps(f + j * 16 + 8, _mm256_sub_ps(v1, lo8));
    const float spread = _mm256_cvtss_f32(_mm256_sub_ps(hi8, lo8));
    range = spread > range ? spread : range;
#else
    float v[16];
    for (int k = 0; k < 16; ++k) v[k] = qj[0] * ct[k];
    for (int64_t t = 1; t < dsub; ++t)
      for (int k = 0; k < 16; ++k) v[k] += qj[t] * ct[t * 16 + k];
    float lo = v[0], hi = v[0];
    for (int k = 1; k < 16; ++k) {
      lo = v[k] < lo ? v[k] : lo;
      hi = v[k] > hi ? v[k] : hi;
    }
    for (int k = 0; k < 16; ++k) f[j * 16 + k] = v[k] - lo;
    range = hi - lo > range ? hi - lo : range;
#endif
  }
  const float scale = range > 0.f ? 255.f / range : 0.f;
  w.scale = scale;
  w.lut.resize(m * 32);
  uint8_t* o = w.lut.data();
  for (int64_t j = 0; j < m; ++j) {
#ifdef MC_AVX2
    const __m256 sc = _mm256_set1_ps(scale), half = _mm256_set1_ps(0.5f), top = _mm256_set1_ps(255.f);
    const __m256i i0 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(f + j * 16), sc), half), top));
    const __m256i i1 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(f + j * 16 + 8), sc), half), top));
    const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(i0, i1), 0xD8);  // 16 x uint16, in order
    const __m128i b = _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j * 32), _mm256_set_m128i(b, b));
#else
    uint8_t b[16];
    for (int k = 0; k < 16; ++k) {
      const float v = f[j * 16 + k] * scale + 0.5f;  // >= 0.5: truncation rounds to nearest
      b[k] = uint8_t(int32_t(v < 255.f ? v : 255.f));
    }
    std::memcpy(o + j * 32, b, 16);
    std::memcpy(o + j * 32 + 16, b, 16);
#endif
  }
}

// Scan the probed clusters in two passes: score every block (sums kept in w.scores), then take the
// best `fetch` entries, found with a histogram (no sorting of all of them; entries tied at the cut are
// ordered by row). With residual codes a cluster's entries score q.centroid + sum, so each cluster adds
// its route score, in the table's integer units, to its sums. Leaves the candidates in w.pool with
// their scan scores (and their rows' codes and classes requested from memory); returns the entries scanned.
int64_t scan_lists(const Args& a, Workspace& w) {
  const int64_t pairs = a.m / 2, block_bytes = pairs * kBlock, row_bytes = a.dim + (a.dim + 1) / 2;
  // Per probed cluster: its offset above the smallest one (integer units), 0 without residual codes.
  int64_t base = std::numeric_limits<int64_t>::max(), top_offset = 0;
  w.offsets.clear();
  for (const auto& pr : w.probes) {
    const int64_t off = a.residual ? int64_t(std::floor(double(pr.first) * w.scale + 0.5)) : 0;
    w.offsets.push_back(off);
    base = std::min(base, off);
  }
  w.blocks.clear();
  int64_t scanned = 0;
  for (size_t p = 0; p < w.probes.size(); ++p) {
    const int64_t l = w.probes[p].second, size = a.list_size[l];
    const int64_t rel = std::min<int64_t>(w.offsets[p] - base, int64_t(1) << 40);
    top_offset = std::max(top_offset, rel);
    scanned += size;
    for (int64_t b = 0; b * kBlock < size; ++b)
      w.blocks.push_back({a.list_block[l] + b, int32_t(std::min<int64_t>(kBlock, size - b * kBlock)), rel});
  }
  const int64_t nb = (int64_t)w.blocks.size();
  w.scores.resize(nb * kBlock);
  for (int64_t b = 0; b < std::min(nb, kPrefetchBlocks); ++b) prefetch(a.codes + w.blocks[b].block * block_bytes, block_bytes);
  for (int64_t b = 0; b < nb; ++b) {
    if (b + kPrefetchBlocks < nb) {
      const int64_t ahead = w.blocks[b + kPrefetchBlocks].block;
      prefetch(a.codes + ahead * block_bytes, block_bytes);
      prefetch(a.slot_row + ahead * kBlock, kBlock * sizeof(int32_t));  // read in the second pass
    }
    block_scores(a.codes + w.blocks[b].block * block_bytes, w.lut.data(), pairs, w.scores.data() + b * kBlock);
  }
  // Histogram of the scores by their top bits (at most 512 bins), then the cut: the lowest bin whose
  // count with all bins above reaches `fetch`.
  const uint64_t top = uint64_t(255 * a.m) + uint64_t(top_offset);
  const int shift = std::max(0, 64 - __builtin_clzll(top | 1) - 9);
  w.hist.assign((top >> shift) + 1, 0);
  for (int64_t b = 0; b < nb; ++b) {
    const uint16_t* s = w.scores.data() + b * kBlock;
    const int64_t rel = w.blocks[b].offset;
    for (int v = 0; v < w.blocks[b].valid; ++v) ++w.hist[(s[v] + rel) >> shift];
  }
  int64_t bin = (int64_t)w.hist.size() - 1, above = 0;
  for (; bin > 0 && above + w.hist[bin] < a.fetch; --bin) above += w.hist[bin];
  const int64_t cut_lo = bin << shift, cut_hi = (bin + 1) << shift;
  // Everything at or above the cut bin's upper edge is in; of the cut bin, the best (fetch - above).
  w.pool.clear();
  w.tied.clear();
  for (int64_t b = 0; b < nb; ++b) {
    const Block& blk = w.blocks[b];
    const int64_t need = cut_lo - blk.offset;  // the sum this block's entries must reach
    if (need > 255 * a.m) continue;
    const uint16_t* s = w.scores.data() + b * kBlock;
    const int32_t* rows = a.slot_row + blk.block * kBlock;
    uint32_t mask = at_least32(s, int32_t(std::max<int64_t>(need, 0)));
    if (blk.valid < kBlock) mask &= (uint32_t(1) << blk.valid) - 1;  // the cluster's last, partial block
    for (; mask; mask &= mask - 1) {
      const int v = __builtin_ctz(mask);
      const int64_t score = s[v] + blk.offset;
      if (score >= cut_hi) {
        w.pool.emplace_back(score, rows[v]);
        prefetch(a.row_codes + rows[v] * row_bytes, row_bytes);  // scored soon
        __builtin_prefetch(a.row_class + rows[v]);
      } else {
        w.tied.emplace_back(score, rows[v]);
      }
    }
  }
  const int64_t want = std::max<int64_t>(0, a.fetch - (int64_t)w.pool.size());
  if ((int64_t)w.tied.size() > want) {
    if (want > 0) std::nth_element(w.tied.begin(), w.tied.begin() + (want - 1), w.tied.end(), BetterPair());
    w.tied.resize(want);
  }
  for (const auto& e : w.tied) {
    w.pool.push_back(e);
    prefetch(a.row_codes + e.second * row_bytes, row_bytes);
    __builtin_prefetch(a.row_class + e.second);
  }
  return scanned;
}

// Drop the pool's second copies of a row (a spilled row found in two clusters) and order it roughly
// best first: a counting sort on the top 5 bits of the scan score, which is cheap and enough for the
// re-rank's class lists (top_classes), to see good candidates early (a sorted input costs it a fifth).
// A bit per row marks the rows seen; the bits are cleared again before returning.
void distinct_rows(Workspace& w) {
  size_t n = 0;
  int64_t hi = std::numeric_limits<int64_t>::min(), lo = std::numeric_limits<int64_t>::max();
  for (const auto& e : w.pool) {
    const uint64_t r = uint64_t(e.second), word = r >> 6, bit = uint64_t(1) << (r & 63);
    if (word >= w.seen.size()) w.seen.resize(std::max<size_t>(word + 1, 2 * w.seen.size()), 0);
    if (w.seen[word] & bit) continue;
    w.seen[word] |= bit;
    w.pool[n++] = e;
    hi = std::max(hi, e.first);
    lo = std::min(lo, e.first);
  }
  w.pool.resize(n);
  for (const auto& e : w.pool) w.seen[uint64_t(e.second) >> 6] = 0;
  if (n < 2) return;
  constexpr int kBins = 32;
  int shift = 0;
  while (((hi - lo) >> shift) >= kBins) ++shift;
  uint32_t start[kBins + 1] = {};
  for (const auto& e : w.pool) ++start[((hi - e.first) >> shift) + 1];
  for (int b = 0; b < kBins; ++b) start[b + 1] += start[b];
  w.sorted.resize(n);
  for (const auto& e : w.pool) w.sorted[start[(hi - e.first) >> shift]++] = e;
  w.pool.swap(w.sorted);
}

// Position of id among the first n of ids, or n (AVX2: four at a time, no data-dependent branch per entry).
inline int64_t find_id(const int64_t* ids, int64_t n, int64_t id) {
  int64_t i = 0;
#ifdef MC_AVX2
  const __m256i want = _mm256_set1_epi64x(id);
  for (; i + 4 <= n; i += 4) {
    const __m256i eq = _mm256_cmpeq_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids + i)), want);
    const int mask = _mm256_movemask_pd(_mm256_castsi256_pd(eq));
    if (mask) return i + __builtin_ctz(uint32_t(mask));
  }
#endif
  for (; i < n; ++i)
    if (ids[i] == id) return i;
  return n;
}

// The best top_k distinct classes of (score, class) pairs into oc/os (ties: smaller class id first),
// kept as a short sorted list: a pair below the list's last entry costs one comparison. Returns how
// many classes were found (the rest of oc/os is left as it was).
template <typename S, typename It>
int64_t top_classes(It first, It last, int64_t top_k, int64_t* oc, S* os) {
  int64_t found = 0;
  for (It it = first; it != last; ++it) {
    const std::pair<S, int64_t> e = *it;
    if (found == top_k && !better_pair<S>(e, {os[found - 1], oc[found - 1]})) continue;
    int64_t at = find_id(oc, found, e.second);
    if (at < found) {  // the class is listed: keep its better score
      if (!better_pair<S>(e, {os[at], oc[at]})) continue;
    } else {
      at = found < top_k ? found++ : found - 1;  // a new class: a free place, or the last one's
    }
    for (; at > 0 && better_pair<S>(e, {os[at - 1], oc[at - 1]}); --at) {
      os[at] = os[at - 1];
      oc[at] = oc[at - 1];
    }
    os[at] = e.first;
    oc[at] = e.second;
  }
  return found;
}

// Keep the candidates that could still be the best row of a top-k class, every score being within
// `bound` of its true value (in the scores' units): a row scoring below (k-th best class) - 2 bound is
// beaten by k classes for certain, and a row of one of those k classes scoring below its class's best
// - 2 bound by a row of its own class. Keeps all when fewer than k classes are among them.
void keep_within(std::vector<Candidate>& cand, int64_t k, int64_t bound, Workspace& w) {
  std::vector<std::pair<int64_t, int64_t>>& by_score = w.tied;  // (score, class); tied is free by now
  by_score.clear();
  for (const auto& c : cand) by_score.emplace_back(c.score, c.cls);
  w.top_class.resize(k);
  w.top_score.resize(k);
  if (top_classes<int64_t>(by_score.begin(), by_score.end(), k, w.top_class.data(), w.top_score.data()) < k) return;
  const int64_t cut = w.top_score[k - 1] - 2 * bound;
  size_t n = 0;
  for (const auto& c : cand) {
    if (c.score < cut) continue;
    const int64_t t = find_id(w.top_class.data(), k, c.cls);
    if (t < k && c.score < w.top_score[t] - 2 * bound) continue;
    cand[n++] = c;
  }
  cand.resize(n);
}

// Re-rank the pool exactly, reading as few float32 rows as that allows (this filter, then exact_classes). Each distinct row is scored
// with its 8-bit code: s8 = sum_d w_d c8_d, with w_d = q_d step_d in integer units; then the rows still
// in (keep_within) with the 4-bit refinement too: s12 = 14 s8 + sum_d w_d (c4_d - 7), a 14 times finer
// scale. Bounds (integer units): code rounding, half a code unit per dimension, sum |w_d| / 2 at both
// scales; weight rounding, |w_d - round(w_d)| times the largest code value (255, 14 x 255 + 7). The
// rows left (w.cand) are scored exactly.
void filter_rows(const Args& a, int64_t i, Workspace& w) {
  const int64_t dim = a.dim, k = a.top_k, row_bytes = dim + (dim + 1) / 2;
  const float* q = a.xq + i * dim;
  // Weights: the largest |w_d| maps to wmax, small enough that no int32 sum of dim terms overflows.
  const float wmax = float(std::min(32767.0, std::floor(2147483647.0 / (255.0 * double(dim)))));
  float top = 0.f;
  for (int64_t d = 0; d < dim; ++d) top = std::max(top, std::fabs(q[d] * a.row_step[d]));
  const float unit = top > 0.f ? wmax / top : 0.f;  // integer units per unit of score
  w.weights.resize(dim);
  float half = 0.f, rounding = 0.f;
  int64_t wsum = 0;
  for (int64_t d = 0; d < dim; ++d) {
    const float exact = q[d] * a.row_step[d] * unit;
    const float r = std::max(-wmax, std::min(wmax, std::nearbyint(exact)));
    w.weights[d] = int16_t(r);
    wsum += int64_t(r);
    half += std::fabs(exact) * 0.5f;
    rounding += std::fabs(exact - r);
  }
  // Slack: float rounding of the sums above.
  const int64_t bound8 = int64_t(std::ceil((double(half) + 255.0 * double(rounding)) * 1.001)) + 1;
  const int64_t bound12 = int64_t(std::ceil((double(half) + 3577.0 * double(rounding)) * 1.001)) + 1;
  w.cand.clear();
  for (const auto& e : w.pool) {
    const int64_t cls = a.row_class[e.second];
    if (cls < 0) continue;  // removed
    w.cand.push_back({code_dot(w.weights.data(), a.row_codes + e.second * row_bytes, dim), e.second, cls});
  }
  keep_within(w.cand, k, bound8, w);
  for (auto& c : w.cand)
    c.score = 14 * c.score + nibble_dot(w.weights.data(), a.row_codes + c.row * row_bytes + dim, dim) - 7 * wsum;
  keep_within(w.cand, k, bound12, w);
  for (const auto& c : w.cand) prefetch(a.vectors + c.row * dim, dim * int64_t(sizeof(float)));  // read in exact_classes
}

// The exact scores of the rows filter_rows left, aggregated into the query's top-k distinct classes.
void exact_classes(const Args& a, int64_t i, Workspace& w) {
  const int64_t dim = a.dim;
  const float* q = a.xq + i * dim;
  w.exact.clear();
  for (const auto& c : w.cand) w.exact.emplace_back(dot(q, a.vectors + c.row * dim, dim), c.cls);
  a.out_counts[2 * a.nq + i] = (int64_t)w.cand.size();
  int64_t* oc = a.out_class + i * a.top_k;
  float* os = a.out_score + i * a.top_k;
  for (int64_t found = top_classes<float>(w.exact.begin(), w.exact.end(), a.top_k, oc, os); found < a.top_k; ++found) {
    oc[found] = -1;
    os[found] = -std::numeric_limits<float>::infinity();
  }
}

// The first half of a query's search: probes, look-up table, scan, distinct candidate rows (whose codes
// are requested from memory on the way).
void scan_query(const Args& a, int64_t i, const float* approx, const RouteQuery& rq, Workspace& w) {
  select_probes(a, approx, rq, a.xq + i * a.dim, w);
  quantised_lut(a, a.xq_lut + i * a.dim, w);
  a.out_counts[i] = scan_lists(a, w);
  a.out_counts[3 * a.nq + i] = (int64_t)w.probes.size();
  distinct_rows(w);
  a.out_counts[a.nq + i] = (int64_t)w.pool.size();
}

// A worker's queries in flight, three stages apart: while one query's memory requests (its rows' codes,
// then its float32 rows) are on their way, the worker computes another's. Per query, in order:
// scan_query, filter_rows, exact_classes; each step of the pipeline scans a new query, finishes the
// oldest and filters the one in between.
class Pipeline {
 public:
  explicit Pipeline(std::array<Workspace, 3>& w) : w_(w) {}

  void push(const Args& a, int64_t i, const float* approx, const RouteQuery& rq) {
    const int slot = next_slot();
    scan_query(a, i, approx, rq, w_[slot]);
    if (filtered_.first >= 0) exact_classes(a, filtered_.first, w_[filtered_.second]);
    filtered_ = scanned_;
    if (filtered_.first >= 0) filter_rows(a, filtered_.first, w_[filtered_.second]);
    scanned_ = {i, slot};
  }

  void flush(const Args& a) {
    if (filtered_.first >= 0) exact_classes(a, filtered_.first, w_[filtered_.second]);
    if (scanned_.first >= 0) {
      filter_rows(a, scanned_.first, w_[scanned_.second]);
      exact_classes(a, scanned_.first, w_[scanned_.second]);
    }
    scanned_ = filtered_ = {-1, 0};
  }

 private:
  int next_slot() const {
    for (int s = 0; s < 3; ++s)
      if ((scanned_.first < 0 || s != scanned_.second) && (filtered_.first < 0 || s != filtered_.second)) return s;
    return 0;  // unreachable: at most two slots are in use
  }

  std::array<Workspace, 3>& w_;
  std::pair<int64_t, int> scanned_{-1, 0}, filtered_{-1, 0};  // (query, workspace slot); -1: none
};

// One batch as a list of tasks taken in order by every worker: routing a block of kQueryBlock
// queries (one pass over the routing table for all of them) and searching one query. Block b+1 is
// routed before the queries of block b are handed out, so a query's routes are almost always ready;
// the per-query tasks spread uneven query costs over the workers (whole blocks did not: 1.5x on 2 cores).
class Batch {
 public:
  Batch(const Args& a, std::vector<float>& route) : a_(a), route_(route) {
    blocks_ = (a.nq + kQueryBlock - 1) / kQueryBlock;
    route_.resize(blocks_ * kQueryBlock * a.nlist);
    rq_.resize(blocks_ * kQueryBlock);
    ready_.reset(new std::atomic<bool>[blocks_]);
    for (int64_t b = 0; b < blocks_; ++b) ready_[b].store(false, std::memory_order_relaxed);
    tasks_.reserve(blocks_ + a.nq);
    tasks_.push_back(-1);  // route block 0
    for (int64_t b = 0; b < blocks_; ++b) {
      if (b + 1 < blocks_) tasks_.push_back(-(b + 2));  // route block b + 1
      for (int64_t i = b * kQueryBlock; i < std::min(a.nq, (b + 1) * kQueryBlock); ++i) tasks_.push_back(i);
    }
  }

  void work(std::array<Workspace, 3>& w, std::vector<int8_t>& q8) {
    const int64_t d4 = dim4(a_.dim);
    q8.resize(kQueryBlock * d4);
    Pipeline pipe(w);
    for (size_t t; (t = next_.fetch_add(1)) < tasks_.size();) {
      const int64_t task = tasks_[t];
      if (task < 0) {
        const int64_t b = -task - 1, q0 = b * kQueryBlock, n = std::min(a_.nq, q0 + kQueryBlock) - q0;
        for (int64_t k = 0; k < n; ++k) rq_[q0 + k] = quantise_query(a_.xq + (q0 + k) * a_.dim, a_.dim, q8.data() + k * d4);
        route_approx(a_, q8.data(), rq_.data() + q0, n, route_.data() + q0 * a_.nlist);
        ready_[b].store(true, std::memory_order_release);
      } else {
        while (!ready_[task / kQueryBlock].load(std::memory_order_acquire)) std::this_thread::yield();
        pipe.push(a_, task, route_.data() + task * a_.nlist, rq_[task]);
      }
    }
    pipe.flush(a_);
  }

 private:
  const Args& a_;
  std::vector<float>& route_;  // [blocks * kQueryBlock, nlist] approximate route scores
  std::vector<RouteQuery> rq_;
  int64_t blocks_;
  std::unique_ptr<std::atomic<bool>[]> ready_;
  std::vector<int64_t> tasks_;  // query i >= 0, or -(b + 1): route block b
  std::atomic<size_t> next_{0};
};

// Worker threads kept between calls (starting threads for each batch cost ~10 % at batch 64). One
// batch at a time: a call that finds the pool busy (another Python thread searching) runs on its own
// thread alone. Waiting threads first spin for up to kSpin (a worker asleep takes tens of microseconds
// to wake, a few percent of a batch of 64), then sleep. Never destroyed: its threads are detached and
// end with the process; a forked child starts a pool of its own.
class Pool {
 public:
  static Pool& instance() {
    static std::mutex create;
    static Pool* pool = nullptr;
    std::lock_guard<std::mutex> lk(create);
    if (pool == nullptr || pool->pid_ != getpid()) pool = new Pool();  // a child's copy of threads is gone
    return *pool;
  }

  // Run fn on `workers` threads (the caller's among them) and wait for all of them.
  void run(int64_t workers, const std::function<void()>& fn) {
    std::unique_lock<std::mutex> busy(run_, std::try_to_lock);
    if (workers <= 1 || !busy.owns_lock()) return fn();
    {
      std::lock_guard<std::mutex> lk(mu_);
      while ((int64_t)started_ < workers - 1) {
        std::thread(&Pool::loop, this, started_++).detach();
      }
      job_ = &fn;
      wanted_ = size_t(workers - 1);
      active_.store(wanted_, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    start_.notify_all();
    fn();
    if (!spin_until([&] { return active_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(mu_);
      done_.wait(lk, [&] { return active_.load(std::memory_order_acquire) == 0; });
    }
    job_ = nullptr;
  }

 private:
  static constexpr std::chrono::microseconds kSpin{100};

  Pool() : pid_(getpid()) {}

  // Spin until ready() or kSpin has passed; true when ready.
  template <typename F>
  static bool spin_until(F ready) {
    const auto end = std::chrono::steady_clock::now() + kSpin;
    for (int i = 0;; ++i) {
      if (ready()) return true;
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > end) return false;
#ifdef MC_AVX2
      _mm_pause();
#else
      std::this_thread::yield();
#endif
    }
  }

  void loop(size_t id) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void()>* job;
      spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
      {
        std::unique_lock<std::mutex> lk(mu_);
        start_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
        seen = generation_.load(std::memory_order_relaxed);
        if (id >= wanted_) continue;  // not needed for this batch
        job = job_;
      }
      (*job)();
      if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(mu_);  // the caller may be about to sleep: wake it under the lock
        done_.notify_one();
      }
    }
  }

  const pid_t pid_;
  std::mutex run_, mu_;
  std::condition_variable start_, done_;
  const std::function<void()>* job_ = nullptr;
  size_t started_ = 0, wanted_ = 0;
  std::atomic<size_t> active_{0};
  std::atomic<uint64_t> generation_{0};
};

}  // namespace

extern "C" {

// Which kernels this build uses: 2 AVX-512 VNNI routing with AVX2 elsewhere, 1 AVX2, 0 portable loops.
int mc_pq4_simd() {
#if defined(MC_VNNI)
  return 2;
#elif defined(MC_AVX2)
  return 1;
#else
  return 0;
#endif
}

// Search args->nq queries with args->threads workers; returns 0, -1 for arguments the caller should
// have refused, or -(2 + i) when query i is the first with a NaN or infinite value (checked here, in
// one pass over the batch, so that the caller need not: ~3 % of a batch of 64 in Python).
int mc_pq4_search(const mc_pq4_args* args) {
  const Args& a = *args;
  if (a.m <= 0 || a.m % 2 || a.m > 128 || a.dim % a.m || a.nprobe < 1 || a.nprobe > a.nlist || a.fetch < 1 ||
      a.top_k < 1 || !(a.probe_margin >= 0))
    return -1;
  for (int64_t i = 0; i < a.nq; ++i)
    if (!all_finite(a.xq + i * a.dim, a.dim)) return int(-2 - std::min<int64_t>(i, INT32_MAX - 2));
  thread_local std::vector<float> route;  // the caller's, kept between batches (no page faults)
  Batch batch(a, route);
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(a.threads, (a.nq + 1) / 2));
  const std::function<void()> work = [&]() {
    thread_local std::array<Workspace, 3> w;  // buffers kept between batches
    thread_local std::vector<int8_t> q8;
    batch.work(w, q8);
  };
  Pool::instance().run(workers, work);
  return 0;
}

}  // extern "C"
