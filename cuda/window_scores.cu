// Window scores on the GPU: the CUDA twin of native/cpu/window_scores.cc
// (methods.md "Window scores", "H2O"; layout in core/ops.h WindowScoresArgs).
//
// Formula. KV head j, query head h = j*g + hh, window row i at position
// p = L - w + i (q row q_rows - w + i of head h):
//   z_i[t] = scale * q_i . k_j[t]   for t <= p (masked for t > p)
//   P_i[t] = exp(z_i[t] - M_i) / Z_i
//   A_h[t] = sum_i P_i[t];  out[j, t] = mean / sum / max over hh of A_h[t]
//
// Layout. q [Hq, q_rows, D], k [Hkv, L, D] (f32, f16 or bf16), out [Hkv, L] f32.
// Supported: D <= 256 with rows of whole 16-byte vectors (D % 8 == 0 for
// f16/bf16, D % 4 == 0 for f32; the kernels are unrolled for D = 64, 128 and
// 256 and zero-pad a smaller D to the next of them), g = Hq / Hkv <= 128;
// anything else is Status::Shape (the CPU twin covers it).
// q and k must be 16-byte aligned (cp.async / vector loads; cudaMalloc gives 256).
//
// Why two passes (and not one). A column sum mixes the R query rows of a tile
// with per-row weights 1/Z_i (times exp(m_block - M_i)) that are known only
// after every key has been seen. A partial column sum over rows cannot be
// rescaled afterwards unless each row's share is kept separately -- that is the
// [rows, L] buffer we must not build. So: pass 1 computes per-row (max, sumexp)
// (online over key chunks, split over CTAs, merged by a tiny kernel); pass 2
// recomputes the logits and accumulates normalised column sums. Pass 2 walks
// the key chunks in the reverse order of pass 1 and the launches are batched
// by KV heads whose K fits in ~24 MB, so the second read of K comes mostly from
// the 50 MB L2, not HBM.
//
// Work decomposition. A tile = one KV head j, gh query heads of its group and
// rt window rows of each (rows r = hl*rt + ii, R = gh*rt <= 128); one warp per
// 16 rows (mma M), the CTA streams K in chunks of 64 keys through shared memory
// (a 3-stage cp.async ring for f16/bf16, 2 stages where a device's shared
// memory holds no more: window_scores_staged; one block barrier per chunk) and
// every warp multiplies its Q fragment (registers, loaded once) with the
// chunk: mma.sync m16n8k16, f32 accumulate, half a chunk (32 keys) at a time
// so that pass 2 runs two blocks per SM. On a 9.0 device with sm_90a code,
// f16/bf16 inputs take the wgmma variant instead (ws_pass_kernel's WG: one
// wgmma m64n32k16 per warpgroup and k-step, B read from shared memory by the
// tensor core, same fragments after the products); cuda_set_wgmma(false)
// keeps the mma.sync kernels (tests run both). The three launches per batch of KV
// heads are dependent launches on sm_90+ (see ws_pass_kernel). One K chunk in shared memory serves all g*rt rows (GQA reuse).
//   * w*g <= 128 (the SnapKV case): one tile per head, every key column is
//     produced by exactly one CTA, which applies the group reduce and stores
//     out[j, t] directly (deterministic).
//   * larger w (H2O, w = L): several row tiles per head; their column sums are
//     atomically added into out (Sum/Mean, zeroed first). Max needs each
//     head's full sum before the max, so it runs one query head at a time
//     (gh = 1) into an [Hkv, L] scratch row set and max-merges into out: memory
//     stays O(Hkv * L).
// Workspace: per (row, split) (m, s) pairs and per-row (M, 1/Z): O(Hq * w *
// splits), splits <= ~4 * SMs / tiles.
//
// f32 inputs. Tensor cores take 16-bit inputs; an f32 value x is split into
// bf16 hi = bf16(x) and lo = bf16(x - hi), and q.k = qh.kh + qh.kl + ql.kh
// (three MMAs; ql.kl ~ 2^-16 |q||k| is dropped). Per product the error is
// <= 3 * 2^-16 |q_d k_d| (hi/lo truncation), so
//   dz_i(f32)    <= |scale| * 2^-14 * max_t sum_d |q_d k_d|.
// f16/bf16 inputs are exact in the MMA (products are exact in f32); the
// tensor-core f32 accumulation is not IEEE round-to-nearest (its adder
// truncates), so we budget
//   dz_i(16-bit) <= |scale| * (D + 2) * 2^-22 * max_t sum_d |q_d k_d| + 2^-22 max_t |z_t|.
// Softmax in f32 with exp2 (ex2.approx, rel. err ~2^-22) of log2-scaled
// logits. Each P_i[t] then has relative error <= 2 dz_i + 1e-4 (1e-4 covers
// exp2, the f32 sums over splits/chunks and the column sums of <= 128 rows in
// shared-memory atomics, whose order is not fixed), and since every term is
// positive |A - A_ref| <= sum_i P_i[t] (2 dz_i + 1e-4). Tests check exactly this.
//
// Roofline (H100, L 128K, w 32, Hq 32, Hkv 8, D 128, bf16): K = 268 MB read
// once from HBM (~90 us at 3 TB/s; the second read hits L2), 2 x 34.4 GFLOP of
// MMA (pass 1 and pass 2: ~105 us at the ~650 TFLOP/s mma.sync can reach on
// H100) and 2 x 134M exp2 on the MUFU (16/clk/SM: ~70 us, overlappable with
// the MMAs). Compute-bound: the bench reports TFLOP/s against the 989 TFLOP/s
// dense bf16 peak (H100 SXM) and GB/s against the copy bandwidth. The
// mma.sync kernels are bound below that by shared-memory reads of B (every
// warp reads every chunk); wgmma (~990 TFLOP/s peak, 2 x 34.4 GFLOP in ~70 us)
// removes that read, which is what a 150 us layer needs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "launchers.h"

