// Row-wise top-k on the GPU: the CUDA twin of native/cpu/topk.cc (contract:
// TopkArgs in core/ops.h; methods.md "Top-k selection").
//
// Formula. Row r, n = len[r] (lengths null: row_stride), kk = min(k[r], n):
// the kk positions first in the order (score desc, index asc), written as
// ascending indices to out[r, 0 .. kk), -1 after, count[r] = kk. Scores compare
// as reals (-0 == +0). NaN anywhere in a scanned row -> Status::NaN and nothing
// written. Exact: the result is a set of integers.
//
// Keys. A float's bits map to an unsigned key with key(a) < key(b) <=> a < b
// (negative: ~u, else u | 2^31; -0 first becomes +0), so selection is on
// integers.
//
// Two kernels, same result; the first takes the common case in one read.
//
// A. Sampled filter (topk_filter_kernel; row_stride in (6144, 8 x 16K] (16K
//    below sm_90), rows with 0 < k < len and k <= 6144):
//    a cluster of CS blocks per row (CS <= 8, sm_90 thread-block clusters;
//    CS = 1 on older GPUs), 512 threads, each block a segment of <= 16K keys.
//  1. Sample (rows longer than kCap = 6144): each warp reads 32 consecutive
//     values at the start of its 1/16 of the segment (one 128-byte line; the
//     main pass finds it in L2), so the cluster holds S <= 4096 values spread
//     over 128 strata of the row. Every block gathers the whole sample through
//     distributed shared memory and finds the same threshold T = the r-th
//     largest sampled key, r = mu + 4 sqrt(mu) + 4 with mu = kk S / n: the
//     number of sampled keys among the row's top kk is about Poisson(mu), so
//     count(key >= T) >= kk fails with probability < 1e-4, and the expected
//     count r n / S must stay <= 0.6 kCap (else the row goes to B at once).
//     Rows of <= kCap keys take T = 0 (every key a candidate).
//  2. One pass over the segment (8 float4 loads per thread issued together):
//     NaN check, and the keys >= T compacted into shared memory in index order
//     (per tile of 2048 keys: a warp scan of each thread's count, the 16 warp
//     totals through shared memory).
//  3. The cluster sums the counts C. If kk <= C <= kCap, the answer lies among
//     the candidates (every key left out is below T <= the kk-th largest, and
//     every key equal to the kk-th largest is in, in index order, so "ties: the
//     lower index wins" still holds): block 0 gathers them (block order = index
//     order), the others exit, and block 0 radix-selects the kk-th largest among
//     <= 6144 keys (11/11/10-bit digits, stopping at a bucket taken whole) and
//     emits. Otherwise the row is marked for B (A writes every row's mark,
//     so nothing needs zeroing first: no memset between the launches).
//    Cost: one read of the row (the sample lines are read once from HBM) plus
//    O(kCap) work per row, against B's four radix passes and two emission
//    passes over the whole segment.
//
// B. Cluster radix select (topk_kernel; every row A does not take: A's list,
//    or all rows when A does not apply), 512 threads per block:
//  1. Load: block c of the cluster reads its segment of the row once from HBM
//     (16-byte loads when aligned), checks NaN, keeps the keys in shared memory
//     (the segment is <= 16K keys at row_stride <= 128K, so two blocks fit an
//     SM), and counts the top 8 bits into per-warp histograms (per-warp copies:
//     score rows are concentrated in a few exponent buckets, and one shared
//     histogram would serialise on them).
//  2. Select: 4 digits of 8 bits, high to low. Each block's histogram is summed
//     with the other blocks' through distributed shared memory; every block
//     derives the same bucket holding the kk-th largest. Result: prefix P under
//     mask M and `need`: the selected are (key & M) > P, plus the first `need`
//     (index order) of (key & M) == P (all of them when a bucket is taken whole).
//     Passes 2-4 read shared memory only, not HBM.
//  3. Emit (no sort): per block, counts of "above" and "tied" keys go through
//     DSMEM so each block knows the counts before its segment; then tiles of
//     2048 keys in index order get a block-wide exclusive scan of the packed
//     (tied << 16 | above) flags: an element's output slot is
//     above_before + min(tied_before, need) -- ascending order and "ties: the
//     lower index wins" at once.
//    After A, a grid of about two clusters per SM loops over the rows and
//    takes the marked ones (A's marks are device data: no host round trip).
//    Rows whose segment does not fit shared memory (row_stride > 8 * ~48K)
//    re-read the row from global memory in each pass (same result, more traffic).
//
// Writing nothing on NaN (or on a bad k / length, checked on the device as the
// CPU twin does on the host): results go to a stream-ordered scratch buffer; a
// commit kernel copies them to out/count only if the device flag is clear;
// the launcher then reads the flag after a stream sync (the one sync this
// launcher does, see cuda/launchers.h).
//
// Roofline: one read of the scores (256 x 128K f32 = 134 MB, ~45 us at 3 TB/s)
// plus writing rows * out_stride indices twice (scratch + commit).
//
// cuda_topk_set_filter(false) turns A off (tests compare both paths with the
// CPU twin; the benchmark times both).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "launchers.h"

