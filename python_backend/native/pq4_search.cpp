// Fused routed search over 4-bit product-quantised lists: one call per batch does, for every query,
// cluster selection, the PQ scan, the exact re-rank of the best candidates and the aggregation into
// the top-k distinct classes. Built by python_backend/native_build.py (plain C ABI for ctypes), for
// the machine it runs on (-march=native): the AVX2 paths below are compiled where the CPU has AVX2,
// the portable loops elsewhere (and in the "portable" build the tests compare against).
//
// Scan layout (python_backend/routed_index_pq4.py builds it): the entries of each cluster fill whole
// blocks of 32 slots; a block stores, for each pair of sub-quantisers p, 32 bytes (one per slot) whose
// low nibble is the code of sub-quantiser 2p and whose high nibble that of 2p+1. A query's look-up
// table is quantised to uint8 (one scale, an offset per sub-quantiser), so a block is scored with
// byte shuffles (AVX2 pshufb: 32 slots x 2 sub-quantisers per step) into uint16 sums; the portable
// loops compute the same integers.
#include <unistd.h>

#include <algorithm>
#include <atomic>
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
#endif

namespace {

constexpr int kBlock = 32;          // slots per scan block
constexpr int64_t kQueryBlock = 8;  // queries routed together (each centroid row is read once per block)
// Memory is requested ahead of use: lists are short runs (a few KiB) that the hardware prefetchers,
// which stop at page boundaries, pick up late; re-ranked rows are scattered.
constexpr int64_t kPrefetchBlocks = 16;
constexpr int64_t kPrefetchRows = 8;

inline void prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off);
}

struct Args {
  int64_t nq, dim, m, nlist, nprobe, fetch, top_k;
  int64_t residual;           // 1: codes are of x - centroid (a cluster's score adds q.centroid)
  const float* xq_lut;        // [nq, dim] queries as the PQ sees them (rotated when OPQ)
  const float* xq;            // [nq, dim] queries
  const float* pq_centroids;  // [m, dsub, 16] (transposed)
  const float* centroids;     // [nlist, dim] router
  const int64_t* list_block;  // [nlist] first block of each cluster
  const int64_t* list_size;   // [nlist] entries of each cluster
  const uint8_t* codes;       // [blocks, m/2, 32]
  const int64_t* slot_row;    // [blocks * 32] prototype row of each slot (-1: empty)
  const float* vectors;       // [rows, dim] exact prototypes
  const int64_t* row_class;   // [rows] class of each row (-1: removed)
  int64_t* out_class;         // [nq, top_k]
  float* out_score;           // [nq, top_k]
  int64_t* out_scanned;       // [nq]
};

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

// Bit mask of x[0..8) above t.
inline uint32_t above8(const float* x, float t) {
#ifdef MC_AVX2
  return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x), _mm256_set1_ps(t), _CMP_GT_OQ)));
#else
  uint32_t mask = 0;
  for (int k = 0; k < 8; ++k) mask |= uint32_t(x[k] > t) << k;
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

// Route scores of NB queries (rows of q) against every centroid, out[t * nlist + c]. With AVX2 each
// centroid row is loaded once and multiplied into NB accumulators (dim % 8 == 0).
template <int NB>
void route_block(const float* q, const float* cent, int64_t nlist, int64_t dim, float* out) {
#ifdef MC_AVX2
  if (dim % 8 == 0) {
    for (int64_t c = 0; c < nlist; ++c) {
      const float* cr = cent + c * dim;
      // R independent sums per query, so that few queries still keep several FMAs in flight.
      constexpr int R = NB >= 4 ? 1 : 4 / NB;
      __m256 acc[NB][R];
      for (int t = 0; t < NB; ++t)
        for (int r = 0; r < R; ++r) acc[t][r] = _mm256_setzero_ps();
      for (int64_t k = 0; k < dim; k += 8 * R)
        for (int r = 0; r < R && k + 8 * r < dim; ++r) {
          const __m256 cv = _mm256_loadu_ps(cr + k + 8 * r);
          for (int t = 0; t < NB; ++t)
            acc[t][r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + t * dim + k + 8 * r), cv, acc[t][r]);
        }
      for (int t = 0; t < NB; ++t) {
        __m256 sum = acc[t][0];
        for (int r = 1; r < R; ++r) sum = _mm256_add_ps(sum, acc[t][r]);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        out[t * nlist + c] = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
      }
    }
    return;
  }
#endif
  for (int64_t c = 0; c < nlist; ++c)
    for (int t = 0; t < NB; ++t) out[t * nlist + c] = dot(q + t * dim, cent + c * dim, dim);
}