namespace kvsq {

namespace {

constexpr int kTc = 64;          // keys per chunk (8 n-tiles of 8)
constexpr int kNT = kTc / 8;     // n-tiles per chunk
constexpr int kMaxRows = 128;    // rows per tile (8 warps x 16)
constexpr int kTargetL2Bytes = 24 << 20;  // K bytes per launch batch (L2 reuse by pass 2)

struct WsParams {
  const void* q;
  const void* k;
  float* target;      // out (direct / atomic Sum, Mean) or the Max scratch
  float2* part;       // [tiles][kMaxRows][nsplit] (m, s), log2 units
  float2* stats;      // [tiles][kMaxRows] (M, 1/Z), log2 units
  int D, L, w, q_rows, g;
  float sl2;          // scale * log2(e)
  int j0;             // first KV head of this launch batch
  int hh0, gh;        // query heads of the group in a tile: hh0 .. hh0 + gh
  int cs_rows;        // pass 2's column-sum rows per tile: gh (one per head) or 1 (heads add into one)
  int cs_hstride;     // floats from one head's column-sum row to the next: kTc, or 0 with one row
  int rt;             // window rows per tile (the last tile may have fewer)
  int ntile;          // row tiles per KV head
  int nsplit;         // CTAs per tile along the keys
  int direct;         // 1: store the group-reduced column directly
  int reduce;         // Reduce (direct mode)
  float add_mul;      // atomic mode: scale of the added column sum (1/g for Mean)
};

// Tile geometry from blockIdx.y.
struct TileGeo {
  int j, i0, rtt, R;
  int64_t Lr;  // causal extent: keys [0, Lr)
};
__device__ __forceinline__ TileGeo tile_geo(const WsParams& p, int tile) {
  TileGeo t;
  t.j = p.j0 + tile / p.ntile;
  const int it = tile % p.ntile;
  t.i0 = it * p.rt;
  t.rtt = min(p.rt, p.w - t.i0);
  t.R = p.gh * t.rtt;
  t.Lr = int64_t(p.L) - p.w + t.i0 + t.rtt;
  return t;
}

// ---------------------------------------------------------------- PTX wrappers
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int bytes) {
  // bytes = 0 zero-fills the 16 destination bytes without reading src
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
using cu::ldsm_x4;
using cu::mma16816;

// Two consecutive elements (columns c, c+1) of a q row as one 32-bit MMA
// operand; for f32 the hi and lo halves.
template <class T>
__device__ __forceinline__ void load_q_pair(const T* row, int c, uint32_t& hi, uint32_t& lo) {
  if constexpr (sizeof(T) == 4) {
    const float2 v = *reinterpret_cast<const float2*>(row + c);
    cu::split_pair<false>(v.x, v.y, hi, lo);
  } else {
    hi = *reinterpret_cast<const uint32_t*>(row + c);
    lo = 0;
  }
}

// Shared memory: NS K tiles [kTc][D + 8] of 16-bit values (the + 8 pad
// makes ldmatrix rows land on distinct banks): the cp.async ring for
// f16/bf16 (NS 3; 2 where a device's shared memory holds no more: see
// window_scores_staged), the hi and lo halves of one chunk for f32 (NS 2). Then pass 2's column
// sums cs[2][cs_rows][kTc] (double-buffered: chunk n adds into cs[n & 1] while the
// sums of chunk n - 1 are stored from the other half). cs_rows is gh, a row
// per head of the tile, or 1 where that does not fit the block's shared
// memory (Sum and Mean only, which add the heads anyway: ws_tiling).
//
// The wgmma variant (WG, f16/bf16 on sm_90a) keeps each chunk in the
// K-major core-matrix layout that wgmma reads without swizzling: key row t,
// 16-byte vector v (dims 8v .. 8v + 7) at byte
//   (t / 8) * (D * 16) + v * 128 + (t % 8) * 16,
// i.e. 8 keys x 16 bytes contiguous (a core matrix), the D / 8 vectors of a
// group of 8 keys one after another. Descriptor: LBO 128 (the next 8 dims),
// SBO D * 16 (the next 8 keys); k-step ks starts ks * 256 bytes in. No pad:
// a core matrix is 128 contiguous bytes, conflict-free for the tensor core,
// and the cp.async writes below put 8 consecutive threads on one core matrix.
template <int D, bool WG>
constexpr int k_tile_elems() { return kTc * (WG ? D : D + 8); }
template <int D, bool WG, int NS>
constexpr size_t k_ring_bytes() { return size_t(NS) * k_tile_elems<D, WG>() * sizeof(uint16_t); }

// ---------------------------------------------------------------- the two passes
// Per chunk, one block barrier (f16/bf16): after it, chunk n has landed for
// everyone, every warp is done with chunk n - 1 (so its ring slot takes chunk
// n + 2) and, in pass 2, chunk n - 1's column sums are complete. The chunk's
// 8 n-tiles are computed in two halves of 4 (16 accumulators live instead of
// 32): pass 2 fits two blocks of 256 threads per SM without spills, where it
// had run one (142 registers; 12.5% occupancy on an H200).
// Launched as dependents (sm_90+): the Q fragments and the first K chunks are
// loaded before cu::pdl_wait(); nothing the previous launch writes (part,
// stats, out) is touched before it. So the call's first launch is an
// ordinary one: the kernel before it may be the one that wrote q or k.
//
// WG: S = Q K^T by wgmma (sm_90a) instead of ldmatrix + mma.sync. With
// mma.sync every warp reads the whole chunk from shared memory into its own
// B fragments (8 warps x 16 KB per 64-key chunk at D 128: 1024 cycles of
// shared-memory bandwidth against ~512 of tensor work); a warpgroup's wgmma
// reads it once for its 64 rows. Both halves of the chunk are issued before
// the first is waited for, so the tensor core works on half 1 while the
// threads run half 0's epilogue. The accumulator layout equals mma.sync's, so
// everything after the products is shared. Threads: whole warpgroups (rows
// padded to 64; padding rows are masked as in the mma.sync path).
template <class T, int D, int PASS, bool WG, bool PAD, int NS>
__global__ void __launch_bounds__(256, sizeof(T) == 4 || D > 128 ? 1 : 2) ws_pass_kernel(const WsParams p) {
  constexpr bool kF32 = sizeof(T) == 4;
  static_assert(!(WG && kF32), "the wgmma path takes 16-bit inputs");
  static_assert(NS == 2 || (NS == 3 && !kF32), "ring of 2 or 3 chunks; f32 uses two tiles (hi, lo)");
  constexpr bool kF16 = std::is_same<T, __half>::value;
  constexpr int KS = D / 16;           // k-steps
  constexpr int LDS = D + 8;           // smem row stride, elements
  constexpr int kHalf = kNT / 2;       // n-tiles per half chunk
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* kbuf = reinterpret_cast<uint16_t*>(smem_raw);  // [NS][kTc][LDS]
  float* cs = reinterpret_cast<float*>(smem_raw + k_ring_bytes<D, WG, NS>());  // [2][cs_rows][kTc]

  const int tile = blockIdx.y;
  const TileGeo tg = tile_geo(p, tile);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nthr = blockDim.x;
  const int gid = lane >> 2, tig = lane & 3;
  // pass 2 walks the splits (and their chunks) in reverse: what pass 1 loaded
  // last is still in L2.
  const int split = PASS == 1 ? blockIdx.x : p.nsplit - 1 - blockIdx.x;
  const int64_t nchunk = (tg.Lr + kTc - 1) / kTc;
  const int64_t cps = (nchunk + p.nsplit - 1) / p.nsplit;
  const int64_t cb = min(nchunk, int64_t(split) * cps), ce = min(nchunk, cb + cps);

  // Rows of this thread: r_lo (accumulator elements 0, 1) and r_hi = r_lo + 8 (2, 3).
  const int r_lo = warp * 16 + gid, r_hi = r_lo + 8;
  const bool ok_lo = r_lo < tg.R, ok_hi = r_hi < tg.R;
  // Positions are below p.L (an int), so 32 bits hold them.
  const int pos_lo = p.L - p.w + tg.i0 + (ok_lo ? r_lo % tg.rtt : 0);
  const int pos_hi = p.L - p.w + tg.i0 + (ok_hi ? r_hi % tg.rtt : 0);
  const int min_pos = p.L - p.w + tg.i0;  // rows' smallest position: below it nothing is masked

  if (cb >= ce) {
    cu::pdl_wait();
    if (PASS == 1 && tig == 0) {  // an idle split still reports (-inf, 0) for the merge
      const float2 e = make_float2(cu::neg_inf(), 0.f);
      if (ok_lo) p.part[(int64_t(tile) * kMaxRows + r_lo) * p.nsplit + split] = e;
      if (ok_hi) p.part[(int64_t(tile) * kMaxRows + r_hi) * p.nsplit + split] = e;
    }
    return;
  }

  // dk: the true head dim. With PAD it is p.D < D (the template, which the
  // fragments are unrolled over) and columns dk .. D - 1 are zeros in shared
  // memory and in the Q fragments, so they add nothing to q . k; without it
  // dk is the constant D (no runtime stride or guard in the loops: the
  // mma.sync pass 2 sits at its 128-register bound).
  const int dk = PAD ? p.D : D;
  const T* kbase = static_cast<const T*>(p.k) + int64_t(tg.j) * p.L * dk;
  const int64_t nloc = ce - cb;
  auto chunk_of = [&](int64_t n) -> int64_t { return PASS == 1 ? cb + n : ce - 1 - n; };

  // Stage chunk c into ring slot b (f16/bf16: cp.async, keys past Lr zero-filled).
  auto stage = [&](int64_t c, int b) {
    const int64_t t0 = c * kTc;
    const T* cbase = kbase + t0 * dk;  // the chunk's first key row
    const int rows_in = int(min(int64_t(kTc), tg.Lr - t0));
    constexpr int V = D / 8;  // 16-byte vectors per key row
    uint16_t* dst = kbuf + b * k_tile_elems<D, WG>();
    for (int idx = tid; idx < kTc * V; idx += nthr) {
      int row, col, off;
      if constexpr (WG) {  // 8 consecutive threads: one core matrix (8 keys, one vector)
        const int vv = (idx >> 3) % V;
        row = idx / (8 * V) * 8 + (idx & 7);
        col = vv * 8;
        off = (row >> 3) * (V * 64) + vv * 64 + (row & 7) * 8;
      } else {
        row = idx / V;
        col = (idx % V) * 8;
        off = row * LDS + col;
      }
      const bool in = row < rows_in && col < dk;  // (dk % 8 == 0: a vector is all in or all out)
      const T* src = in ? cbase + row * dk + col : kbase;
      cp_async16(smem_u32(dst + off), src, in ? 16 : 0);
    }
  };
  // f32: chunk c split into bf16 hi (slot 0) and lo (slot 1), synchronously.
  auto stage_f32 = [&](int64_t c) {
    const int64_t t0 = c * kTc;
    constexpr int V = D / 4;
    uint16_t* dh = kbuf;
    uint16_t* dl = kbuf + k_tile_elems<D, WG>();
    for (int idx = tid; idx < kTc * V; idx += nthr) {
      const int row = idx / V, col = (idx % V) * 4;
      const int64_t t = t0 + row;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (t < tg.Lr && col < dk) v = __ldg(reinterpret_cast<const float4*>(kbase + t * dk + col));
      uint2 hi, lo;
      cu::split_pair<false>(v.x, v.y, hi.x, lo.x);
      cu::split_pair<false>(v.z, v.w, hi.y, lo.y);
      *reinterpret_cast<uint2*>(dh + row * LDS + col) = hi;
      *reinterpret_cast<uint2*>(dl + row * LDS + col) = lo;
    }
  };
  // The first NS - 1 chunks are in flight while the Q fragments load.
  if constexpr (!kF32) {
#pragma unroll
    for (int sidx = 0; sidx < NS - 1; ++sidx) {
      if (sidx < nloc) stage(chunk_of(sidx), sidx);
      cp_async_commit();  // possibly empty: keeps the group count per chunk
    }
  }

  // Q fragments (A operand, row-major 16 x 16 per k-step), loaded once.
  uint32_t qa[KS][4], qb[kF32 ? KS : 1][4];
  {
    const T* qbase = static_cast<const T*>(p.q);
    auto qrow = [&](int r) -> const T* {
      const int hl = r / tg.rtt, ii = r % tg.rtt;
      const int64_t h = int64_t(tg.j) * p.g + p.hh0 + hl;
      return qbase + (h * p.q_rows + (p.q_rows - p.w + tg.i0 + ii)) * dk;
    };
    const T* q0 = ok_lo ? qrow(r_lo) : nullptr;
    const T* q1 = ok_hi ? qrow(r_hi) : nullptr;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t h[4] = {0, 0, 0, 0}, l[4] = {0, 0, 0, 0};
      const int c0 = ks * 16 + tig * 2, c1 = c0 + 8;
      // (dk even: a pair is all in or all out; the padding stays zero)
      if (q0 && c0 < dk) load_q_pair(q0, c0, h[0], l[0]);
      if (q0 && c1 < dk) load_q_pair(q0, c1, h[2], l[2]);
      if (q1 && c0 < dk) load_q_pair(q1, c0, h[1], l[1]);
      if (q1 && c1 < dk) load_q_pair(q1, c1, h[3], l[3]);
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        qa[ks][x] = h[x];
        if constexpr (kF32) qb[ks][x] = l[x];
      }
    }
  }

