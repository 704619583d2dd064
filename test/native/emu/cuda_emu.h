// A CPU emulator for CUDA kernel source, for tests on machines without a GPU.
//
// scripts/cuda-emu.js rewrites a kernel file (cuda/*.cu) into plain C++ that
// includes this header: every CUDA thread of a launch becomes a fiber
// (ucontext), run one at a time by a scheduler, a thread-block cluster at a
// time. Barriers (__syncthreads and its _count/_or forms, cluster sync, and
// the warp exchanges __shfl_up_sync / __ballot_sync) suspend a fiber until
// every thread of their scope has arrived, so the kernel's own barrier
// placement decides what each thread sees, as on the device. Distributed
// shared memory (cluster map_shared_rank) maps into the other blocks' buffers.
//
// What it checks: the kernel's index arithmetic, its barrier protocol (a
// barrier that not every thread of its scope reaches is reported as a
// deadlock instead of hanging), reads of uninitialised shared or device
// memory (both are filled with a byte pattern, so such reads give garbage
// results), writes past a shared-memory or device allocation (guard bytes
// after each, checked after the kernel), and the launcher's host logic (it
// runs unchanged against the runtime stand-ins below). What it cannot check:
// timing, memory-model races between fibers (one runs at a time, so a
// missing barrier may still give the right answer: racecheck on a GPU is
// still needed), and anything the translation does not support (inline asm,
// static __shared__ arrays, textures: the generator refuses them).
//
// Context switches: a few instructions of assembly on x86-64 (callee-saved
// registers and the stack pointer; ucontext's swapcontext makes a signal-mask
// system call per switch, which made the emulator several times slower),
// ucontext elsewhere.
//
// Device properties are settable (emu_device()): compute capability, SM
// count, shared memory limit, so the launcher's paths for older GPUs and
// small GPUs can be run too.
#pragma once
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../../native/core/status.h"

// ---------------------------------------------------------------- CUDA keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 900  // kernels take their sm_90 (cluster) paths; the launcher asks emu_device()
#endif

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct emu_uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }

// Per-fiber built-ins: the scheduler sets them before resuming a fiber.
inline emu_uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

template <class T>
inline T min(T a, T b) { return b < a ? b : a; }
template <class T>
inline T max(T a, T b) { return a < b ? b : a; }
using std::ceil;
using std::isnan;
using std::sqrt;
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline int __popc(uint32_t x) { return __builtin_popcount(x); }
inline int __ffs(uint32_t x) { return __builtin_ffs(int(x)); }
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
inline T atomicOr(T* p, T v) {
  const T old = *p;
  *p = old | v;
  return old;
}

// ---------------------------------------------------------------- runtime stand-ins
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2,
                      cudaErrorLaunchFailure = 719;
using cudaStream_t = void*;
enum cudaDeviceAttr {
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrMultiProcessorCount,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaLaunchAttributeID { cudaLaunchAttributeClusterDimension = 4 };
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  struct {
    struct {
      unsigned x, y, z;
    } clusterDim;
  } val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes = 0;
  cudaStream_t stream = nullptr;
  cudaLaunchAttribute* attrs = nullptr;
  unsigned numAttrs = 0;
};