namespace kvsq {

namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;
constexpr int kPerThread = 4;                     // emission: consecutive keys per thread
constexpr int kTile = kThreads * kPerThread;      // 2048 < 2^16: packed counters cannot carry
constexpr int kMaxCluster = 8;
constexpr uint32_t kAll = 0xffffffffu;            // need = every tied key
constexpr int kFlagNaN = 1, kFlagRange = 2, kFlagShape = 4;

// Shared memory layout (32-bit words): per-warp histograms, two merged
// histograms (double-buffered for DSMEM readers), a few scalars, the keys.
constexpr int kOffHistW = 0;
constexpr int kOffHistT = kOffHistW + kWarps * kBins;
constexpr int kOffTot = kOffHistT + 2 * kBins;
constexpr int kOffMisc = kOffTot + kBins;         // [0..1] counts shared via DSMEM, [2..] scratch
constexpr int kOffScan = kOffMisc + 8;
constexpr int kOffKeys = kOffScan + kWarps + 8;
constexpr size_t kFixedBytes = size_t(kOffKeys) * 4;

// The sampled filter (kernel A). kCap bounds the candidates of a row (and k);
// its shared memory: a 2048-bin histogram, scan scratch, scalars shared
// through DSMEM, tile warp totals (double-buffered), the block's sample, the
// cluster's sample, the candidates' keys and indices (block 0 holds the whole
// row's after the gather). 76 KB: two blocks per SM, as registers allow.
constexpr int kSegMax = 16384;                    // keys per block: 8 tiles, 8 float4 per thread
constexpr int kSegTiles = kSegMax / kTile;
constexpr int kSampW = 32;                        // sample values per warp
constexpr int kSamp = kSampW * kWarps;            // per block
constexpr int kCap = 6144;
constexpr int kFOffHist = 0;
constexpr int kFOffScan = kFOffHist + 2048;
constexpr int kFOffMisc = kFOffScan + kWarps + 8;  // [0] sample size, [1] candidates, [4..6] select result
constexpr int kFOffWTot = kFOffMisc + 16;
constexpr int kFOffSamp = kFOffWTot + 2 * kWarps;
constexpr int kFOffAll = kFOffSamp + kSamp;
constexpr int kFOffCKey = kFOffAll + kMaxCluster * kSamp;
constexpr int kFOffCIdx = kFOffCKey + kCap;
constexpr size_t kFilterBytes = size_t(kFOffCIdx + kCap) * 4;

std::atomic<bool> g_filter{true};

struct TkParams {
  const float* scores;
  int64_t row_stride;
  const int32_t* lengths;
  const int32_t* k;
  int32_t out_stride;
  int32_t* stage;        // [rows, out_stride]
  int32_t* stage_count;  // [rows]
  unsigned* flag;
  int cs;                // blocks per row (cluster size)
  int seg_cap;           // keys a block can keep in shared memory (0: none)
  int vec4;              // rows 16-byte aligned: float4 loads
  int32_t* list;         // [rows] 1: row left to kernel B by kernel A (A writes every row); null: B does every row
  int64_t rows;
};

__device__ __forceinline__ uint32_t key_of(float x) {
  uint32_t u = __float_as_uint(x);
  if (u == 0x80000000u) u = 0;  // -0 ties with +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Cluster helpers: plain block barriers when CS = 1 or below sm_90.
__device__ __forceinline__ void cl_sync(int cs) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cs > 1) {
    cg::this_cluster().sync();
    return;
  }
#endif
  __syncthreads();
}
__device__ __forceinline__ const uint32_t* cl_map(uint32_t* p, int rank, int cs) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cs > 1) return cg::this_cluster().map_shared_rank(p, rank);
#endif
  return p;
}