  // Per-row state: pass 1 online (m, s) over this thread's columns; pass 2 (M, 1/Z).
  float m_run[2] = {cu::neg_inf(), cu::neg_inf()}, s_run[2] = {0.f, 0.f};
  float Mrow[2] = {0.f, 0.f}, izrow[2] = {0.f, 0.f};
  bool uniform_head = true;
  int head_w = 0;
  if constexpr (PASS == 2) {
    for (int i = tid; i < 2 * p.cs_rows * kTc; i += nthr) cs[i] = 0.f;
    // (made visible by the first barrier of the chunk loop)
    // All valid rows of this warp in one head: reduce over rows with shuffles.
    const int wr0 = warp * 16, wr1 = min(warp * 16 + 15, tg.R - 1);
    uniform_head = wr0 < tg.R && wr0 / tg.rtt == wr1 / tg.rtt;
    head_w = wr0 / tg.rtt;
  }
  cu::pdl_wait();  // the previous launch (merge, or the other pass) is complete from here on
  if constexpr (PASS == 2) {
    // Padding rows get M = +inf, 1/Z = 0: their probabilities are exactly 0.
    const float2 s0 = ok_lo ? p.stats[int64_t(tile) * kMaxRows + r_lo] : make_float2(__int_as_float(0x7f800000), 0.f);
    const float2 s1 = ok_hi ? p.stats[int64_t(tile) * kMaxRows + r_hi] : make_float2(__int_as_float(0x7f800000), 0.f);
    Mrow[0] = s0.x; izrow[0] = s0.y;
    Mrow[1] = s1.x; izrow[1] = s1.y;
  }