namespace cuda_emu {

struct Device {
  int major = 9;
  int sms = 132;
  int max_optin_smem = 227 * 1024;
};

constexpr unsigned char kFill = 0xa5;  // fresh device and shared memory
constexpr size_t kGuard = 256;         // guard bytes after every allocation
constexpr unsigned char kGuardByte = 0x5c;

struct State {
  Device dev;
  std::map<const void*, size_t> allocs;    // device allocations -> size
  std::map<const void*, int> smem_limit;   // kernel -> MaxDynamicSharedMemorySize
  std::string error;                       // first error of the current test
  long launches = 0;
};
inline State& st() {
  static State s;
  return s;
}
inline void fail(const std::string& why) {
  if (st().error.empty()) st().error = why;
}

inline void* dev_alloc(size_t bytes) {
  unsigned char* p = static_cast<unsigned char*>(std::malloc(bytes + kGuard));
  if (!p) return nullptr;
  std::memset(p, kFill, bytes);
  std::memset(p + bytes, kGuardByte, kGuard);
  st().allocs[p] = bytes;
  return p;
}
inline bool guard_ok(const unsigned char* p, size_t bytes) {
  for (size_t i = 0; i < kGuard; ++i)
    if (p[bytes + i] != kGuardByte) return false;
  return true;
}
inline void dev_free(void* p) {
  if (!p) return;
  auto it = st().allocs.find(p);
  if (it == st().allocs.end()) {
    fail("free of a pointer that is not a device allocation");
    return;
  }
  if (!guard_ok(static_cast<unsigned char*>(p), it->second)) fail("write past the end of a device allocation");
  st().allocs.erase(it);
  std::free(p);
}
// Checks the guards of every live device allocation (after each launch).
inline void check_guards(const char* what) {
  for (auto& a : st().allocs)
    if (!guard_ok(static_cast<const unsigned char*>(a.first), a.second))
      fail(std::string("write past the end of a device allocation during ") + what);
}

// ---------------------------------------------------------------- fibers and barriers

// ---------------------------------------------------------------- contexts
#if defined(__x86_64__)
extern "C" void kvsq_emu_switch(void** save_sp, void* to_sp);
// System V x86-64: push the callee-saved registers, swap stacks, pop them.
// Weak: every test file that includes this header defines the same code.
asm(R"(
  .pushsection .text
  .weak kvsq_emu_switch
  .type kvsq_emu_switch, @function
kvsq_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kvsq_emu_switch, .-kvsq_emu_switch
  .popsection
)");
struct Ctx {
  void* sp = nullptr;
};
// A fresh context that enters entry() (which never returns) on the given stack.
inline void ctx_make(Ctx& c, char* stack, size_t size, void (*entry)()) {
  uintptr_t top = (uintptr_t(stack) + size) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                              // entry's return address: never used
  *--sp = reinterpret_cast<void*>(entry);       // where the switch's ret goes
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12-r15
  c.sp = sp;
}
inline void ctx_switch(Ctx& from, Ctx& to) { kvsq_emu_switch(&from.sp, to.sp); }
#else
struct Ctx {
  ucontext_t uc;
};
inline void ctx_make(Ctx& c, char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
inline void ctx_switch(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t gen = 0;
  uint64_t acc = 0;
  uint64_t result = 0;
};

struct Fiber {
  Ctx ctx;
  char* stack = nullptr;
  unsigned tid = 0, block = 0;  // block: index within the grid
  bool done = false;
  Barrier* wait = nullptr;
  uint64_t wait_gen = 0;
};

struct Run {
  Ctx sched;
  std::vector<Fiber> fibers;
  int cur = -1;
  unsigned first_block = 0, cs = 1, threads = 0;
  size_t smem_bytes = 0;
  std::vector<std::vector<unsigned char>> smem;  // per block of the cluster
  std::vector<Barrier> warp_bar, block_bar;
  Barrier cluster_bar;
  std::vector<uint64_t> lane_buf;  // one word per thread for warp exchanges
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
};
inline Run*& run() {
  static Run* r = nullptr;
  return r;
}

enum class Op { None, Count, Or, BitOr };

// Arrive at b with a contribution; returns the combined value once every
// thread of the scope has arrived.
inline uint64_t arrive(Barrier& b, uint64_t v, Op op) {
  Run& r = *run();
  if (op == Op::Count) b.acc += v;
  if (op == Op::Or || op == Op::BitOr) b.acc |= v;
  if (++b.arrived == b.expected) {
    b.result = b.acc;
    b.acc = 0;
    b.arrived = 0;
    ++b.gen;
    return b.result;
  }
  Fiber& f = r.fibers[r.cur];
  f.wait = &b;
  f.wait_gen = b.gen;
  ctx_switch(f.ctx, r.sched);
  return b.result;  // read before this fiber can arrive anywhere again
}

inline Fiber& self() { return run()->fibers[run()->cur]; }
inline unsigned local_block() { return self().block - run()->first_block; }

inline void block_sync() { arrive(run()->block_bar[local_block()], 0, Op::None); }
inline int block_count(bool p) { return int(arrive(run()->block_bar[local_block()], p ? 1 : 0, Op::Count)); }
inline int block_or(bool p) { return arrive(run()->block_bar[local_block()], p ? 1 : 0, Op::Or) != 0; }
inline void cluster_sync() { arrive(run()->cluster_bar, 0, Op::None); }
inline Barrier& warp_bar() {
  Fiber& f = self();
  return run()->warp_bar[(f.block - run()->first_block) * (run()->threads / 32) + f.tid / 32];
}
inline size_t thread_slot() {
  Fiber& f = self();
  return size_t(f.block - run()->first_block) * run()->threads + f.tid;
}

template <class T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(run()->smem[local_block()].data());
}

template <class T>
T* map_shared_rank(T* p, int rank) {
  Run& r = *run();
  auto& mine = r.smem[local_block()];
  const unsigned char* b = reinterpret_cast<const unsigned char*>(p);
  if (b < mine.data() || b >= mine.data() + r.smem_bytes) {
    fail("map_shared_rank of a pointer outside the block's shared memory");
    return p;
  }
  if (rank < 0 || unsigned(rank) >= r.cs) {
    fail("map_shared_rank to a rank outside the cluster");
    return p;
  }
  return reinterpret_cast<T*>(r.smem[rank].data() + (b - mine.data()));
}

// A fiber's whole life: the kernel body, then back to the scheduler for good.
inline void fiber_main() {
  Run& r = *run();
  r.body(r.arg);
  Fiber& f = r.fibers[r.cur];
  f.done = true;
  ctx_switch(f.ctx, r.sched);
  std::abort();  // a finished fiber is never resumed
}

// Runs body(arg) as every thread of the grid, a cluster at a time.
inline void launch(dim3 grid, dim3 block, size_t smem, unsigned cs, void (*body)(void*), void* arg) {
  State& s = st();
  ++s.launches;
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1) {
    fail("the emulator runs 1-D grids and blocks only");
    return;
  }
  if (block.x == 0 || block.x % 32 || block.x > 1024) {
    fail("block size must be a multiple of 32 in [32, 1024]");
    return;
  }
  if (cs == 0 || cs > 8 || grid.x % cs) {
    fail("cluster size must divide the grid and be <= 8");
    return;
  }
  if (cs > 1 && s.dev.major < 9) {
    fail("thread-block clusters need sm_90");
    return;
  }
  Run r;
  run() = &r;
  r.cs = cs;
  r.threads = block.x;
  r.smem_bytes = smem;
  r.body = body;
  r.arg = arg;
  constexpr size_t kStack = 64 * 1024;
  const size_t nthreads = size_t(cs) * block.x;
  const size_t map_bytes = kStack * nthreads;
  void* stacks = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (stacks == MAP_FAILED) {
    fail("no memory for fiber stacks");
    run() = nullptr;
    return;
  }
  gridDim = grid;
  blockDim = block;
  for (unsigned c0 = 0; c0 < grid.x && st().error.empty(); c0 += cs) {
    r.first_block = c0;
    r.smem.assign(cs, std::vector<unsigned char>(smem + kGuard, kFill));
    for (auto& m : r.smem) std::memset(m.data() + smem, kGuardByte, kGuard);
    r.warp_bar.assign(nthreads / 32, Barrier{});
    for (auto& b : r.warp_bar) b.expected = 32;
    r.block_bar.assign(cs, Barrier{});
    for (auto& b : r.block_bar) b.expected = int(block.x);
    r.cluster_bar = Barrier{};
    r.cluster_bar.expected = int(nthreads);
    r.lane_buf.assign(nthreads, 0);
    r.fibers.assign(nthreads, Fiber{});
    for (size_t i = 0; i < nthreads; ++i) {
      Fiber& f = r.fibers[i];
      f.block = c0 + unsigned(i / block.x);
      f.tid = unsigned(i % block.x);
      f.stack = static_cast<char*>(stacks) + i * kStack;
      ctx_make(f.ctx, f.stack, kStack, &fiber_main);
    }
    for (;;) {
      bool progressed = false, live = false;
      for (size_t i = 0; i < nthreads; ++i) {
        Fiber& f = r.fibers[i];
        if (f.done) continue;
        live = true;
        if (f.wait && f.wait->gen == f.wait_gen) continue;
        f.wait = nullptr;
        r.cur = int(i);
        threadIdx.x = f.tid;
        blockIdx.x = f.block;
        ctx_switch(r.sched, f.ctx);
        progressed = true;
      }
      if (!live) break;
      if (!progressed) {
        fail("deadlock: threads wait at a barrier that the rest of its scope never reaches (cluster of block " +
             std::to_string(c0) + ")");
        break;
      }
    }
    for (unsigned b = 0; b < cs; ++b)
      if (!guard_ok(r.smem[b].data(), smem)) fail("write past the end of dynamic shared memory");
  }
  munmap(stacks, map_bytes);
  run() = nullptr;
  check_guards("a kernel");
}