// Route scores of n <= 8 queries: 8, 4, 2 and 1 at a time.
void route(const float* q, int64_t n, const float* cent, int64_t nlist, int64_t dim, float* out) {
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) route_block<8>(q + t * dim, cent, nlist, dim, out + t * nlist);
  for (; t + 4 <= n; t += 4) route_block<4>(q + t * dim, cent, nlist, dim, out + t * nlist);
  for (; t + 2 <= n; t += 2) route_block<2>(q + t * dim, cent, nlist, dim, out + t * nlist);
  for (; t < n; ++t) route_block<1>(q + t * dim, cent, nlist, dim, out + t * nlist);
}

// ---------------------------------------------------------------- per-query steps
struct Block {
  int64_t block;   // index in the codes
  int32_t valid;   // slots in use (the cluster's last block may be partial)
  int64_t offset;  // added to its sums (residual codes: the cluster's route score, relative)
};

struct Workspace {
  std::vector<std::pair<float, int64_t>> probes;  // (route score, cluster)
  std::vector<float> lut_f;
  std::vector<uint8_t> lut;
  float scale = 0.f;             // integer units of the look-up table per unit of score
  std::vector<int64_t> offsets;  // per probed cluster (residual codes): route score in table units
  std::vector<Block> blocks;     // scanned blocks, in scan order
  std::vector<uint16_t> scores;  // their sums, 32 per block
  std::vector<uint32_t> hist;
  std::vector<int64_t> rows;
  std::vector<std::pair<int64_t, int64_t>> tied;
  std::vector<std::pair<float, int64_t>> exact;  // (score, class)

};

// The `nprobe` best clusters of one row of route scores (a min-heap of the best so far, whose
// smallest score is kept in a register: most clusters are rejected by one comparison of 8).
void select_probes(const float* scores, int64_t nlist, int64_t nprobe, std::vector<std::pair<float, int64_t>>& heap) {
  auto cmp = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) { return a.first > b.first; };
  heap.clear();
  for (int64_t c = 0; c < nprobe; ++c) heap.emplace_back(scores[c], c);
  std::make_heap(heap.begin(), heap.end(), cmp);
  float worst = heap.front().first;
  auto offer = [&](int64_t c) {
    if (!(scores[c] > worst)) return;
    std::pop_heap(heap.begin(), heap.end(), cmp);
    heap.back() = {scores[c], c};
    std::push_heap(heap.begin(), heap.end(), cmp);
    worst = heap.front().first;
  };
  int64_t c = nprobe;
  for (; c + 8 <= nlist; c += 8)
    for (uint32_t above = above8(scores + c, worst); above; above &= above - 1) offer(c + __builtin_ctz(above));
  for (; c < nlist; ++c) offer(c);
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
  }
  const float scale = range > 0.f ? 255.f / range : 0.f;
  w.scale = scale;
  w.lut.resize(m * 32);
  uint8_t* o = w.lut.data();
  for (int64_t j = 0; j < m; ++j) {
    uint8_t b[16];
    for (int k = 0; k < 16; ++k) {
      const float v = f[j * 16 + k] * scale + 0.5f;  // >= 0.5: truncation rounds to nearest
      b[k] = uint8_t(int32_t(v < 255.f ? v : 255.f));
    }
    std::memcpy(o + j * 32, b, 16);
    std::memcpy(o + j * 32 + 16, b, 16);
  }
}