  // Pass 2: the group-reduced column sums of chunk c from cs half cb2 to
  // the output (threads < kTc; the other threads go on with the next chunk).
  auto store_cols = [&](int64_t c, int cb2) {
    float* csb = cs + cb2 * p.cs_rows * kTc;
    for (int i = tid; i < kTc; i += nthr) {
      const int64_t t = c * kTc + i;
      if (t < tg.Lr) {
        float* dst = p.target + int64_t(tg.j) * p.L + t;
        float v = csb[i];
        if (p.direct && p.reduce == int(Reduce::Max)) {
          for (int hl = 1; hl < p.cs_rows; ++hl) v = fmaxf(v, csb[hl * kTc + i]);
        } else {
          for (int hl = 1; hl < p.cs_rows; ++hl) v += csb[hl * kTc + i];
        }
        if (!p.direct) {
          atomicAdd(dst, v * p.add_mul);
        } else {
          if (p.reduce == int(Reduce::Mean)) v /= float(p.g);
          *dst = v;
        }
      }
      for (int hl = 0; hl < p.cs_rows; ++hl) csb[hl * kTc + i] = 0.f;
    }
  };

  for (int64_t n = 0; n < nloc; ++n) {
    const int64_t c = chunk_of(n);
    const int64_t t0 = c * kTc;
    int buf = 0;
    if constexpr (!kF32) {
      cp_async_wait<NS - 2>();  // chunk n has landed (this thread's copies)
      if constexpr (WG) cu::fence_proxy_async_smem();  // ... visible to wgmma's async-proxy reads
      __syncthreads();               // ... everyone's; chunk n - 1 is done with
      if (n + NS - 1 < nloc) stage(chunk_of(n + NS - 1), int((n + NS - 1) % NS));
      cp_async_commit();
      buf = int(n % NS);
    } else {
      __syncthreads();  // chunk n - 1 is done with
      stage_f32(c);
      __syncthreads();
    }
    if constexpr (PASS == 2) {
      if (n > 0) store_cols(chunk_of(n - 1), int((n - 1) & 1));
    }
    const uint16_t* kt = kbuf + buf * k_tile_elems<D, WG>();
    float* csn = cs + int(n & 1) * p.cs_rows * kTc;
    const bool need_mask = t0 + kTc - 1 > min_pos;  // block-uniform
    // Masking compares chunk columns with the rows' positions relative to
    // t0: in (-kTc, L) when need_mask, so 32 bits hold them.
    const int rel_lo = need_mask ? int(pos_lo - t0) : 0, rel_hi = need_mask ? int(pos_hi - t0) : 0;

    // wgmma: both halves of the chunk issued now, as two commit groups.
    [[maybe_unused]] float accw[WG ? 2 : 1][kHalf][4];
    if constexpr (WG) {
      constexpr uint32_t kSbo = D * 16;
      const uint64_t desc0 = cu::wg_desc(smem_u32(kt), 128, kSbo);
      cu::wg_fence();
#pragma unroll
      for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
          // + (byte offset >> 4) in the start-address field: keys half * 32, dims ks * 16
          const uint64_t desc = desc0 + ((uint32_t(half) * (kHalf * kSbo) + uint32_t(ks) * 256u) >> 4);
          cu::wgmma_m64n32k16<kF16>(*reinterpret_cast<float(*)[kHalf * 4]>(&accw[half][0][0]), qa[ks], desc, ks > 0);
        }
        cu::wg_commit();
      }
    }