template <class... A>
struct Packed {
  void (*k)(A...);
  std::tuple<std::decay_t<A>...> args;
  static void body(void* p) {
    Packed* self = static_cast<Packed*>(p);
    std::apply(self->k, self->args);
  }
};

template <class... A, class... B>
cudaError_t launch_kernel(void (*k)(A...), dim3 grid, dim3 block, size_t smem, unsigned cs, B&&... args) {
  if (smem > 48 * 1024) {
    auto it = st().smem_limit.find(reinterpret_cast<const void*>(k));
    if (it == st().smem_limit.end() || size_t(it->second) < smem) {
      fail("dynamic shared memory above 48 KB without cudaFuncAttributeMaxDynamicSharedMemorySize");
      return cudaErrorInvalidValue;
    }
  }
  if (smem > size_t(st().dev.max_optin_smem)) return cudaErrorInvalidValue;
  Packed<A...> p{k, std::tuple<std::decay_t<A>...>(std::forward<B>(args)...)};
  launch(grid, block, smem, cs, &Packed<A...>::body, &p);
  return st().error.empty() ? cudaSuccess : cudaErrorLaunchFailure;
}

// kernel<<<grid, block, smem, stream>>>(args) is rewritten to
// cuda_emu::chevron(kernel, grid, block, smem, stream)(args).
template <class K>
struct Chevron {
  K k;
  dim3 grid, block;
  size_t smem;
  template <class... B>
  void operator()(B&&... args) const {
    launch_kernel(k, grid, block, smem, 1u, std::forward<B>(args)...);
  }
};
template <class K>
Chevron<K> chevron(K k, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  return Chevron<K>{k, grid, block, smem};
}

}  // namespace cuda_emu