// Exclusive block scan of v (all threads), *total = the sum. Uses sm[kWarps + 1].
__device__ __forceinline__ uint32_t block_excl_scan(uint32_t v, uint32_t* sm, uint32_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();  // sm may still be read by a previous scan
  if (lane == 31) sm[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < kWarps ? sm[lane] : 0u;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kWarps) sm[lane] = w;  // inclusive warp totals
  }
  __syncthreads();
  *total = sm[kWarps - 1];
  return x - v + (warp > 0 ? sm[warp - 1] : 0u);
}

// The kk-th largest of a selection, as prefix P under mask M: the selected
// keys are (key & M) > P, then the first `need` (index order) of (key & M) == P.
struct Sel {
  uint32_t P, M, need;
};

// Block-wide radix select of the r-th largest (1 <= r <= n) of keys[0 .. n)
// in shared memory: digits of 11, 11 and 10 bits, high to low, stopping at a
// bucket taken whole. hist: 2048 words; res: 3 words; sc: block_excl_scan's.
__device__ Sel block_select(const uint32_t* keys, int n, uint32_t r, uint32_t* hist, uint32_t* res, uint32_t* sc) {
  const int tid = threadIdx.x;
  uint32_t P = 0, M = 0, krem = r;
#pragma unroll 1
  for (int d = 0; d < 3; ++d) {
    const int shift = d == 0 ? 21 : d == 1 ? 10 : 0;
    const int bins = d == 2 ? 1024 : 2048;
    const uint32_t mask = uint32_t(bins - 1);
    for (int i = tid; i < bins; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int i = tid; i < n; i += kThreads) {
      const uint32_t kx = keys[i];
      if ((kx & M) == P) atomicAdd(&hist[(kx >> shift) & mask], 1u);
    }
    __syncthreads();
    // thread t owns 4 bins counted from the top: bins - 1 - 4t down to bins - 4 - 4t
    const int top = bins - 1 - 4 * tid;
    uint32_t own = 0;
    if (top >= 0) own = hist[top] + hist[top - 1] + hist[top - 2] + hist[top - 3];
    uint32_t total;
    const uint32_t pre = block_excl_scan(own, sc, &total);
    if (top >= 0 && pre < krem && pre + own >= krem) {  // exactly one thread: the scan is monotone
      uint32_t above = pre;
      int bk = top;
      for (int e = 0; e < 3 && above + hist[bk] < krem; ++e, --bk) above += hist[bk];
      res[0] = uint32_t(bk);
      res[1] = above;
      res[2] = hist[bk];
    }
    __syncthreads();
    const uint32_t bk = res[0], above = res[1], inb = res[2];
    krem -= above;
    P |= bk << shift;
    M |= mask << shift;
    if (inb == krem) return Sel{P, M, kAll};  // the bucket is taken whole
  }
  return Sel{P, M, krem};  // all 32 bits fixed: krem of the keys equal to P
}

// Writes the selected of n keys in index order (ascending output, ties to the
// lower index): key_at(i) / index_at(i) for i in [0, n) in index order; G, E:
// above / tied keys before element 0 (earlier blocks of the row). Every
// thread of the block calls it.
template <class KeyAt, class IndexAt>
__device__ __forceinline__ void emit_selected(int n, const KeyAt& key_at, const IndexAt& index_at, const Sel& s,
                                              uint32_t G, uint32_t E, int32_t* out, uint32_t* sc) {
  for (int t0 = 0; t0 < n; t0 += kTile) {
    const int base = t0 + int(threadIdx.x) * kPerThread;
    uint32_t fg = 0, fe = 0;  // bit e: element base + e is above / tied
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      if (base + e < n) {
        const uint32_t km = key_at(base + e) & s.M;
        fg |= uint32_t(km > s.P) << e;
        fe |= uint32_t(km == s.P) << e;
      }
    }
    uint32_t total;
    const uint32_t pre = block_excl_scan((uint32_t(__popc(fe)) << 16) | uint32_t(__popc(fg)), sc, &total);
    uint32_t g_before = G + (pre & 0xffffu), e_before = E + (pre >> 16);
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      if (fg >> e & 1u) {
        out[g_before + min(e_before, s.need)] = int32_t(index_at(base + e));
        ++g_before;
      } else if (fe >> e & 1u) {
        if (e_before < s.need) out[g_before + e_before] = int32_t(index_at(base + e));
        ++e_before;
      }
    }
    G += total & 0xffffu;
    E += total >> 16;
  }
}