// Scan the probed clusters in two passes: score every block (sums kept in w.scores), then take the
// rows of the best `fetch` scores, found with a histogram (no sorting of all of them; entries tied at
// the cut are ordered by row). With residual codes a cluster's entries score q.centroid + sum, so each
// cluster adds its route score, in the table's integer units, to its sums. Leaves the candidate rows
// in w.rows; returns the entries scanned.
int64_t scan_lists(const Args& a, Workspace& w) {
  const int64_t pairs = a.m / 2, block_bytes = pairs * kBlock;
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
      prefetch(a.slot_row + ahead * kBlock, kBlock * sizeof(int64_t));  // read in the second pass
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
  w.rows.clear();
  w.tied.clear();
  for (int64_t b = 0; b < nb; ++b) {
    const Block& blk = w.blocks[b];
    const int64_t need = cut_lo - blk.offset;  // the sum this block's entries must reach
    if (need > 255 * a.m) continue;
    const uint16_t* s = w.scores.data() + b * kBlock;
    const int64_t* rows = a.slot_row + blk.block * kBlock;
    uint32_t mask = at_least32(s, int32_t(std::max<int64_t>(need, 0)));
    if (blk.valid < kBlock) mask &= (uint32_t(1) << blk.valid) - 1;  // the cluster's last, partial block
    for (; mask; mask &= mask - 1) {
      const int v = __builtin_ctz(mask);
      const int64_t score = s[v] + blk.offset;
      if (score >= cut_hi) {
        w.rows.push_back(rows[v]);
        prefetch(a.vectors + rows[v] * a.dim, a.dim * int64_t(sizeof(float)));  // re-ranked soon
      } else {
        w.tied.emplace_back(score, rows[v]);
      }
    }
  }
  const int64_t want = std::max<int64_t>(0, a.fetch - (int64_t)w.rows.size());
  if ((int64_t)w.tied.size() > want) {
    auto better = [](const auto& x, const auto& y) { return x.first > y.first || (x.first == y.first && x.second < y.second); };
    if (want > 0) std::nth_element(w.tied.begin(), w.tied.begin() + (want - 1), w.tied.end(), better);
    w.tied.resize(want);
  }
  for (const auto& t : w.tied) w.rows.push_back(t.second);
  return scanned;
}

void search_one(const Args& a, int64_t i, const float* route, Workspace& w) {
  select_probes(route, a.nlist, a.nprobe, w.probes);
  quantised_lut(a, a.xq_lut + i * a.dim, w);
  a.out_scanned[i] = scan_lists(a, w);
  // Exact re-rank of the distinct candidate rows (a spilled row may have been found twice), each row
  // requested kPrefetchRows rows ahead so that the cache misses overlap.
  std::sort(w.rows.begin(), w.rows.end());
  w.rows.erase(std::unique(w.rows.begin(), w.rows.end()), w.rows.end());
  const int64_t nr = (int64_t)w.rows.size(), row_bytes = a.dim * int64_t(sizeof(float));
  for (int64_t k = 0; k < nr; ++k) __builtin_prefetch(a.row_class + w.rows[k]);
  for (int64_t k = 0; k < std::min<int64_t>(nr, kPrefetchRows); ++k) prefetch(a.vectors + w.rows[k] * a.dim, row_bytes);
  w.exact.clear();
  const float* q = a.xq + i * a.dim;
  for (int64_t k = 0; k < nr; ++k) {
    if (k + kPrefetchRows < nr) prefetch(a.vectors + w.rows[k + kPrefetchRows] * a.dim, row_bytes);
    const int64_t r = w.rows[k];
    const int64_t cls = a.row_class[r];
    if (cls < 0) continue;  // removed
    w.exact.emplace_back(dot(q, a.vectors + r * a.dim, a.dim), cls);
  }
  // The best top_k distinct classes, each with its best score (ties: smaller class id first). Sorted
  // are only the best 3 x top_k entries, unless fewer than top_k classes are among them.
  auto better = [](const auto& x, const auto& y) { return x.first > y.first || (x.first == y.first && x.second < y.second); };
  int64_t* oc = a.out_class + i * a.top_k;
  float* os = a.out_score + i * a.top_k;
  int64_t found = 0;
  const int64_t ne = (int64_t)w.exact.size();
  for (int64_t head = std::min(ne, 3 * a.top_k);; head = ne) {
    std::partial_sort(w.exact.begin(), w.exact.begin() + head, w.exact.end(), better);
    found = 0;
    for (int64_t e = 0; e < head && found < a.top_k; ++e) {
      const int64_t cls = w.exact[e].second;
      bool seen = false;
      for (int64_t t = 0; t < found && !seen; ++t) seen = oc[t] == cls;
      if (seen) continue;
      oc[found] = cls;
      os[found] = w.exact[e].first;
      ++found;
    }
    if (found == a.top_k || head == ne) break;
  }
  for (; found < a.top_k; ++found) {
    oc[found] = -1;
    os[found] = -std::numeric_limits<float>::infinity();
  }
}