// ---------------------------------------------------------------- device built-ins
inline void __syncthreads() { cuda_emu::block_sync(); }
inline int __syncthreads_count(int p) { return cuda_emu::block_count(p != 0); }
inline int __syncthreads_or(int p) { return cuda_emu::block_or(p != 0); }

template <class T>
T __shfl_up_sync(unsigned mask, T v, int delta) {
  using namespace cuda_emu;
  static_assert(sizeof(T) <= 8, "shuffle of a wider type");
  if (mask != 0xffffffffu) fail("partial-warp shuffle masks are not emulated");
  Run& r = *run();
  const size_t slot = thread_slot();
  uint64_t w = 0;
  std::memcpy(&w, &v, sizeof(T));
  r.lane_buf[slot] = w;
  arrive(warp_bar(), 0, Op::None);
  const unsigned lane = self().tid & 31;
  T out = v;
  if (int(lane) >= delta) std::memcpy(&out, &r.lane_buf[slot - delta], sizeof(T));
  arrive(warp_bar(), 0, Op::None);  // nobody overwrites lane_buf before all have read
  return out;
}
inline unsigned __ballot_sync(unsigned mask, int p) {
  using namespace cuda_emu;
  if (mask != 0xffffffffu) fail("partial-warp ballot masks are not emulated");
  const unsigned lane = self().tid & 31;
  return unsigned(arrive(warp_bar(), p ? (uint64_t(1) << lane) : 0, Op::BitOr));
}

namespace cooperative_groups {
struct cluster_group {
  void sync() const { cuda_emu::cluster_sync(); }
  template <class T>
  T* map_shared_rank(T* p, int rank) const {
    return cuda_emu::map_shared_rank(p, rank);
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups

// ---------------------------------------------------------------- runtime calls
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  const cuda_emu::Device& d = cuda_emu::st().dev;
  switch (a) {
    case cudaDevAttrComputeCapabilityMajor: *v = d.major; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = d.max_optin_smem; break;
    case cudaDevAttrMultiProcessorCount: *v = d.sms; break;
  }
  return cudaSuccess;
}
template <class K>
cudaError_t cudaFuncSetAttribute(K k, cudaFuncAttribute, int v) {
  if (v > cuda_emu::st().dev.max_optin_smem) return cudaErrorInvalidValue;
  cuda_emu::st().smem_limit[reinterpret_cast<const void*>(k)] = v;
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMallocAsync(T** p, size_t bytes, cudaStream_t) {
  *p = static_cast<T*>(cuda_emu::dev_alloc(bytes));
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  *p = cuda_emu::dev_alloc(bytes);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  cuda_emu::dev_free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cuda_emu::st().error.empty() ? cudaSuccess : cudaErrorLaunchFailure; }
template <class... A, class... B>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*k)(A...), B&&... args) {
  unsigned cs = 1;
  for (unsigned i = 0; i < cfg->numAttrs; ++i)
    if (cfg->attrs[i].id == cudaLaunchAttributeClusterDimension) cs = cfg->attrs[i].val.clusterDim.x;
  return cuda_emu::launch_kernel(k, cfg->gridDim, cfg->blockDim, cfg->dynamicSmemBytes, cs,
                                 std::forward<B>(args)...);
}

namespace kvsq {
namespace emu_cuda {
inline Status cuda_status(cudaError_t e) {
  if (e == cudaSuccess) return Status::Ok;
  if (e == cudaErrorMemoryAllocation) return Status::OOM;
  return Status::Cuda;
}
}  // namespace emu_cuda
}  // namespace kvsq
#define KVSQ_CUDA_TRY(expr)                                                          \
  do {                                                                               \
    const cudaError_t kvsq_e_ = (expr);                                              \
    if (kvsq_e_ != cudaSuccess) return ::kvsq::emu_cuda::cuda_status(kvsq_e_);        \
  } while (0)