#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // ---- S = Q K^T for this warp's 16 rows and 32 keys of the chunk
      float acc[kHalf][4];
      if constexpr (WG) {
        if (half == 0) cu::wg_wait<1>();
        else cu::wg_wait<0>();
        cu::wg_fence_operands(*reinterpret_cast<float(*)[kHalf * 4]>(&accw[half][0][0]));
#pragma unroll
        for (int nt = 0; nt < kHalf; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[nt][e] = accw[half][nt][e];
      } else {
#pragma unroll
        for (int nt = 0; nt < kHalf; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#pragma unroll
        for (int nt = 0; nt < kHalf; ++nt) {
          // ldmatrix.x4: matrices = 8 keys x 8 dims at dims kp*32 + {0, 8, 16, 24}:
          // the B fragments (b0, b1) of k-steps 2kp and 2kp + 1.
          const int key0 = (half * kHalf + nt) * 8;
          const uint32_t rowaddr = smem_u32(kt + (key0 + (lane & 7)) * LDS + (lane >> 3) * 8);
#pragma unroll
          for (int kp = 0; kp < KS / 2; ++kp) {
            uint32_t b0, b1, b2, b3;
            ldsm_x4(rowaddr + kp * 32 * 2, b0, b1, b2, b3);
            mma16816<kF16>(acc[nt], qa[2 * kp], b0, b1);
            mma16816<kF16>(acc[nt], qa[2 * kp + 1], b2, b3);
            if constexpr (kF32) {
              uint32_t c0, c1, c2, c3;  // k lo
              ldsm_x4(rowaddr + (k_tile_elems<D, WG>() + kp * 32) * 2, c0, c1, c2, c3);
              mma16816<false>(acc[nt], qa[2 * kp], c0, c1);
              mma16816<false>(acc[nt], qa[2 * kp + 1], c2, c3);
              mma16816<false>(acc[nt], qb[2 * kp], b0, b1);
              mma16816<false>(acc[nt], qb[2 * kp + 1], b2, b3);
            }
          }
        }
      }

      // ---- logits (log2 units) and the causal mask
#pragma unroll
      for (int nt = 0; nt < kHalf; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tc = (half * kHalf + nt) * 8 + tig * 2 + (e & 1);  // column in the chunk
          float y = acc[nt][e] * p.sl2;
          const bool ok = e < 2 ? ok_lo : ok_hi;
          if (!ok || (need_mask && tc > (e < 2 ? rel_lo : rel_hi))) y = cu::neg_inf();
          acc[nt][e] = y;
        }
      }

      if constexpr (PASS == 1) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          float cm = cu::neg_inf();
#pragma unroll
          for (int nt = 0; nt < kHalf; ++nt) cm = fmaxf(cm, fmaxf(acc[nt][2 * hr], acc[nt][2 * hr + 1]));
          if (cm != cu::neg_inf()) {
            const float mn = fmaxf(m_run[hr], cm);
            float s = m_run[hr] == cu::neg_inf() ? 0.f : s_run[hr] * exp2f(m_run[hr] - mn);
#pragma unroll
            for (int nt = 0; nt < kHalf; ++nt) s += exp2f(acc[nt][2 * hr] - mn) + exp2f(acc[nt][2 * hr + 1] - mn);
            m_run[hr] = mn;
            s_run[hr] = s;
          }
        }
      } else {
        // probabilities, then column sums per head into cs
#pragma unroll
        for (int nt = 0; nt < kHalf; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[nt][e] = exp2f(acc[nt][e] - Mrow[e >> 1]) * izrow[e >> 1];
        }
        if (warp * 16 >= tg.R) {
          // a short last tile leaves whole warps without rows: nothing to add
        } else if (uniform_head) {
          // The warp's 16 rows are one head. A lane's 8 values (nt, e) are
          // its 2 rows' shares of 8 columns; the 8 lanes of a column pair
          // (same tig) sum them in one transposed butterfly (7 shuffles, was
          // 24), after which lane (gid, tig) holds column nt = gid / 2,
          // e = gid % 2, and every lane adds one (one atomic instruction
          // per warp, was 8 with 4 lanes each).
          static_assert(kHalf * 2 == 8, "one column per lane of a column pair");
          float v[kHalf * 2];
#pragma unroll
          for (int nt = 0; nt < kHalf; ++nt) {
            v[2 * nt] = acc[nt][0] + acc[nt][2];
            v[2 * nt + 1] = acc[nt][1] + acc[nt][3];
          }
          cu::TRed<kHalf * 2, 16, 2>::run(v, lane);
          atomicAdd(&csn[head_w * p.cs_hstride + (half * kHalf + (gid >> 1)) * 8 + tig * 2 + (gid & 1)], v[0]);
        } else {
#pragma unroll
          for (int nt = 0; nt < kHalf; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int r = e < 2 ? r_lo : r_hi;
              if (r < tg.R && acc[nt][e] != 0.f)
                atomicAdd(&csn[(r / tg.rtt) * p.cs_hstride + (half * kHalf + nt) * 8 + tig * 2 + (e & 1)], acc[nt][e]);
            }
          }
        }
      }
    }
  }

  if constexpr (PASS == 2) {
    __syncthreads();  // the last chunk's column sums are complete
    store_cols(chunk_of(nloc - 1), int((nloc - 1) & 1));
  }
  if constexpr (PASS == 1) {
    // merge the quad (4 lanes share a row), then one (m, s) per row and split
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float m = m_run[hr], s = s_run[hr];
#pragma unroll
      for (int o = 1; o <= 2; o <<= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        const float mn = fmaxf(m, m2);
        if (mn != cu::neg_inf()) {
          s = (m == cu::neg_inf() ? 0.f : s * exp2f(m - mn)) + (m2 == cu::neg_inf() ? 0.f : s2 * exp2f(m2 - mn));
          m = mn;
        }
      }
      const int r = hr == 0 ? r_lo : r_hi;
      if (tig == 0 && r < tg.R) p.part[(int64_t(tile) * kMaxRows + r) * p.nsplit + split] = make_float2(m, s);
    }
  }
}