// Kernel A (see the header). Grid: rows x CS blocks, clusters of CS.
__global__ void __launch_bounds__(kThreads, 2) topk_filter_kernel(const TkParams p) {
  cu::pdl_wait_then_trigger();  // a link of a dependent-launch chain (sm_90+)
  extern __shared__ __align__(16) uint32_t sm[];
  uint32_t* hist = sm + kFOffHist;
  uint32_t* sc = sm + kFOffScan;
  uint32_t* misc = sm + kFOffMisc;
  uint32_t* wt = sm + kFOffWTot;
  uint32_t* samp = sm + kFOffSamp;
  uint32_t* all = sm + kFOffAll;
  uint32_t* ckey = sm + kFOffCKey;
  uint32_t* cidx = sm + kFOffCIdx;
  const int cs = p.cs;
  const int64_t row = blockIdx.x / cs;
  const int rank = blockIdx.x % cs;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Rows left to B (row-uniform, before any cluster barrier): bad length or k
  // (B reports them), k = 0 or k >= len (nothing to select), too many to keep.
  const int64_t len = p.lengths ? int64_t(p.lengths[row]) : p.row_stride;
  const int64_t kr = p.k[row];
  const bool bad = len < 0 || len > p.row_stride || kr < 0 || !p.scores;
  const int64_t kk = bad ? 0 : min(kr, len);
  if (bad || kk == 0 || kk >= len || kk > p.out_stride || kk > kCap) {
    if (tid == 0 && rank == 0) p.list[row] = 1;
    return;
  }
  const int64_t segsz = ((len + cs - 1) / cs + 3) / 4 * 4;
  const int64_t s0 = min(len, rank * segsz), s1 = min(len, s0 + segsz);
  const int n = int(s1 - s0);  // <= kSegMax: the launcher's condition
  const float* src = p.scores + row * p.row_stride + s0;

  // ---- 1. threshold from the cluster's sample
  bool go = true;
  uint32_t T = 0;
  if (len > kCap) {
    const int lo = int(int64_t(warp) * n / kWarps), hi = int(int64_t(warp + 1) * n / kWarps);
    const bool valid = lane < hi - lo;
    samp[tid] = valid ? key_of(__ldg(src + lo + lane)) : 0u;  // 0: below every real key (NaN rows fail anyway)
    const int sb = __syncthreads_count(valid);
    if (tid == 0) misc[0] = uint32_t(sb);
    cl_sync(cs);  // (a) every block's sample is published
    uint32_t S = 0;
    for (int r = 0; r < cs; ++r) {
      S += cl_map(misc, r, cs)[0];
      all[r * kSamp + tid] = cl_map(samp, r, cs)[tid];
    }
    const double mu = double(kk) * double(S) / double(len);
    const double rr = ceil(mu + 4.0 * sqrt(mu) + 4.0);
    go = rr <= double(S) && rr * double(len) <= 0.6 * kCap * double(S);  // same in every block
    __syncthreads();
    if (go) T = block_select(all, cs * kSamp, uint32_t(rr), hist, misc + 4, sc).P;
  }

  // ---- 2. one pass: NaN check, keys >= T kept in index order
  uint32_t run = 0;  // candidates so far; those past kCap are counted, not kept
  bool nan = false;
  if (go) {
    const int tiles = (n + kTile - 1) / kTile;
    // Tile j's 16 bytes per thread; kAhead tiles in flight (64 KB per SM at
    // two blocks), tile j + kAhead loaded into the registers tile j frees.
    constexpr int kAhead = 4;
    auto load = [&](int j) {
      const int e0 = j * kTile + 4 * tid;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (j < tiles) {
        if (p.vec4 && e0 + 3 < n) {
          v = __ldg(reinterpret_cast<const float4*>(src + e0));
        } else {
          if (e0 < n) v.x = __ldg(src + e0);
          if (e0 + 1 < n) v.y = __ldg(src + e0 + 1);
          if (e0 + 2 < n) v.z = __ldg(src + e0 + 2);
          if (e0 + 3 < n) v.w = __ldg(src + e0 + 3);
        }
      }
      return v;
    };
    float4 x[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) x[j] = load(j);
#pragma unroll
    for (int j = 0; j < kSegTiles; ++j) {
      if (j < tiles) {
        const int e0 = j * kTile + 4 * tid;
        const float xs[4] = {x[j % kAhead].x, x[j % kAhead].y, x[j % kAhead].z, x[j % kAhead].w};
        if (j + kAhead < kSegTiles) x[j % kAhead] = load(j + kAhead);
        uint32_t ks[4];
        unsigned bits = 0;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const bool v = e0 + c < n;
          ks[c] = key_of(xs[c]);
          nan |= v && isnan(xs[c]);
          bits |= unsigned(v && ks[c] >= T) << c;
        }
        const uint32_t cnt = uint32_t(__popc(bits));
        uint32_t inc = cnt;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const uint32_t y = __shfl_up_sync(0xffffffffu, inc, o);
          if (lane >= o) inc += y;
        }
        uint32_t* wtj = wt + (j & 1) * kWarps;  // double-buffered: tile j + 2 writes after tile j + 1's barrier
        if (lane == 31) wtj[warp] = inc;
        __syncthreads();
        uint32_t wb = 0, tt = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          const uint32_t v = wtj[w];
          tt += v;
          wb += w < warp ? v : 0u;
        }
        uint32_t pos = run + wb + inc - cnt;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (bits >> c & 1u) {
            if (pos < uint32_t(kCap)) {
              ckey[pos] = ks[c];
              cidx[pos] = uint32_t(s0 + e0 + c);
            }
            ++pos;
          }
        }
        run += tt;
      }
    }
  }
  if (__syncthreads_or(nan) && tid == 0) atomicOr(p.flag, unsigned(kFlagNaN));
  if (tid == 0) misc[1] = run;
  cl_sync(cs);  // (b) every block's candidates and count are published

  // ---- 3. enough and not too many: block 0 selects among them; else B does the row
  uint32_t C = 0;
  for (int r = 0; r < cs; ++r) C += cl_map(misc, r, cs)[1];
  go = go && C >= uint32_t(kk) && C <= uint32_t(kCap);
  int32_t* out = p.stage + row * int64_t(p.out_stride);
  if (go) {
    if (rank == 0) {
      uint32_t at = run;  // block 0's own candidates stay in place
      for (int r = 1; r < cs; ++r) {
        const uint32_t cr = cl_map(misc, r, cs)[1];
        const uint32_t* rk = cl_map(ckey, r, cs);
        const uint32_t* ri = cl_map(cidx, r, cs);
        for (uint32_t i = tid; i < cr; i += kThreads) {
          ckey[at + i] = rk[i];
          cidx[at + i] = ri[i];
        }
        at += cr;
      }
    }
    for (int64_t j = kk + int64_t(rank) * kThreads + tid; j < p.out_stride; j += int64_t(cs) * kThreads) out[j] = -1;
  }
  if (rank == 0 && tid == 0) p.list[row] = go ? 0 : 1;
  cl_sync(cs);  // (c) no block reads another's shared memory after this: the others may exit
  if (!go || rank != 0) return;
  const Sel s = block_select(ckey, int(C), uint32_t(kk), hist, misc + 4, sc);
  emit_selected(
      int(C), [&](int i) { return ckey[i]; }, [&](int i) { return cidx[i]; }, s, 0u, 0u, out, sc);
  if (tid == 0) p.stage_count[row] = int32_t(kk);
}