// One batch as a list of tasks taken in order by every worker: routing a block of kQueryBlock
// queries (one pass over the centroids for all of them) and searching one query. Block b+1 is routed
// before the queries of block b are handed out, so a query's routes are almost always ready; the
// per-query tasks spread uneven query costs over the workers (whole blocks did not: 1.5x on 2 cores).
class Batch {
 public:
  Batch(const Args& a, std::vector<float>& route) : a_(a), route_(route) {
    blocks_ = (a.nq + kQueryBlock - 1) / kQueryBlock;
    route_.resize(blocks_ * kQueryBlock * a.nlist);
    ready_.reset(new std::atomic<bool>[blocks_]);
    for (int64_t b = 0; b < blocks_; ++b) ready_[b].store(false, std::memory_order_relaxed);
    tasks_.reserve(blocks_ + a.nq);
    tasks_.push_back(-1);  // route block 0
    for (int64_t b = 0; b < blocks_; ++b) {
      if (b + 1 < blocks_) tasks_.push_back(-(b + 2));  // route block b + 1
      for (int64_t i = b * kQueryBlock; i < std::min(a.nq, (b + 1) * kQueryBlock); ++i) tasks_.push_back(i);
    }
  }

  int64_t blocks() const { return blocks_; }

  void work(Workspace& w) {
    for (size_t t; (t = next_.fetch_add(1)) < tasks_.size();) {
      const int64_t task = tasks_[t];
      if (task < 0) {
        const int64_t b = -task - 1, q0 = b * kQueryBlock;
        route(a_.xq + q0 * a_.dim, std::min(a_.nq, q0 + kQueryBlock) - q0, a_.centroids, a_.nlist, a_.dim,
              route_.data() + q0 * a_.nlist);
        ready_[b].store(true, std::memory_order_release);
      } else {
        while (!ready_[task / kQueryBlock].load(std::memory_order_acquire)) std::this_thread::yield();
        search_one(a_, task, route_.data() + task * a_.nlist, w);
      }
    }
  }

 private:
  const Args& a_;
  std::vector<float>& route_;  // [blocks * kQueryBlock, nlist]
  int64_t blocks_;
  std::unique_ptr<std::atomic<bool>[]> ready_;
  std::vector<int64_t> tasks_;  // query i >= 0, or -(b + 1): route block b
  std::atomic<size_t> next_{0};
};

// Worker threads kept between calls (starting threads for each batch cost ~10 % at batch 64). One
// batch at a time: a call that finds the pool busy (another Python thread searching) runs on its own
// thread alone. Never destroyed: its threads are detached and end with the process; a forked child
// starts a pool of its own.
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
      active_ = wanted_;
      ++generation_;
    }
    start_.notify_all();
    fn();
    std::unique_lock<std::mutex> lk(mu_);
    done_.wait(lk, [&] { return active_ == 0; });
    job_ = nullptr;
  }

 private:
  Pool() : pid_(getpid()) {}

  void loop(size_t id) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void()>* job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        start_.wait(lk, [&] { return generation_ != seen && id < wanted_; });
        seen = generation_;
        job = job_;
      }
      (*job)();
      std::lock_guard<std::mutex> lk(mu_);
      if (--active_ == 0) done_.notify_one();
    }
  }

  const pid_t pid_;
  std::mutex run_, mu_;
  std::condition_variable start_, done_;
  const std::function<void()>* job_ = nullptr;
  size_t started_ = 0, wanted_ = 0, active_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace

extern "C" {

// 1 when this build uses the AVX2 kernels, 0 for the portable loops.
int mc_pq4_simd() {
#ifdef MC_AVX2
  return 1;
#else
  return 0;
#endif
}

// Search `nq` queries with `threads` workers; returns 0, or -1 for arguments the caller should have refused.
int mc_pq4_search(int64_t nq, int64_t dim, int64_t m, int64_t residual, const float* xq_lut, const float* xq, const float* pq_centroids,
                  const float* centroids, int64_t nlist, int64_t nprobe, const int64_t* list_block,
                  const int64_t* list_size, const uint8_t* codes, const int64_t* slot_row, const float* vectors,
                  const int64_t* row_class, int64_t fetch, int64_t top_k, int64_t threads, int64_t* out_class,
                  float* out_score, int64_t* out_scanned) {
  if (m <= 0 || m % 2 || m > 128 || dim % m || nprobe < 1 || nprobe > nlist || fetch < 1 || top_k < 1) return -1;
  const Args a{nq,        dim,        m,     nlist,    nprobe,   fetch,     top_k,     residual, xq_lut,
               xq,        pq_centroids, centroids, list_block, list_size, codes, slot_row, vectors,
               row_class, out_class,  out_score, out_scanned};
  thread_local std::vector<float> route;  // the caller's, kept between batches (no page faults)
  Batch batch(a, route);
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, (nq + 1) / 2));
  const std::function<void()> work = [&]() {
    thread_local Workspace w;  // buffers kept between batches
    batch.work(w);
  };
  Pool::instance().run(workers, work);
  return 0;
}

}  // extern "C"