// (M, 1/Z) per row from the splits' (m, s); padding rows get (+inf, 0).
// A warp per row, lanes over the splits (a thread per row walked its ~500
// splits serially: 106 us per launch on an H200, more than both passes).
constexpr int kMergeWarps = 8;
__global__ void __launch_bounds__(kMergeWarps * 32) ws_merge_kernel(const WsParams p, int ntiles_launch) {
  const int lane = threadIdx.x & 31;
  const int64_t i = int64_t(blockIdx.x) * kMergeWarps + (threadIdx.x >> 5);
  cu::pdl_wait();  // pass 1's (m, s) pairs
  if (i >= int64_t(ntiles_launch) * kMaxRows) return;  // warp-uniform
  const int tile = int(i / kMaxRows), r = int(i % kMaxRows);
  const TileGeo tg = tile_geo(p, tile);
  if (r >= tg.R) {
    if (lane == 0) p.stats[i] = make_float2(__int_as_float(0x7f800000), 0.f);
    return;
  }
  const float2* pr = p.part + i * p.nsplit;
  float M = cu::neg_inf();
  for (int s = lane; s < p.nsplit; s += 32) M = fmaxf(M, pr[s].x);
  M = cu::warp_max(M);
  float Z = 0.f;
  for (int s = lane; s < p.nsplit; s += 32) {
    const float2 v = pr[s];
    if (v.x != cu::neg_inf()) Z += v.y * exp2f(v.x - M);
  }
  Z = cu::warp_sum(Z);
  // every row sees key 0, so M is finite and Z >= 1
  if (lane == 0) p.stats[i] = make_float2(M, 1.f / Z);
}

// Max over query heads: out = first ? acc : max(out, acc). All A_h >= 0.
__global__ void ws_max_merge_kernel(float* out, const float* acc, int64_t n, int first) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = first ? acc[i] : fmaxf(out[i], acc[i]);
}

// CTAs per SM the key splits aim at (two waves of two resident blocks by
// default; benchmarks sweep it: cuda_window_scores_set_ctas_per_sm).
std::atomic<int> g_ctas_per_sm{4};

// The device, its SM count, whether dependent launches are available (sm_90+), and the
// shared memory a block may opt in to (0: unknown).
struct WsDev {
  int dev = 0;
  int sms = 132;
  bool pdl = false;
  int smem_optin = 0;
};
WsDev ws_device() {
  WsDev d;
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    cudaGetLastError();
    return d;
  }
  if (n > 0) d.sms = n;
  d.dev = dev;
  d.smem_optin = cu::smem_optin(dev);
  d.pdl = cu::pdl_capable();
  return d;
}

// How a call's heads are tiled. Natural: a tile holds the whole group (gh =
// g) with a column-sum row per head, except that Max over a group too large
// for one tile (g * w > 128 rows) runs one query head at a time (max_split).
// Lean, where pass 2 of the natural tiling does not fit the block's shared
// memory (a row per head is 512 bytes: D 136..256 with more than 66 heads
// per tile on a 99 KB device): Sum and Mean add every head of a tile into
// one column-sum row (the heads are added anyway), Max runs one head at a
// time.
struct WsTiling {
  bool max_split;
  int gh;       // query heads per tile
  int cs_rows;  // pass 2's column-sum rows per tile
};
WsTiling ws_tiling(const WindowScoresArgs& a, bool lean) {
  const int g = a.num_q_heads / a.num_kv_heads;
  WsTiling t;
  t.max_split = a.reduce == Reduce::Max && g > 1 && (lean || int64_t(g) * a.window > kMaxRows);
  t.gh = t.max_split ? 1 : g;
  t.cs_rows = lean ? 1 : t.gh;
  return t;
}
// Dynamic shared memory of pass 2 (pass 1: the ring alone): the K ring and
// the double-buffered column sums.
template <int D, bool WG, int NS>
size_t ws_pass2_smem(int cs_rows) {
  return k_ring_bytes<D, WG, NS>() + 2 * size_t(cs_rows) * kTc * sizeof(float);
}