// Kernel B (see the header). Grid: clusters of CS blocks; cluster c does
// rows (or listed rows) c, c + clusters, ...
__global__ void __launch_bounds__(kThreads) topk_kernel(const TkParams p) {
  cu::pdl_wait_then_trigger();  // a link of a dependent-launch chain (sm_90+)
  extern __shared__ __align__(16) uint32_t sm[];
  uint32_t* histw = sm + kOffHistW;
  uint32_t* tot = sm + kOffTot;
  uint32_t* misc = sm + kOffMisc;
  uint32_t* keys = sm + kOffKeys;
  const int cs = p.cs;
  const int rank = blockIdx.x % cs;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t clusters = gridDim.x / cs;
  const int64_t items = p.list ? p.rows : clusters;
  for (int64_t item = blockIdx.x / cs; item < items; item += clusters) {
    if (p.list && __ldcg(p.list + item) == 0) continue;  // A's row (uniform: one address per cluster)
    const int64_t row = item;

    // ---- row checks (row-uniform: every block of the cluster takes the same exit)
    const int64_t len = p.lengths ? int64_t(p.lengths[row]) : p.row_stride;
    const int64_t kr = p.k[row];
    if (len < 0 || len > p.row_stride || kr < 0) {
      if (tid == 0 && rank == 0) atomicOr(p.flag, unsigned(kFlagRange));
      continue;
    }
    const int64_t kk = min(kr, len);
    if (kk > p.out_stride || (len > 0 && !p.scores)) {
      if (tid == 0 && rank == 0) atomicOr(p.flag, unsigned(kFlagShape));
      continue;
    }
    const int64_t segsz = ((len + cs - 1) / cs + 3) / 4 * 4;
    const int64_t s0 = min(len, rank * segsz), s1 = min(len, s0 + segsz);
    const int n = int(s1 - s0);
    const bool cached = segsz <= p.seg_cap;
    const float* src = p.scores + row * p.row_stride + s0;
    auto key_at = [&](int i) -> uint32_t { return cached ? keys[i] : key_of(__ldg(src + i)); };

    // ---- pass 0: load, NaN check, top-digit histogram
    for (int i = tid; i < kWarps * kBins; i += kThreads) histw[i] = 0;
    __syncthreads();
    bool nan = false;
    uint32_t* hw = histw + warp * kBins;
    {
      int i0 = 0;
      if (p.vec4) {
        const float4* s4 = reinterpret_cast<const float4*>(src);
        const int n4 = n / 4;
  #pragma unroll 4
        for (int v = tid; v < n4; v += kThreads) {
          const float4 x = __ldg(s4 + v);
          const float xs[4] = {x.x, x.y, x.z, x.w};
  #pragma unroll
          for (int e = 0; e < 4; ++e) {
            nan |= isnan(xs[e]);
            const uint32_t kx = key_of(xs[e]);
            if (cached) keys[4 * v + e] = kx;
            atomicAdd(&hw[kx >> 24], 1u);
          }
        }
        i0 = n4 * 4;
      }
      for (int i = i0 + tid; i < n; i += kThreads) {
        const float x = __ldg(src + i);
        nan |= isnan(x);
        const uint32_t kx = key_of(x);
        if (cached) keys[i] = kx;
        atomicAdd(&hw[kx >> 24], 1u);
      }
    }
    if (__syncthreads_or(nan) && tid == 0) atomicOr(p.flag, unsigned(kFlagNaN));
    // (a NaN row goes on: its blocks must keep meeting at the cluster barriers;
    // the commit kernel discards everything)

    // ---- select
    uint32_t P = 0, M = 0, need = kAll;
    if (kk == 0) need = 0;  // M = 0: every key "ties", none taken
    if (kk > 0 && kk < len) {
      uint32_t krem = uint32_t(kk);
      for (int d = 0; d < 4; ++d) {
        const int shift = 24 - 8 * d;
        if (d > 0) {
          for (int i = tid; i < kWarps * kBins; i += kThreads) histw[i] = 0;
          __syncthreads();
          for (int i = tid; i < n; i += kThreads) {
            const uint32_t kx = key_at(i);
            if ((kx & M) == P) atomicAdd(&hw[(kx >> shift) & 0xffu], 1u);
          }
        }
        __syncthreads();
        uint32_t* ht = sm + kOffHistT + (d & 1) * kBins;
        if (tid < kBins) {
          uint32_t s = 0;
  #pragma unroll
          for (int w = 0; w < kWarps; ++w) s += histw[w * kBins + tid];
          ht[tid] = s;
        }
        cl_sync(cs);  // every block's ht is complete
        if (tid < kBins) {
          uint32_t s = 0;
          for (int r = 0; r < cs; ++r) s += cl_map(ht, r, cs)[tid];
          tot[tid] = s;
        }
        __syncthreads();
        if (warp == 0) {
          // lane l owns bins 255 - 8l - 7 .. 255 - 8l (from the top); scan from the top
          uint32_t own = 0;
  #pragma unroll
          for (int e = 0; e < 8; ++e) own += tot[255 - 8 * lane - e];
          uint32_t inc = own;
  #pragma unroll
          for (int o = 1; o < 32; o <<= 1) {
            const uint32_t y = __shfl_up_sync(0xffffffffu, inc, o);
            if (lane >= o) inc += y;
          }
          const unsigned hit = __ballot_sync(0xffffffffu, inc >= krem);
          const int L0 = __ffs(hit) - 1;  // first lane (from the top) reaching krem; exists: sum = #matching >= krem
          if (lane == L0) {
            uint32_t above = inc - own;
            int b = 255 - 8 * lane;
            for (int e = 0; e < 8; ++e, --b) {
              if (above + tot[b] >= krem) break;
              above += tot[b];
            }
            misc[2] = uint32_t(b);
            misc[3] = above;
            misc[4] = tot[b];
          }
        }
        __syncthreads();
        const uint32_t b = misc[2], above = misc[3], inb = misc[4];
        krem -= above;
        P |= b << shift;
        M |= 0xffu << shift;
        if (inb == krem) break;  // the whole bucket is taken (need stays kAll)
        if (d == 3) need = krem;
      }
    }

    // ---- counts before this block's segment
    uint32_t gt = 0, eq = 0;
    for (int i = tid; i < n; i += kThreads) {
      const uint32_t km = key_at(i) & M;
      gt += km > P;
      eq += km == P;
    }
    uint32_t tg, te;
    block_excl_scan(gt, sm + kOffScan, &tg);
    block_excl_scan(eq, sm + kOffScan, &te);
    if (tid == 0) {
      misc[0] = tg;
      misc[1] = te;
    }
    cl_sync(cs);
    uint32_t G = 0, E = 0;
    for (int r = 0; r < rank; ++r) {
      const uint32_t* m = cl_map(misc, r, cs);
      G += m[0];
      E += m[1];
    }

    // ---- emit in index order
    emit_selected(
        n, key_at, [&](int i) { return s0 + i; }, Sel{P, M, need}, G, E, p.stage + row * int64_t(p.out_stride),
        sm + kOffScan);
    // padding and count
    int32_t* out = p.stage + row * int64_t(p.out_stride);
    for (int64_t j = kk + int64_t(rank) * kThreads + tid; j < p.out_stride; j += int64_t(cs) * kThreads) out[j] = -1;
    if (rank == 0 && tid == 0) p.stage_count[row] = int32_t(kk);
    cl_sync(cs);  // no block may leave (or reuse its shared memory) while another still reads it
  }
  (void)lane;
}