template <class T, int D, bool WG, bool PAD, int NS>
Status run_window_scores(const WindowScoresArgs& a, cudaStream_t st, const WsDev& dv, const WsTiling& tl) {
  const int g = a.num_q_heads / a.num_kv_heads;
  const int Hkv = a.num_kv_heads, L = a.seq_len, w = a.window;
  const bool max_split = tl.max_split;
  const int gh = tl.gh;
  const int rt = std::max(1, std::min(w, kMaxRows / gh));
  const int ntile = (w + rt - 1) / rt;
  const bool direct = ntile == 1;
  const int64_t head_bytes = int64_t(L) * a.head_dim * int64_t(sizeof(T));
  int hb = int(std::max<int64_t>(1, std::min<int64_t>(Hkv, kTargetL2Bytes / std::max<int64_t>(1, head_bytes))));
  hb = std::max(1, std::min(hb, 65535 / ntile));
  if (ntile > 65535) return Status::Shape;
  const int64_t tiles = int64_t(hb) * ntile;
  const int64_t nchunk_max = (int64_t(L) + kTc - 1) / kTc;
  const bool pdl = dv.pdl;
  const int64_t target_ctas = int64_t(dv.sms) * g_ctas_per_sm.load(std::memory_order_relaxed);
  const int nsplit = int(std::max<int64_t>(1, std::min<int64_t>(nchunk_max, (target_ctas + tiles - 1) / tiles)));

  // workspace: part, stats (and the Max scratch rows)
  const size_t part_bytes = size_t(tiles) * kMaxRows * nsplit * sizeof(float2);
  const size_t stats_bytes = size_t(tiles) * kMaxRows * sizeof(float2);
  const size_t acc_bytes = max_split ? size_t(Hkv) * L * sizeof(float) : 0;
  void* ws = nullptr;
  KVSQ_CUDA_TRY(cudaMallocAsync(&ws, part_bytes + stats_bytes + acc_bytes, st));
  Status s = Status::Ok;
  auto fail = [&](cudaError_t e) {
    if (s == Status::Ok && e != cudaSuccess) s = cuda_status(e);
  };

  WsParams p{};
  p.q = a.q;
  p.k = a.k;
  p.part = static_cast<float2*>(ws);
  p.stats = reinterpret_cast<float2*>(static_cast<char*>(ws) + part_bytes);
  float* accbuf = max_split ? reinterpret_cast<float*>(static_cast<char*>(ws) + part_bytes + stats_bytes) : nullptr;
  p.D = a.head_dim;
  p.L = L;
  p.w = w;
  p.q_rows = a.q_rows;
  p.g = g;
  p.sl2 = a.scale * cu::kLog2e;
  p.gh = gh;
  p.cs_rows = tl.cs_rows;
  p.cs_hstride = tl.cs_rows > 1 ? kTc : 0;
  p.rt = rt;
  p.ntile = ntile;
  p.nsplit = nsplit;
  p.direct = direct ? 1 : 0;
  p.reduce = int(a.reduce);
  p.add_mul = (a.reduce == Reduce::Mean && !max_split) ? 1.f / float(g) : 1.f;
  p.target = max_split ? accbuf : a.out;

  // a warp per 16 rows; the wgmma path in whole warpgroups (64 rows)
  const int rows_pad = std::min(kMaxRows, WG ? (gh * rt + 63) / 64 * 64 : (gh * rt + 15) / 16 * 16);
  const int threads = rows_pad / 16 * 32;
  const size_t smem1 = k_ring_bytes<D, WG, NS>();
  const size_t smem2 = ws_pass2_smem<D, WG, NS>(tl.cs_rows);
  fail(cu::raise_smem_limit(ws_pass_kernel<T, D, 1, WG, PAD, NS>, smem1, dv.dev, dv.smem_optin));
  fail(cu::raise_smem_limit(ws_pass_kernel<T, D, 2, WG, PAD, NS>, smem2, dv.dev, dv.smem_optin));

  if (s == Status::Ok && !direct && !max_split) fail(cudaMemsetAsync(a.out, 0, size_t(Hkv) * L * sizeof(float), st));
  const int nhh = max_split ? g : 1;
  for (int hh = 0; hh < nhh && s == Status::Ok; ++hh) {
    p.hh0 = hh;
    if (max_split) fail(cudaMemsetAsync(accbuf, 0, acc_bytes, st));
    for (int j0 = 0; j0 < Hkv && s == Status::Ok; j0 += hb) {
      const int nb = std::min(hb, Hkv - j0);
      p.j0 = j0;
      const dim3 grid(nsplit, nb * ntile);
      // Dependent launches (sm_90+): each kernel's preamble (Q fragments, the
      // first K chunks) overlaps the end of the one before; the 3 x (KV head
      // batches) launches were each a launch gap and a pipeline fill apart.
      // Not the call's first kernel: its preamble reads q and k, which the
      // kernel before it in the stream (any op: a gather of K, say, as
      // Recompress does) may still be writing, and a dependent launch may
      // start as soon as that kernel's blocks have exited, before its writes
      // are guaranteed visible (only griddepcontrol.wait guarantees that).
      const bool first = hh == 0 && j0 == 0;
      fail(cu::launch_pdl(pdl && !first, ws_pass_kernel<T, D, 1, WG, PAD, NS>, grid, dim3(threads), smem1, st, p));
      const int64_t nrows = int64_t(nb) * ntile * kMaxRows;
      fail(cu::launch_pdl(pdl, ws_merge_kernel, dim3(unsigned((nrows + kMergeWarps - 1) / kMergeWarps)),
                          dim3(kMergeWarps * 32), 0, st, p, nb * ntile));
      fail(cu::launch_pdl(pdl, ws_pass_kernel<T, D, 2, WG, PAD, NS>, grid, dim3(threads), smem2, st, p));
    }
    if (max_split && s == Status::Ok) {
      const int64_t n = int64_t(Hkv) * L;
      ws_max_merge_kernel<<<unsigned(std::min<int64_t>(4096, (n + 255) / 256)), 256, 0, st>>>(a.out, accbuf, n, hh == 0);
      fail(cudaGetLastError());
    }
  }
  fail(cudaFreeAsync(ws, st));
  return s;
}

// The ring depth and tiling for this device: f32 uses two tiles (hi, lo);
// 16-bit inputs a 3-chunk ring, or 2 where pass 2 would not fit the block's
// shared memory with 3 (sm_86/89 allow 99 KB: at D 256 the 3-chunk ring
// alone is 99 KB, at D 128 with more than 96 heads per tile ring and sums
// pass it). Where the natural tiling fits neither (D 136..256 with more than
// 66 heads per tile on a 99 KB device), the lean one (ws_tiling), whose
// pass 2 needs the ring and 512 bytes: it fits every device the build
// targets. (The natural tiling stays first where it fits: it is the one the
// benchmarks timed.) Status::Shape only for a device smaller than those.
template <class T, int D, bool WG, bool PAD>
Status window_scores_staged(const WindowScoresArgs& a, cudaStream_t st) {
  const WsDev dv = ws_device();
  const size_t optin = size_t(dv.smem_optin);
  auto fits = [&](size_t need) { return optin == 0 || need <= optin; };  // unknown: the launch says
  for (bool lean : {false, true}) {
    const WsTiling tl = ws_tiling(a, lean);
    if (lean && tl.cs_rows == ws_tiling(a, false).cs_rows) break;  // the same as the natural one
    if constexpr (sizeof(T) == 4) {
      if (fits(ws_pass2_smem<D, WG, 2>(tl.cs_rows))) return run_window_scores<T, D, WG, PAD, 2>(a, st, dv, tl);
    } else {
      if (fits(ws_pass2_smem<D, WG, 3>(tl.cs_rows))) return run_window_scores<T, D, WG, PAD, 3>(a, st, dv, tl);
      if constexpr (!WG && D >= 128) {  // (wgmma: sm_90a, 227 KB; D 64: 3 chunks fit 99 KB with 128 heads)
        if (fits(ws_pass2_smem<D, WG, 2>(tl.cs_rows))) return run_window_scores<T, D, WG, PAD, 2>(a, st, dv, tl);
      }
    }
  }
  return Status::Shape;
}

}  // namespace

Status cuda_window_scores(const WindowScoresArgs& a, void* stream) {
  // ---- validation (as the CPU twin; nothing is launched before it passes)
  if (a.num_q_heads <= 0 || a.num_kv_heads <= 0 || a.head_dim <= 0 || a.seq_len <= 0 || a.window <= 0 ||
      a.q_rows <= 0)
    return Status::Shape;
  if (a.num_q_heads % a.num_kv_heads != 0) return Status::Shape;
  if (a.window > a.seq_len || a.window > a.q_rows) return Status::Shape;
  if (!a.q || !a.k || !a.out) return Status::Shape;
  if (!is_float_dtype(a.dtype)) return Status::DType;
  if (a.reduce != Reduce::Mean && a.reduce != Reduce::Sum && a.reduce != Reduce::Max) return Status::Range;
  // ---- what this kernel supports
  // any head dim whose rows are whole 16-byte vectors, up to 256 (the
  // kernels are built for 64, 128 and 256 and zero-pad the rest)
  if (a.head_dim > 256 || a.head_dim % (a.dtype == DType::F32 ? 4 : 8) != 0) return Status::Shape;
  if (a.num_q_heads / a.num_kv_heads > kMaxRows) return Status::Shape;
  if ((reinterpret_cast<uintptr_t>(a.q) | reinterpret_cast<uintptr_t>(a.k)) % 16 != 0) return Status::Shape;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  return cu::with_float_dtype(a.dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    auto run = [&](auto wg) -> Status {
      constexpr bool kWG = decltype(wg)::value;
      switch (a.head_dim) {
        case 64: return window_scores_staged<T, 64, kWG, false>(a, st);
        case 128: return window_scores_staged<T, 128, kWG, false>(a, st);
        case 256: return window_scores_staged<T, 256, kWG, false>(a, st);
        default: break;
      }
      if (a.head_dim < 64) return window_scores_staged<T, 64, kWG, true>(a, st);
      if (a.head_dim < 128) return window_scores_staged<T, 128, kWG, true>(a, st);
      return window_scores_staged<T, 256, kWG, true>(a, st);
    };
    if constexpr (sizeof(T) == 2) {
      if (cu::wgmma_usable()) return run(std::true_type{});
    }
    return run(std::false_type{});
  });
}

void cuda_set_wgmma(bool on) { cu::wgmma_enabled_flag().store(on, std::memory_order_relaxed); }

void cuda_window_scores_set_ctas_per_sm(int n) {
  g_ctas_per_sm.store(n >= 1 && n <= 64 ? n : 4, std::memory_order_relaxed);
}

}  // namespace kvsq