// Copies the staged rows to out/count when no row reported an error.
__global__ void topk_commit_kernel(const unsigned* flag, const int32_t* stage, const int32_t* stage_count,
                                   int32_t* out, int32_t* count, int64_t n_out, int rows) {
  cu::pdl_wait_then_trigger();  // a link of a dependent-launch chain (sm_90+)
  if (*flag) return;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_out; i += stride) out[i] = stage[i];
  if (count)
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows; i += stride) count[i] = stage_count[i];
}

}  // namespace

// Everything but the final status read: validation, the select and the
// commit kernels, stream-ordered. Error bits are OR'ed into the device word
// *flag (zeroed by the caller); the outputs are written only if it stays 0.
Status cuda_topk_enqueue(const TopkArgs& a, unsigned* flag, void* stream) {
  // ---- host-side validation (the device checks lengths and k, see topk_kernel)
  if (a.rows < 0 || a.row_stride < 0 || a.out_stride < 0) return Status::Shape;
  if (a.rows == 0) return Status::Ok;
  if (!a.k || !flag) return Status::Shape;
  if (a.row_stride > INT32_MAX) return Status::Shape;  // indices are int32
  if (a.out_stride > 0 && !a.out) return Status::Shape;
  cudaStream_t st = static_cast<cudaStream_t>(stream);

  int dev = 0, major = 0, max_optin = 0;
  KVSQ_CUDA_TRY(cudaGetDevice(&dev));
  KVSQ_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  KVSQ_CUDA_TRY(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));

  // Cluster size: segments of <= 16K keys (64 KB: two blocks per SM) up to 8 blocks.
  int cs = 1;
  if (major >= 9) cs = int(std::min<int64_t>(kMaxCluster, std::max<int64_t>(1, (a.row_stride + 16383) / 16384)));
  const int64_t seg = ((a.row_stride + cs - 1) / cs + 3) / 4 * 4;
  const size_t limit = size_t(std::min(max_optin, 200 * 1024));
  int seg_cap = int(seg);
  if (kFixedBytes + size_t(seg) * 4 > limit) seg_cap = 0;
  const size_t smem = kFixedBytes + size_t(seg_cap) * 4;

  // Kernel A applies when a block's segment fits its registers and its
  // shared memory fits the card (76 KB: every sm_80+ GPU), and some row may
  // be long enough to sample (with rows of <= kCap keys, A would be another
  // radix select over the whole row, one launch more).
  const bool filter = g_filter.load(std::memory_order_relaxed) && a.row_stride > kCap && seg <= kSegMax &&
                      kFilterBytes <= limit;

  // scratch: staged out, staged count, A's marks of the rows for B
  const size_t n_out = size_t(a.rows) * size_t(a.out_stride);
  const size_t bytes = (n_out + 2 * size_t(a.rows)) * sizeof(int32_t);
  void* ws = nullptr;
  KVSQ_CUDA_TRY(cudaMallocAsync(&ws, bytes, st));
  TkParams p;
  p.scores = a.scores;
  p.row_stride = a.row_stride;
  p.lengths = a.lengths;
  p.k = a.k;
  p.out_stride = a.out_stride;
  p.stage = static_cast<int32_t*>(ws);
  p.stage_count = p.stage + n_out;
  p.flag = flag;
  p.cs = cs;
  p.seg_cap = seg_cap;
  p.vec4 = (reinterpret_cast<uintptr_t>(a.scores) % 16 == 0 && a.row_stride % 4 == 0) ? 1 : 0;
  p.list = filter ? p.stage_count + a.rows : nullptr;
  p.rows = a.rows;

  Status s = Status::Ok;
  auto fail = [&](cudaError_t e) {
    if (s == Status::Ok && e != cudaSuccess) s = cuda_status(e);
  };
  // Dependent launches (sm_90+): each kernel waits for the one before, then
  // lets the next be scheduled, so the launch gaps overlap the kernels.
  const bool pdl = cu::pdl_capable();
  int64_t b_clusters = a.rows;  // B's grid: one cluster per row, or enough to fill the GPU for A's list
  if (filter) {
    int sms = 1;
    fail(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    b_clusters = std::min<int64_t>(a.rows, std::max<int64_t>(1, 2 * int64_t(sms) / cs));
    fail(cu::raise_smem_limit(topk_filter_kernel, kFilterBytes));
    if (s == Status::Ok)  // p.list takes A's marks here
      fail(cu::launch_ex(pdl, unsigned(cs), topk_filter_kernel, dim3(unsigned(int64_t(a.rows) * cs)), dim3(kThreads),
                         kFilterBytes, st, p));
  }
  if (s == Status::Ok) fail(cu::raise_smem_limit(topk_kernel, smem));
  if (s == Status::Ok)
    fail(cu::launch_ex(pdl, unsigned(cs), topk_kernel, dim3(unsigned(b_clusters * cs)), dim3(kThreads), smem, st, p));
  if (s == Status::Ok) {
    const int64_t work = std::max<int64_t>(int64_t(n_out), a.rows);
    const unsigned blocks = unsigned(std::min<int64_t>(2048, (work + 255) / 256));
    fail(cu::launch_pdl(pdl, topk_commit_kernel, dim3(blocks), dim3(256), 0, st, p.flag, p.stage, p.stage_count, a.out,
                        a.count, int64_t(n_out), a.rows));
  }
  fail(cudaFreeAsync(ws, st));
  return s;
}

void cuda_topk_set_filter(bool on) { g_filter.store(on, std::memory_order_relaxed); }

Status topk_flag_status(unsigned hflag) {
  if (hflag & kFlagRange) return Status::Range;
  if (hflag & kFlagShape) return Status::Shape;
  if (hflag & kFlagNaN) return Status::NaN;
  return Status::Ok;
}

Status cuda_topk(const TopkArgs& a, void* stream) {
  if (a.rows == 0 && a.row_stride >= 0 && a.out_stride >= 0) return Status::Ok;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  unsigned* flag = nullptr;
  KVSQ_CUDA_TRY(cudaMallocAsync(reinterpret_cast<void**>(&flag), sizeof(unsigned), st));
  Status s = Status::Ok;
  auto fail = [&](cudaError_t e) {
    if (s == Status::Ok && e != cudaSuccess) s = cuda_status(e);
  };
  fail(cudaMemsetAsync(flag, 0, sizeof(unsigned), st));
  if (s == Status::Ok) s = cuda_topk_enqueue(a, flag, stream);
  unsigned hflag = 0;
  if (s == Status::Ok) fail(cudaMemcpyAsync(&hflag, flag, sizeof(unsigned), cudaMemcpyDeviceToHost, st));
  fail(cudaFreeAsync(flag, st));
  fail(cudaStreamSynchronize(st));
  if (s != Status::Ok) return s;
  return topk_flag_status(hflag);
}

}  // namespace kvsq
