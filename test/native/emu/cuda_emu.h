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
// runs unchanged against the runtime stand-ins below). Missing barriers, in
// part: the threads between two barriers run in a shuffled order (Order,
// below), so a thread that reads what another writes with no barrier between
// them sees stale data in about half the launches. Dependent launches that
// read or write, before their griddepcontrol.wait, what the kernel before
// them wrote (they start as early as the device may start them: pdl_*
// below). What it cannot check:
// timing, races inside one thread's run between two of its barriers (a fiber
// is never pre-empted there, so an interleaving of single loads and stores is
// never tried: racecheck on a GPU is still needed), and anything the
// translation does not support (inline asm it has no model for, textures:
// the generator refuses them).
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
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../../native/core/dtype.h"
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
#ifndef __CUDA_ARCH_FEAT_SM90_ALL
#define __CUDA_ARCH_FEAT_SM90_ALL 1  // and their sm_90a (wgmma) paths, which launchers pick on a 9.0 device only
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
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
struct alignas(8) uint2 {
  uint32_t x, y;
};
inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
inline float2 make_float2(float a, float b) { return float2{a, b}; }
inline uint2 make_uint2(uint32_t a, uint32_t b) { return uint2{a, b}; }
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return uint4{a, b, c, d}; }


// 16-bit floats: storage only; conversions are the CPU twins' (native/core/
// dtype.h: round to nearest even, like the device's _rn intrinsics).
struct __half {
  uint16_t x;
};
struct __nv_bfloat16 {
  uint16_t x;
};
struct alignas(4) __half2 {
  __half x, y;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline float __half2float(__half h) { return kvsq::f16_to_f32(h.x); }
inline __half __float2half_rn(float f) { return __half{kvsq::f32_to_f16(f)}; }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.x; }
inline float __bfloat162float(__nv_bfloat16 h) { return kvsq::bf16_to_f32(h.x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{kvsq::f32_to_bf16(f)}; }
inline float2 __half22float2(__half2 h) { return float2{__half2float(h.x), __half2float(h.y)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}

// Per-fiber built-ins: the scheduler sets them before resuming a fiber.
inline emu_uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

template <class T>
inline T min(T a, T b) { return b < a ? b : a; }
template <class T>
inline T max(T a, T b) { return a < b ? b : a; }
using std::ceil;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::sqrt;
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __int_as_float(int i) { return __uint_as_float(uint32_t(i)); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
using std::fmaxf;
using std::fminf;
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
                      cudaErrorInsufficientDriver = 35, cudaErrorNoDevice = 100, cudaErrorInvalidDevice = 101,
                      cudaErrorECCUncorrectable = 214, cudaErrorIllegalAddress = 700,
                      cudaErrorHardwareStackError = 714, cudaErrorIllegalInstruction = 715,
                      cudaErrorMisalignedAddress = 716, cudaErrorInvalidAddressSpace = 717, cudaErrorInvalidPc = 718,
                      cudaErrorLaunchFailure = 719, cudaErrorAssert = 710;
using cudaStream_t = void*;
enum cudaDeviceAttr {
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor,
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrMultiProcessorCount,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaLaunchAttributeID {
  cudaLaunchAttributeClusterDimension = 4,
  cudaLaunchAttributeProgrammaticStreamSerialization = 6,
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  struct {
    struct {
      unsigned x, y, z;
    } clusterDim;
    int programmaticStreamSerializationAllowed;
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
  int major = 9, minor = 0;
  int sms = 132;
  int max_optin_smem = 227 * 1024;
};
// The emulated parts: sm_90 (the default: an H100's 132 SMs, 227 KB of
// shared memory per block), sm_80 (an A100's 108 SMs, 163 KB; no clusters,
// dependent launches or wgmma), sm_86 (82 SMs, 99 KB) and sm_89 (58 SMs,
// 99 KB), so the launchers' paths for the other GPUs the prebuild targets
// run too. KVSQ_EMU_DEVICE names the process's part; tests that set another
// one for a while use PartScope (below), which restores it.
inline Device part(const std::string& name) {
  if (name == "sm_90") return Device{};
  if (name == "sm_80") return Device{8, 0, 108, 163 * 1024};
  if (name == "sm_86") return Device{8, 6, 82, 99 * 1024};
  if (name == "sm_89") return Device{8, 9, 58, 99 * 1024};
  std::fprintf(stderr, "cuda-emu: the emulated part (KVSQ_EMU_DEVICE) must be sm_80, sm_86, sm_89 or sm_90, not '%s'\n",
               name.c_str());
  std::abort();
}
inline Device env_device() {
  const char* e = std::getenv("KVSQ_EMU_DEVICE");
  return part(e && *e ? e : "sm_90");
}

constexpr unsigned char kFill = 0xa5;  // fresh device and shared memory
constexpr size_t kGuard = 256;         // guard bytes after every allocation
constexpr unsigned char kGuardByte = 0x5c;

// The order in which the scheduler resumes runnable fibers (and runs the
// clusters of a grid). On the device nothing orders the threads of a block
// between two barriers, so a result that depends on the order is a missing
// barrier or a race; running the threads in different orders turns such a
// bug into a wrong result (with the fixed ascending order, a warp that reads
// what a lower warp wrote without a barrier in between always saw the data).
//   Forward: ascending thread index, clusters in grid order;
//   Reverse: descending, clusters last to first;
//   Shuffle: a fresh random permutation of the threads at every pass of the
//            scheduler and of the clusters at every launch (the default).
// KVSQ_EMU_ORDER=forward|reverse|shuffle picks one for the process; the
// shuffle's generator is seeded by schedule_seed() (the tests seed it from
// their own replayable generator) or else from KVSQ_SEED or the clock.
enum class Order { Forward, Reverse, Shuffle };

struct State {
  Device dev;
  Order order = Order::Shuffle;
  std::mt19937_64 order_rng;
  std::map<const void*, size_t> allocs;    // device allocations -> size
  std::map<const void*, int> smem_limit;   // kernel -> MaxDynamicSharedMemorySize
  std::map<const void*, size_t> static_bytes;  // kernel -> its static __shared__ bytes, once it has run
  size_t last_static = 0;                  // static __shared__ bytes of the last launch's blocks (the most)
  std::atomic<long> failures{0};           // every error ever reported (tests compare before / after)
  std::mutex alloc_mu;                     // allocs (ops may allocate from several threads)
  std::mutex launch_mu;                    // one device operation at a time (the early-start model swaps memory)
  long launches = 0;
  // Programmatic dependent launch, started early (see pdl_* below).
  bool pdl_model = true;                   // KVSQ_EMU_PDL=off: launches simply run in order
  bool pdl_snap_valid = false;             // pdl_snap holds memory as it was before the last launch
  std::thread::id pdl_owner;               // ... made by this host thread
  void* pdl_stream = nullptr;              // ... on this stream
  std::map<const void*, std::vector<unsigned char>> pdl_snap;
  struct PdlRange {
    unsigned char* p;                      // device bytes [p, p + len) around what the previous launch changed
    size_t len, off;                       // their values before it and after it: pdl_pre / pdl_cur [off, off + len)
  };
  std::vector<PdlRange> pdl_ranges;        // (this launch is that one's dependent)
  std::vector<unsigned char> pdl_pre, pdl_cur;
  std::vector<unsigned char> pdl_changed;  // per byte of the ranges: 1 if the previous launch changed it
  bool pdl_pre_view = false;               // the running cluster sees memory as before the previous launch
  long pdl_checked = 0;                    // dependent launches run with the early-start model
};
inline State& st() {
  static State s;
  static const bool configured = [] {
    const char* o = std::getenv("KVSQ_EMU_ORDER");
    const std::string os = o ? o : "";
    if (os == "forward") s.order = Order::Forward;
    else if (os == "reverse") s.order = Order::Reverse;
    else if (!os.empty() && os != "shuffle") {
      std::fprintf(stderr, "cuda-emu: KVSQ_EMU_ORDER must be forward, reverse or shuffle, not '%s'\n", o);
      std::abort();
    }
    const char* pm = std::getenv("KVSQ_EMU_PDL");
    if (pm && std::string(pm) == "off") s.pdl_model = false;
    else if (pm && *pm && std::string(pm) != "early") {
      std::fprintf(stderr, "cuda-emu: KVSQ_EMU_PDL must be early or off, not '%s'\n", pm);
      std::abort();
    }
    s.dev = env_device();
    const char* seed = std::getenv("KVSQ_SEED");
    s.order_rng.seed(seed ? std::strtoull(seed, nullptr, 10) : uint64_t(std::random_device{}()));
    return true;
  }();
  (void)configured;
  return s;
}
// Emulates `d` until the end of the scope, then the process's part again.
struct PartScope {
  explicit PartScope(const Device& d) { st().dev = d; }
  ~PartScope() { st().dev = env_device(); }
  PartScope(const PartScope&) = delete;
  PartScope& operator=(const PartScope&) = delete;
};
// Seeds the shuffle's generator. Call it between launches (the tests do, at
// their start); launches draw from it under the launch lock.
inline void schedule_seed(uint64_t seed) { st().order_rng.seed(seed); }
// A visiting order for n items by the current Order (rng: st().order_rng).
inline void schedule_order(std::vector<size_t>& v, size_t n) {
  v.resize(n);
  for (size_t i = 0; i < n; ++i) v[i] = st().order == Order::Reverse ? n - 1 - i : i;
  if (st().order == Order::Shuffle)
    for (size_t i = n; i > 1; --i) std::swap(v[i - 1], v[size_t(st().order_rng() % i)]);
}
// The first error of the calling thread's current launch (cleared when one
// starts); per thread, as the runtime's last error is.
inline std::string& err() {
  static thread_local std::string e;
  return e;
}
struct Run;
inline Run*& run() {  // the calling thread's launch (its fibers run on that thread)
  static thread_local Run* r = nullptr;
  return r;
}

// Records an error: the running launch fails (its launcher returns an error
// status), and the message goes to stderr at once. Outside a launch (a guard
// found broken when memory is freed) nothing could report it: the process
// stops, as a corrupted heap would have stopped it on the device.
// A bad launch configuration fails the launch without stopping anything.
inline void launch_error(const std::string& why) {
  ++st().failures;
  if (err().empty()) {
    err() = why;
    std::fprintf(stderr, "cuda-emu: %s\n", why.c_str());
  }
}
inline void fail(const std::string& why) {
  if (!run()) {
    std::fprintf(stderr, "cuda-emu: %s\n", why.c_str());
    std::abort();
  }
  launch_error(why);
}

inline void* dev_alloc(size_t bytes) {
  unsigned char* p = static_cast<unsigned char*>(std::malloc(bytes + kGuard));
  if (!p) return nullptr;
  std::memset(p, kFill, bytes);
  std::memset(p + bytes, kGuardByte, kGuard);
  std::lock_guard<std::mutex> lk(st().alloc_mu);
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
  std::unique_lock<std::mutex> lk(st().alloc_mu);
  auto it = st().allocs.find(p);
  if (it == st().allocs.end()) {
    fail("free of a pointer that is not a device allocation");
    return;
  }
  if (!guard_ok(static_cast<unsigned char*>(p), it->second)) fail("write past the end of a device allocation");
  st().allocs.erase(it);
  st().pdl_snap.erase(p);
  std::free(p);
}
// ---------------------------------------------------------------- dependent launches, started early
// A kernel launched with programmatic stream serialization (cu::launch_pdl)
// may start on the device once every block of the kernel before it in the
// stream has triggered or exited, and only its griddepcontrol.wait makes that
// kernel's writes visible (cuda/common.cuh states the rule). The emulator
// plays the earliest such start: the threads of a dependent run up to their
// griddepcontrol.wait (or to their end) seeing device memory as it was before
// the previous kernel ran; its writes appear once every thread of the cluster
// is at the wait, finished, or held at a barrier by one of those. So a
// dependent that reads, before its wait, what the kernel before it wrote gets
// the older value (and its test fails on the result), and one that writes
// there before its wait fails the launch. "Wrote" means the bytes whose value
// the previous launch changed (a store of the value already there cannot be
// told from no store, and reading it early is harmless). The model applies
// to two launches in a row from one host thread on one stream with no copy,
// set or synchronisation between them (anything between them orders them
// fully); KVSQ_EMU_PDL=off turns it off (launches then simply run in order,
// so a test that fails only with it has read too early). Cost: a copy of the
// live device memory at every launch, skipped above kPdlSnapMax.
constexpr size_t kPdlSnapMax = size_t(512) << 20;

// A copy, set or synchronisation: the next launch cannot overlap the last one.
inline void pdl_barrier() { st().pdl_snap_valid = false; }

// At a launch (pdl: with the attribute): what the previous launch changed if
// this one may overlap it, then the snapshot for the next launch.
inline void pdl_begin_launch(bool pdl, void* stream) {
  State& s = st();
  s.pdl_ranges.clear();
  s.pdl_pre.clear();
  s.pdl_cur.clear();
  s.pdl_changed.clear();
  s.pdl_pre_view = false;
  if (!s.pdl_model) return;
  std::lock_guard<std::mutex> lk(s.alloc_mu);
  if (pdl && s.pdl_snap_valid && s.pdl_owner == std::this_thread::get_id() && s.pdl_stream == stream) {
    ++s.pdl_checked;
    for (auto& e : s.pdl_snap) {
      auto it = s.allocs.find(e.first);
      if (it == s.allocs.end() || it->second != e.second.size()) continue;
      unsigned char* cur = static_cast<unsigned char*>(const_cast<void*>(e.first));
      const unsigned char* pre = e.second.data();
      const size_t n = e.second.size();
      constexpr size_t kBlk = 4096;  // unchanged aligned blocks are skipped whole
      for (size_t i = 0; i < n;) {
        if (i % kBlk == 0 && i + kBlk <= n && std::memcmp(cur + i, pre + i, kBlk) == 0) {
          i += kBlk;
          continue;
        }
        if (cur[i] == pre[i]) {
          ++i;
          continue;
        }
        // A range: changed bytes with gaps of fewer than kGap unchanged ones
        // joined (per-range work at every cluster made many small ranges slow).
        constexpr size_t kGap = 64;
        size_t j = i + 1, last = i;
        while (j < n && j - last <= kGap) {
          if (cur[j] != pre[j]) last = j;
          ++j;
        }
        j = last + 1;
        s.pdl_ranges.push_back(State::PdlRange{cur + i, j - i, s.pdl_pre.size()});
        s.pdl_pre.insert(s.pdl_pre.end(), pre + i, pre + j);
        s.pdl_cur.insert(s.pdl_cur.end(), cur + i, cur + j);
        for (size_t x = i; x < j; ++x) s.pdl_changed.push_back(cur[x] != pre[x]);
        i = j;
      }
    }
  }
  size_t total = 0;
  for (auto& a : s.allocs) total += a.second;
  s.pdl_snap_valid = total <= kPdlSnapMax;
  for (auto it = s.pdl_snap.begin(); it != s.pdl_snap.end();)
    it = s.allocs.count(it->first) && s.pdl_snap_valid ? std::next(it) : s.pdl_snap.erase(it);
  if (!s.pdl_snap_valid) return;
  s.pdl_owner = std::this_thread::get_id();
  s.pdl_stream = stream;
  for (auto& a : s.allocs) {
    const unsigned char* p = static_cast<const unsigned char*>(a.first);
    s.pdl_snap[a.first].assign(p, p + a.second);
  }
}
// A cluster starts: it sees memory as before the previous launch.
inline void pdl_enter() {
  State& s = st();
  if (s.pdl_ranges.empty()) return;
  for (auto& r : s.pdl_ranges) {
    std::memcpy(s.pdl_cur.data() + r.off, r.p, r.len);  // (the last cluster's waited-for writes included)
    std::memcpy(r.p, s.pdl_pre.data() + r.off, r.len);
  }
  s.pdl_pre_view = true;
}
// The previous launch's writes appear. True if the view changed.
inline bool pdl_leave() {
  State& s = st();
  if (!s.pdl_pre_view) return false;
  s.pdl_pre_view = false;
  bool wrote = false;
  for (auto& r : s.pdl_ranges) {
    const unsigned char* pre = s.pdl_pre.data() + r.off;
    const unsigned char* cur = s.pdl_cur.data() + r.off;
    if (std::memcmp(r.p, pre, r.len) == 0) {
      std::memcpy(r.p, cur, r.len);
      continue;
    }
    // The cluster wrote into the range before its wait: a byte the previous
    // launch changed is a broken rule; a byte between them is a legitimate
    // write and stays.
    const unsigned char* chg = s.pdl_changed.data() + r.off;
    for (size_t i = 0; i < r.len; ++i) {
      if (r.p[i] == pre[i]) r.p[i] = cur[i];
      else if (chg[i]) wrote = true, r.p[i] = cur[i];
    }
  }
  if (wrote)
    fail("a thread of a dependent launch wrote, before its griddepcontrol.wait, device memory that the kernel "
         "before it wrote (cuda/common.cuh: wait first)");
  return true;
}

// Checks the guards of every live device allocation (after each launch).
inline void check_guards(const char* what) {
  std::lock_guard<std::mutex> lk(st().alloc_mu);
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
  unsigned tid = 0, rank = 0;  // linear thread index in the block; block's rank in its cluster
  emu_uint3 t3, b3;             // threadIdx, blockIdx
  bool done = false;
  Barrier* wait = nullptr;
  uint64_t wait_gen = 0;
  // cp.async copies issued and not yet waited for: the source's 16 bytes as
  // read at issue, written to shared memory only by the cp.async.wait_group
  // that completes their group (so a read of the destination before the wait
  // sees what was there before: the fill pattern or an older chunk).
  struct AsyncCopy {
    uint32_t dst;
    uint64_t group;
    unsigned char data[16];
  };
  std::vector<AsyncCopy> async_copies;
  uint64_t async_groups = 0;  // cp.async.commit_group count
  bool grid_waited = false;   // griddepcontrol.wait executed
  bool grid_wait_held = false;  // ... and held there until the previous launch's writes appear (pdl_leave)
  // Shared-memory addresses (16-byte units) this thread's cp.async copies
  // wrote since its last fence.proxy.async: wgmma may not read them yet.
  std::vector<uint32_t> landed;
  // wgmma.mma_async issued and not yet complete, in issue order (completed
  // by the wgmma.wait_group that completes their commit group).
  struct WgOp {
    uint64_t op = 0;                   // this thread's issue count: the warpgroup's op id
    uint64_t group = ~uint64_t(0);     // commit group; ~0 until committed
    int n = 0;                         // N of m64nNk16
    bool f16 = false, accumulate = false;
    uint64_t desc = 0;
    std::vector<float*> out;           // the D registers
    std::vector<float> in, res;        // D on entry; D computed at completion
    int pred = -1;                     // index (in wg_ops) of the pending op this one accumulates onto
    bool superseded = false;           // a later pending op accumulates onto this one
  };
  std::vector<WgOp> wg_ops;
  uint64_t wg_issued = 0, wg_groups = 0;
  bool wg_fenced = false;  // wgmma.fence since the last wgmma.wait_group
};

struct Run {
  Ctx sched;
  std::vector<Fiber> fibers;
  int cur = -1;
  unsigned cs = 1, threads = 0;  // threads: per block
  size_t smem_bytes = 0;
  // Per block of the cluster, one arena: dynamic shared memory at offset 0,
  // guard bytes, then the static __shared__ variables as first used. A
  // shared-space address (cvta, ldmatrix, cp.async) is an offset into it.
  std::vector<std::vector<unsigned char>> smem;
  std::vector<std::map<int, size_t>> static_off;
  std::vector<size_t> arena_used;
  // Per block, the bytes of its static __shared__ variables, unpadded (a
  // lower bound of what the compiler lays out: the limit checks below never
  // fail a kernel the hardware would take).
  std::vector<size_t> static_exact;
  std::vector<Barrier> warp_bar, block_bar, wg_bar;
  Barrier cluster_bar;
  // Per block, one flag per 16 bytes of its arena: written by a cp.async
  // whose thread has not executed fence.proxy.async since (wgmma reads
  // shared memory through the async proxy).
  std::vector<std::vector<uint8_t>> unfenced;
  // A operands of wgmma.mma_async, per (warpgroup slot, op id): 128 threads x
  // 4 registers, deposited at issue, used at completion.
  struct WgA {
    uint32_t a[128][4];
    int deposits = 0, uses = 0;
    uint64_t desc = 0;
  };
  std::map<std::pair<size_t, uint64_t>, WgA> wg_a;
  std::vector<uint64_t> lane_buf;  // one word per thread for warp exchanges
  void (*body)(void*) = nullptr;
  void* arg = nullptr;
};
enum class Op { None, Count, Or, BitOr };

// Arrive at b with a contribution; returns the combined value once every
// thread of the scope has arrived.
inline size_t thread_slot();
inline std::vector<const char*>& lane_kinds() {
  static thread_local std::vector<const char*> k;
  return k;
}
// kind (warp collectives): which collective the lane is at; the lane that
// completes the barrier checks that all 32 are at the same one (lanes of a
// warp at different .sync collectives is undefined behaviour on the device).
inline uint64_t arrive(Barrier& b, uint64_t v, Op op, const char* kind = nullptr) {
  Run& r = *run();
  if (kind) {
    auto& lk = lane_kinds();
    const size_t slot = thread_slot();
    if (lk.size() < size_t(r.cs) * r.threads) lk.resize(size_t(r.cs) * r.threads);
    lk[slot] = kind;
    if (b.arrived + 1 == b.expected) {
      const size_t base = slot - slot % 32;
      for (size_t i = base; i < base + 32; ++i)
        if (lk[i] != kind) {
          fail(std::string("lanes of a warp at different collectives: ") + lk[i] + " and " + kind);
          break;
        }
    }
  }
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
inline unsigned local_block() { return self().rank; }

inline void block_sync() { arrive(run()->block_bar[local_block()], 0, Op::None); }
inline int block_count(bool p) { return int(arrive(run()->block_bar[local_block()], p ? 1 : 0, Op::Count)); }
inline int block_or(bool p) { return arrive(run()->block_bar[local_block()], p ? 1 : 0, Op::Or) != 0; }
inline void cluster_sync() { arrive(run()->cluster_bar, 0, Op::None); }
inline Barrier& warp_bar() {
  Fiber& f = self();
  return run()->warp_bar[f.rank * (run()->threads / 32) + f.tid / 32];
}
inline size_t thread_slot() {
  Fiber& f = self();
  return size_t(f.rank) * run()->threads + f.tid;
}

// A static __shared__ variable (declaration id, element count): one buffer
// per block, made on the first thread's first use, filled with the pattern.
constexpr size_t kStaticSmem = 64 * 1024;  // room for static __shared__ variables per block
template <class T>
T* static_smem(int id, size_t n) {
  Run& r = *run();
  const unsigned b = local_block();
  auto& m = r.static_off[b];
  auto it = m.find(id);
  if (it == m.end()) {
    const size_t off = (r.arena_used[b] + 15) & ~size_t(15);
    if (off + n * sizeof(T) > r.smem[b].size()) {
      fail("static __shared__ variables above the emulator's 64 KB");
      return reinterpret_cast<T*>(r.smem[b].data());
    }
    r.arena_used[b] = off + n * sizeof(T);
    r.static_exact[b] += n * sizeof(T);
    it = m.emplace(id, off).first;
  }
  return reinterpret_cast<T*>(r.smem[b].data() + it->second);
}

// What a kernel reached that the emulator does not model (inline asm).
inline void unsupported(const char* what) {
  fail(std::string("the kernel reached ") + what + ", which the emulator does not model");
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
  if (b < mine.data() || b >= mine.data() + mine.size()) {
    fail("map_shared_rank of a pointer outside the block's shared memory");
    return p;
  }
  if (rank < 0 || unsigned(rank) >= r.cs) {
    fail("map_shared_rank to a rank outside the cluster");
    return p;
  }
  return reinterpret_cast<T*>(r.smem[rank].data() + (b - mine.data()));
}

// The shared-space address of p: its offset in the running block's arena.
inline uint32_t shared_address(const void* p) {
  Run& r = *run();
  auto& mine = r.smem[local_block()];
  const unsigned char* b = static_cast<const unsigned char*>(p);
  if (b < mine.data() || b >= mine.data() + mine.size()) {
    fail("a shared-space address of a pointer outside the block's shared memory");
    return 0;
  }
  return uint32_t(b - mine.data());
}
inline unsigned char* shared_at(uint32_t addr, size_t bytes) {
  auto& mine = run()->smem[local_block()];
  if (size_t(addr) + bytes > mine.size()) {
    fail("a shared-space access outside the block's shared memory");
    return mine.data();
  }
  return mine.data() + addr;
}

// A fiber's whole life: the kernel body, then back to the scheduler for good.
inline void fiber_main() {
  Run& r = *run();
  r.body(r.arg);
  Fiber& f = r.fibers[r.cur];
  if (!f.wg_ops.empty()) fail("a thread exited with wgmma.mma_async not waited for (wgmma.wait_group)");
  f.done = true;
  ctx_switch(f.ctx, r.sched);
  std::abort();  // a finished fiber is never resumed
}

// Runs body(arg) as every thread of the grid, a cluster at a time.
inline void launch(dim3 grid, dim3 block, size_t smem, unsigned cs, void (*body)(void*), void* arg,
                   bool pdl = false, void* stream = nullptr) {
  State& s = st();
  std::lock_guard<std::mutex> device_lock(s.launch_mu);
  ++s.launches;
  err().clear();
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads % 32 || threads > 1024) {
    launch_error("block size must be a multiple of 32 in [32, 1024] (the emulator forms whole warps)");
    return;
  }
  if (cs == 0 || cs > 8 || grid.x % cs || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    launch_error("cluster size must divide the grid and be <= 8");
    return;
  }
  if (cs > 1 && s.dev.major < 9) {
    launch_error("thread-block clusters need sm_90");
    return;
  }
  pdl_begin_launch(pdl, stream);
  s.last_static = 0;
  Run r;
  run() = &r;
  r.cs = cs;
  r.threads = threads;
  r.smem_bytes = smem;
  r.body = body;
  r.arg = arg;
  constexpr size_t kStack = 64 * 1024;
  const size_t nthreads = size_t(cs) * threads;
  const size_t map_bytes = kStack * nthreads;
  void* stacks = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (stacks == MAP_FAILED) {
    launch_error("no memory for fiber stacks");
    run() = nullptr;
    return;
  }
  gridDim = grid;
  blockDim = block;
  // clusters run one after another: x fastest, then y, then z (clusters span x)
  const size_t clusters = size_t(grid.x / cs) * grid.y * grid.z;
  std::vector<size_t> cluster_order, fiber_order;
  schedule_order(cluster_order, clusters);
  for (size_t ci = 0; ci < clusters && err().empty(); ++ci) {
    const size_t c = cluster_order[ci];
    const unsigned c0 = unsigned(c % (grid.x / cs)) * cs, cy = unsigned(c / (grid.x / cs) % grid.y),
                   cz = unsigned(c / (grid.x / cs) / grid.y);
    r.smem.assign(cs, std::vector<unsigned char>(smem + kGuard + kStaticSmem, kFill));
    r.static_off.assign(cs, {});
    r.arena_used.assign(cs, smem + kGuard);
    r.static_exact.assign(cs, 0);
    for (auto& m : r.smem) std::memset(m.data() + smem, kGuardByte, kGuard);
    // Barrier generations unique across clusters and launches: per-warp
    // results cached by generation (ptx_warp) must never match a stale one.
    static uint64_t serial = 0;  // under the launch lock
    const uint64_t gen0 = ++serial << 32;
    r.warp_bar.assign(nthreads / 32, Barrier{});
    for (auto& b : r.warp_bar) b.expected = 32, b.gen = gen0;
    r.block_bar.assign(cs, Barrier{});
    for (auto& b : r.block_bar) b.expected = int(threads);
    r.wg_bar.assign(threads % 128 == 0 ? nthreads / 128 : 0, Barrier{});
    for (auto& b : r.wg_bar) b.expected = 128, b.gen = gen0;
    r.unfenced.assign(cs, std::vector<uint8_t>((r.smem[0].size() + 15) / 16, 0));
    r.wg_a.clear();
    r.cluster_bar = Barrier{};
    r.cluster_bar.expected = int(nthreads);
    r.lane_buf.assign(nthreads, 0);
    r.fibers.assign(nthreads, Fiber{});
    for (size_t i = 0; i < nthreads; ++i) {
      Fiber& f = r.fibers[i];
      f.rank = unsigned(i / threads);
      f.tid = unsigned(i % threads);
      f.t3 = emu_uint3{f.tid % block.x, f.tid / block.x % block.y, f.tid / block.x / block.y};
      f.b3 = emu_uint3{c0 + f.rank, cy, cz};
      f.stack = static_cast<char*>(stacks) + i * kStack;
      ctx_make(f.ctx, f.stack, kStack, &fiber_main);
    }
    pdl_enter();
    for (;;) {
      bool progressed = false, live = false;
      schedule_order(fiber_order, nthreads);
      for (size_t i : fiber_order) {
        Fiber& f = r.fibers[i];
        if (f.done) continue;
        live = true;
        if (f.grid_wait_held) continue;
        if (f.wait && f.wait->gen == f.wait_gen) continue;
        f.wait = nullptr;
        r.cur = int(i);
        threadIdx = f.t3;
        blockIdx = f.b3;
        ctx_switch(r.sched, f.ctx);
        progressed = true;
      }
      if (!live) break;
      if (!progressed && pdl_leave()) {  // all that could run before the previous launch's writes has
        for (auto& f : r.fibers) f.grid_wait_held = false;
        continue;
      }
      if (!progressed) {
        fail("deadlock: threads wait at a barrier that the rest of its scope never reaches (cluster of block (" +
             std::to_string(c0) + ", " + std::to_string(cy) + ", " + std::to_string(cz) + "))");
        break;
      }
    }
    pdl_leave();  // (threads that never waited; or a failed cluster: memory as the previous launch left it)
    for (unsigned b = 0; b < cs; ++b) {
      if (!guard_ok(r.smem[b].data(), smem)) fail("write past the end of dynamic shared memory");
      s.last_static = std::max(s.last_static, r.static_exact[b]);
      // A block's static and dynamic shared memory together: at most what
      // the device lets a block opt in to (a real launch fails otherwise).
      if (smem + r.static_exact[b] > size_t(s.dev.max_optin_smem) && err().empty())
        fail("static (" + std::to_string(r.static_exact[b]) + " B) + dynamic (" + std::to_string(smem) +
             " B) shared memory above the device's per-block limit (" + std::to_string(s.dev.max_optin_smem) + " B)");
    }
  }
  check_guards("a kernel");
  munmap(stacks, map_bytes);
  run() = nullptr;
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
cudaError_t launch_kernel(void (*k)(A...), dim3 grid, dim3 block, size_t smem, unsigned cs, bool pdl, void* stream,
                          B&&... args) {
  if (smem > 48 * 1024) {
    auto it = st().smem_limit.find(reinterpret_cast<const void*>(k));
    if (it == st().smem_limit.end() || size_t(it->second) < smem) {
      launch_error("dynamic shared memory (" + std::to_string(smem) + " B) above 48 KB and above the kernel's " +
                   "cudaFuncAttributeMaxDynamicSharedMemorySize (" +
                   (it == st().smem_limit.end() ? std::string("not set") : std::to_string(it->second) + " B") + ")");
      return cudaErrorInvalidValue;
    }
  }
  if (smem > size_t(st().dev.max_optin_smem)) return cudaErrorInvalidValue;
  Packed<A...> p{k, std::tuple<std::decay_t<A>...>(std::forward<B>(args)...)};
  launch(grid, block, smem, cs, &Packed<A...>::body, &p, pdl, stream);
  // Now that the kernel's static shared memory is known: the dynamic limit
  // set for it plus that must fit the device's per-block opt-in (where
  // cudaFuncSetAttribute fails on a card), and without a limit set, static
  // plus dynamic must fit the default 48 KB.
  const void* key = reinterpret_cast<const void*>(k);
  const size_t stat = st().last_static;
  st().static_bytes[key] = std::max(st().static_bytes[key], stat);
  auto lim = st().smem_limit.find(key);
  if (err().empty() && lim != st().smem_limit.end() && size_t(lim->second) + stat > size_t(st().dev.max_optin_smem))
    launch_error("cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " + std::to_string(lim->second) +
                 ") fails on this device: with the kernel's " + std::to_string(stat) + " B of static shared memory " +
                 "it exceeds the per-block limit (" + std::to_string(st().dev.max_optin_smem) + " B)");
  if (err().empty() && lim == st().smem_limit.end() && smem + stat > 48 * 1024)
    launch_error("static + dynamic shared memory above 48 KB without cudaFuncAttributeMaxDynamicSharedMemorySize");
  return err().empty() ? cudaSuccess : cudaErrorLaunchFailure;
}

// kernel<<<grid, block, smem, stream>>>(args) is rewritten to
// cuda_emu::chevron(grid, block, smem, stream)([&] { kernel(args); }).
struct Chevron {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <class F>
  void operator()(const F& call) const {
    if (smem > size_t(st().dev.max_optin_smem)) {
      launch_error("dynamic shared memory above the device's limit");
      return;
    }
    launch(grid, block, smem, 1u, [](void* p) { (*static_cast<const F*>(p))(); },
           const_cast<void*>(static_cast<const void*>(&call)), false, stream);
  }
};
inline Chevron chevron(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return Chevron{grid, block, smem, stream};
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
  arrive(warp_bar(), 0, Op::None, "__shfl_up_sync");
  const unsigned lane = self().tid & 31;
  T out = v;
  if (int(lane) >= delta) std::memcpy(&out, &r.lane_buf[slot - delta], sizeof(T));
  arrive(warp_bar(), 0, Op::None);  // nobody overwrites lane_buf before all have read
  return out;
}
// __shfl_xor_sync / __shfl_sync with a width: lanes exchange within groups of width.
template <class T>
T warp_exchange(unsigned mask, T v, int width, int (*src_of)(int lane, int arg, int width), int arg) {
  using namespace cuda_emu;
  static_assert(sizeof(T) <= 8, "shuffle of a wider type");
  if (mask != 0xffffffffu) fail("partial-warp shuffle masks are not emulated");
  Run& r = *run();
  const size_t slot = thread_slot();
  const int lane = int(self().tid & 31);
  uint64_t w = 0;
  std::memcpy(&w, &v, sizeof(T));
  r.lane_buf[slot] = w;
  arrive(warp_bar(), 0, Op::None, "__shfl_xor_sync/__shfl_sync");
  T out;
  std::memcpy(&out, &r.lane_buf[slot - lane + src_of(lane, arg, width)], sizeof(T));
  arrive(warp_bar(), 0, Op::None);
  return out;
}
inline int xor_src(int lane, int m, int width) {
  const int base = lane & ~(width - 1);
  const int s = lane ^ m;
  return s >= base + width ? lane : s;
}
inline int idx_src(int lane, int src, int width) { return (lane & ~(width - 1)) + (src & (width - 1)); }
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return warp_exchange(mask, v, width, &xor_src, lane_mask);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return warp_exchange(mask, v, width, &idx_src, src);
}
inline int __all_sync(unsigned mask, int p) {
  using namespace cuda_emu;
  if (mask != 0xffffffffu) fail("partial-warp vote masks are not emulated");
  return int(arrive(warp_bar(), p ? 1 : 0, Op::Count, "__all_sync")) == 32;
}
inline int __any_sync(unsigned mask, int p) {
  using namespace cuda_emu;
  if (mask != 0xffffffffu) fail("partial-warp vote masks are not emulated");
  return arrive(warp_bar(), p ? 1 : 0, Op::Or, "__any_sync") != 0;
}
inline unsigned __ballot_sync(unsigned mask, int p) {
  using namespace cuda_emu;
  if (mask != 0xffffffffu) fail("partial-warp ballot masks are not emulated");
  const unsigned lane = self().tid & 31;
  return unsigned(arrive(warp_bar(), p ? (uint64_t(1) << lane) : 0, Op::BitOr, "__ballot_sync"));
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
    case cudaDevAttrComputeCapabilityMinor: *v = d.minor; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = d.max_optin_smem; break;
    case cudaDevAttrMultiProcessorCount: *v = d.sms; break;
  }
  return cudaSuccess;
}
template <class K>
cudaError_t cudaFuncSetAttribute(K k, cudaFuncAttribute, int v) {
  // The value plus the kernel's static shared memory (known once it has run;
  // the launch checks the first time) must fit the per-block opt-in.
  const auto known = cuda_emu::st().static_bytes.find(reinterpret_cast<const void*>(k));
  const size_t stat = known == cuda_emu::st().static_bytes.end() ? 0 : known->second;
  if (v < 0 || size_t(v) + stat > size_t(cuda_emu::st().dev.max_optin_smem)) return cudaErrorInvalidValue;
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
template <class T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMallocAsync(p, bytes, nullptr);
}
inline cudaError_t cudaFree(void* p) {
  cuda_emu::dev_free(p);
  return cudaSuccess;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  cuda_emu::dev_free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  std::lock_guard<std::mutex> lk(cuda_emu::st().launch_mu);
  cuda_emu::pdl_barrier();
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  std::lock_guard<std::mutex> lk(cuda_emu::st().launch_mu);
  cuda_emu::pdl_barrier();
  std::memcpy(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) {
  std::lock_guard<std::mutex> lk(cuda_emu::st().launch_mu);
  cuda_emu::pdl_barrier();
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() {
  const bool bad = !cuda_emu::err().empty();
  cuda_emu::err().clear();  // not sticky, like a launch error on the device
  return bad ? cudaErrorLaunchFailure : cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() {
  std::lock_guard<std::mutex> lk(cuda_emu::st().launch_mu);
  cuda_emu::pdl_barrier();
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) { return cudaMemsetAsync(p, v, n, nullptr); }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) {
  return cudaMemcpyAsync(d, s, n, k, nullptr);
}
// Memory pools: the launchers tune the default pool's release threshold.
using cudaMemPool_t = void*;
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold };
inline cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* p, int) {
  *p = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr, void* v) {
  std::memset(v, 0, 8);
  return cudaSuccess;
}
inline cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }
inline const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : cuda_emu::err().c_str();
}
// Events and properties: enough for test files that also hold benchmarks
// (which skip without KVSQ_CUDA_BENCH); emulated times are meaningless.
using cudaEvent_t = int*;
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = nullptr) { return cudaSuccess; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0.f;
  return cudaSuccess;
}
struct cudaDeviceProp {
  char name[256] = "kvsqueeze CPU emulator";
  int multiProcessorCount = 0;
  int major = 0, minor = 0;
  size_t totalGlobalMem = size_t(16) << 30;
};
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  *p = cudaDeviceProp{};
  p->multiProcessorCount = cuda_emu::st().dev.sms;
  p->major = cuda_emu::st().dev.major;
  p->minor = cuda_emu::st().dev.minor;
  return cudaSuccess;
}
// One emulated device.
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
template <class... A, class... B>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*k)(A...), B&&... args) {
  unsigned cs = 1;
  bool pdl = false;
  for (unsigned i = 0; i < cfg->numAttrs; ++i) {
    if (cfg->attrs[i].id == cudaLaunchAttributeClusterDimension) cs = cfg->attrs[i].val.clusterDim.x;
    // Programmatic dependent launch: the dependent's threads run up to their
    // griddepcontrol.wait seeing memory as before the previous launch (the
    // early-start model, cuda_emu::pdl_begin_launch). The launchers ask for
    // it on sm_90+ only; an older emulated device refuses it.
    if (cfg->attrs[i].id == cudaLaunchAttributeProgrammaticStreamSerialization &&
        cfg->attrs[i].val.programmaticStreamSerializationAllowed) {
      if (cuda_emu::st().dev.major < 9) return cudaErrorInvalidValue;
      pdl = true;
    }
  }
  return cuda_emu::launch_kernel(k, cfg->gridDim, cfg->blockDim, cfg->dynamicSmemBytes, cs, pdl, cfg->stream,
                                 std::forward<B>(args)...);
}

// ---------------------------------------------------------------- PTX (inline asm)
// scripts/cuda-emu.js turns `asm volatile("tpl" : outs : ins)` into
// cuda_emu::ptx("tpl", {operands}) (outputs first, by reference; inputs by
// value; numbered %0.. in that order, as in the asm). The instructions the
// kernels use are modelled from their PTX ISA definitions: cp.async (the
// data lands at the cp.async.wait_group that completes its commit group, not
// before: a chunk read before its wait is caught), ldmatrix x4
// (and .trans) and mma.sync m16n8k16 f32 += f16/bf16 (fragment layouts of
// the PTX ISA's "matrix fragments for mma.m16n8k16"; products summed in
// double, rounded once: within any f32 accumulation order's error). Anything
// else fails the launch.
namespace cuda_emu {

struct Opnd {
  void* p = nullptr;  // outputs (and in/out operands): where the result goes
  uint64_t v = 0;     // the value's bits on entry
  template <class T>
  static Opnd ref(T& x) {
    static_assert(sizeof(T) <= 8, "operand wider than 64 bits");
    Opnd o;
    o.p = &x;
    std::memcpy(&o.v, &x, sizeof(T));
    return o;
  }
  template <class T>
  static Opnd val(const T& x) {
    static_assert(sizeof(T) <= 8, "operand wider than 64 bits");
    Opnd o;
    std::memcpy(&o.v, &x, sizeof(T));
    return o;
  }
};

inline float b16_to_f32(uint16_t h, bool f16) { return f16 ? kvsq::f16_to_f32(h) : kvsq::bf16_to_f32(h); }

// Every lane deposits its operand words; after a warp barrier each computes
// its results from all lanes'; a second barrier keeps the deposits until all
// have read them.
struct WarpDeposit {
  uint64_t w[12];
};
inline std::vector<WarpDeposit>& deposits() {
  static std::vector<WarpDeposit> d;
  return d;
}

enum class Ptx {
  GridWait, GridTrigger, Commit, Wait, CpAsync, Ldsm, LdsmTrans, MmaF16, MmaBf16,
  WgFence, WgCommit, WgWait, WgMma, ProxyFence, Nop, Other
};

// The instruction of a template (classified once per call site: the
// template is a string literal).
inline Ptx classify(const char* tpl) {
  auto starts = [&](const char* p) { return std::strncmp(tpl, p, std::strlen(p)) == 0; };
  if (tpl[std::strspn(tpl, " \t\n")] == '\0') return Ptx::Nop;  // an empty asm: a compiler fence only
  auto has = [&](const char* p) { return std::strstr(tpl, p) != nullptr; };
  if (starts("cp.async.commit_group")) return Ptx::Commit;
  if (starts("cp.async.wait_group")) return Ptx::Wait;
  // dependent launch control (cudaLaunchKernelEx, pdl_begin_launch)
  if (starts("griddepcontrol.wait")) return Ptx::GridWait;
  if (starts("griddepcontrol.launch_dependents")) return Ptx::GridTrigger;
  if (starts("cp.async.cg.shared.global")) return Ptx::CpAsync;
  if (starts("ldmatrix.sync.aligned.m8n8.x4")) return has(".trans") ? Ptx::LdsmTrans : Ptx::Ldsm;
  if (starts("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32")) return Ptx::MmaF16;
  if (starts("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")) return Ptx::MmaBf16;
  if (starts("wgmma.fence.sync.aligned")) return Ptx::WgFence;
  if (starts("wgmma.commit_group.sync.aligned")) return Ptx::WgCommit;
  if (starts("wgmma.wait_group.sync.aligned")) return Ptx::WgWait;
  if (starts("fence.proxy.async.shared::cta")) return Ptx::ProxyFence;
  // (inside braces, after the setp that makes the scale-d predicate)
  if (has("wgmma.mma_async.sync.aligned.m64n") && (has(".f32.f16.f16 ") || has(".f32.bf16.bf16 "))) return Ptx::WgMma;
  return Ptx::Other;
}

// Results of the warp's current ldmatrix / mma, computed once by the first
// lane resumed after the deposit barrier (generation = that barrier's).
struct WarpResult {
  uint64_t gen = ~uint64_t(0);
  uint32_t out[32][4];
};
inline std::vector<WarpResult>& warp_results() {
  static std::vector<WarpResult> r;
  return r;
}

inline void ptx_compute(Ptx kind, const WarpDeposit* dep, uint32_t (&out)[32][4]) {
  if (kind == Ptx::Ldsm || kind == Ptx::LdsmTrans) {
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        if (kind == Ptx::Ldsm) {
          const uint32_t a = uint32_t(dep[8 * i + lane / 4].w[4]);
          std::memcpy(&out[lane][i], shared_at(a + 4 * (lane % 4), 4), 4);
        } else {
          uint16_t lo, hi;
          const uint32_t a0 = uint32_t(dep[8 * i + 2 * (lane % 4)].w[4]);
          const uint32_t a1 = uint32_t(dep[8 * i + 2 * (lane % 4) + 1].w[4]);
          std::memcpy(&lo, shared_at(a0 + 2 * (lane / 4), 2), 2);
          std::memcpy(&hi, shared_at(a1 + 2 * (lane / 4), 2), 2);
          out[lane][i] = uint32_t(lo) | (uint32_t(hi) << 16);
        }
      }
    return;
  }
  // mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: c %0-3 (in/out), a %4-7, b %8-9
  const bool f16 = kind == Ptx::MmaF16;
  auto half = [](uint64_t w, int k) { return uint16_t(uint32_t(w) >> (16 * (k & 1))); };
  double A[16][16], B[16][8];
  for (int row = 0; row < 16; ++row)  // lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8)
    for (int k = 0; k < 16; ++k)
      A[row][k] = b16_to_f32(half(dep[(row % 8) * 4 + (k % 8) / 2].w[4 + (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k), f16);
  for (int k = 0; k < 16; ++k)  // lane col * 4 + (k % 8) / 2, register (k >= 8)
    for (int col = 0; col < 8; ++col)
      B[k][col] = b16_to_f32(half(dep[col * 4 + (k % 8) / 2].w[8 + (k >= 8 ? 1 : 0)], k), f16);
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, tig = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * tig + (i & 1);
      float c;
      const uint32_t cb = uint32_t(dep[lane].w[i]);
      std::memcpy(&c, &cb, 4);
      double acc = c;
      for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
      const float d = float(acc);
      std::memcpy(&out[lane][i], &d, 4);
    }
  }
}

inline void ptx_warp(Ptx kind, const Opnd* ops, size_t nops) {
  Run& r = *run();
  const size_t nthreads = size_t(r.cs) * r.threads;
  auto& dep = deposits();
  if (dep.size() < nthreads) dep.resize(nthreads);
  auto& res = warp_results();
  if (res.size() < nthreads / 32) res.resize(nthreads / 32);
  const size_t slot = thread_slot();
  const int lane = int(self().tid & 31);
  for (size_t i = 0; i < nops && i < 12; ++i) dep[slot].w[i] = ops[i].v;
  Barrier& wb = warp_bar();
  arrive(wb, 0, Op::None, kind == Ptx::Ldsm || kind == Ptx::LdsmTrans ? "ldmatrix" : "mma.sync");
  WarpResult& wr = res[slot / 32];
  if (wr.gen != wb.gen) {
    ptx_compute(kind, &dep[slot - size_t(lane)], wr.out);
    wr.gen = wb.gen;
  }
  uint32_t out[4];
  std::memcpy(out, wr.out[lane], sizeof(out));
  arrive(wb, 0, Op::None);  // the deposits stay until every lane has its results
  for (int i = 0; i < 4; ++i) std::memcpy(ops[i].p, &out[i], 4);
}


// ---- wgmma (sm_90a): m64nNk16, f32 += f16/bf16, A in registers, B through a
// K-major descriptor without swizzle (cuda/common.cuh). Issue records the
// thread's operands (A into the warpgroup's record for this op id, its D
// registers, their entry values) and fills the D registers with a NaN
// pattern, so a read before the wait sees garbage; wgmma.wait_group waits
// for the whole warpgroup (every thread has issued), then computes each
// completed op for this thread from shared memory as it is at that moment
// (a slot overwritten before the wait is caught), in issue order, and fails
// if a D register was written while the op was in flight.
constexpr uint32_t kWgPoison = 0x7fc0dead;
inline size_t wg_slot() {
  Run& r = *run();
  if (r.wg_bar.empty()) fail("wgmma in a block whose size is not a multiple of 128 (a warpgroup is 4 warps)");
  return thread_slot() / 128;
}
inline void wgmma_issue(const char* tpl, const Opnd* ops, size_t nops) {
  Run& r = *run();
  Fiber& f = self();
  const char* np = std::strstr(tpl, ".m64n") + 5;
  const int n = int(std::strtol(np, nullptr, 10));
  if (n < 8 || n > 256 || n % 8 || nops != size_t(n / 2 + 6)) {
    unsupported((std::string("PTX `") + tpl + "` (operands)").c_str());
    return;
  }
  if (!f.wg_fenced) fail("wgmma.mma_async without a wgmma.fence since the last wgmma.wait_group");
  const size_t slot = wg_slot();
  if (r.wg_bar.empty()) return;
  Fiber::WgOp op;
  op.op = f.wg_issued++;
  op.n = n;
  op.f16 = std::strstr(tpl, ".f32.f16.f16 ") != nullptr;
  op.desc = ops[n / 2 + 4].v;
  op.accumulate = uint32_t(ops[n / 2 + 5].v) != 0;
  for (int i = 0; i < n / 2; ++i) {
    float x;
    const uint32_t b = uint32_t(ops[i].v);
    std::memcpy(&x, &b, 4);
    op.out.push_back(static_cast<float*>(ops[i].p));
    op.in.push_back(x);
  }
  // accumulating onto a pending op's registers: its result is this one's input
  for (int i = int(f.wg_ops.size()) - 1; i >= 0; --i) {
    if (f.wg_ops[i].superseded) continue;
    bool same = f.wg_ops[i].out.size() == op.out.size(), any = false;
    for (size_t e = 0; e < op.out.size(); ++e) {
      for (float* q : f.wg_ops[i].out) any = any || q == op.out[e];
      same = same && f.wg_ops[i].out[e] == op.out[e];
    }
    if (same) {
      op.pred = i;
      f.wg_ops[i].superseded = true;
      break;
    }
    if (any) fail("wgmma.mma_async D registers partly overlap a pending op's");
  }
  Run::WgA& rec = r.wg_a[{slot, op.op}];
  const unsigned t = unsigned(thread_slot() % 128);
  for (int i = 0; i < 4; ++i) rec.a[t][i] = uint32_t(ops[n / 2 + i].v);
  if (rec.deposits++ == 0) rec.desc = op.desc;
  else if (rec.desc != op.desc) fail("wgmma.mma_async: threads of a warpgroup gave different descriptors");
  for (float* q : op.out) std::memcpy(q, &kWgPoison, 4);
  f.wg_ops.push_back(std::move(op));
}
inline void wgmma_wait(uint64_t keep) {
  Run& r = *run();
  Fiber& f = self();
  const size_t slot = wg_slot();
  if (r.wg_bar.empty()) return;
  arrive(r.wg_bar[slot], 0, Op::None);  // every thread of the warpgroup has issued its ops
  f.wg_fenced = false;
  const uint64_t done_below = f.wg_groups > keep ? f.wg_groups - keep : 0;
  const unsigned t = unsigned(thread_slot() % 128), w = t / 32, lane = t % 32, g = lane / 4, tq = lane % 4;
  auto& unf = r.unfenced[local_block()];
  size_t ndone = 0;
  while (ndone < f.wg_ops.size() && f.wg_ops[ndone].group < done_below) ++ndone;
  for (size_t i = 0; i < ndone; ++i) {
    Fiber::WgOp& op = f.wg_ops[i];
    auto it = r.wg_a.find({slot, op.op});
    if (it == r.wg_a.end() || it->second.deposits != 128) {
      fail("wgmma.mma_async not issued by every thread of the warpgroup");
      return;
    }
    const Run::WgA& rec = it->second;
    const uint64_t d = op.desc;
    if ((d >> 62) != 0) unsupported("a swizzled wgmma descriptor");
    const uint32_t start = uint32_t(d & 0x3FFF) << 4, lbo = uint32_t((d >> 16) & 0x3FFF) << 4,
                   sbo = uint32_t((d >> 32) & 0x3FFF) << 4;
    auto half = [](uint32_t w32, int k) { return uint16_t(w32 >> (16 * (k & 1))); };
    const std::vector<float>& in = op.pred >= 0 ? f.wg_ops[size_t(op.pred)].res : op.in;
    op.res.assign(size_t(op.n / 2), 0.f);
    for (int j = 0; j < op.n / 8; ++j)
      for (int e = 0; e < 4; ++e) {
        const int row = int(16 * w + g) + (e >= 2 ? 8 : 0), col = 8 * j + 2 * int(tq) + (e & 1);
        double acc = op.accumulate ? double(in[size_t(4 * j + e)]) : 0.0;
        for (int k = 0; k < 16; ++k) {
          // A: the m16n8k16 layout within warp row / 16
          const int rr = row % 16, wl = (rr % 8) * 4 + (k % 8) / 2;
          const uint32_t aw = rec.a[(row / 16) * 32 + wl][(rr >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
          const double a = b16_to_f32(half(aw, k), op.f16);
          const uint32_t addr = start + uint32_t(col / 8) * sbo + uint32_t(k / 8) * lbo + uint32_t(col % 8) * 16 + uint32_t(k % 8) * 2;
          uint16_t bv;
          std::memcpy(&bv, shared_at(addr, 2), 2);
          if (addr / 16 < unf.size() && unf[addr / 16])
            fail("wgmma reads shared memory that a cp.async wrote without a fence.proxy.async by its thread since");
          acc += a * double(b16_to_f32(bv, op.f16));
        }
        op.res[size_t(4 * j + e)] = float(acc);
      }
    if (!op.superseded) {
      for (size_t e = 0; e < op.out.size(); ++e) {
        uint32_t now;
        std::memcpy(&now, op.out[e], 4);
        if (now != kWgPoison) fail("a wgmma.mma_async D register was written before its wgmma.wait_group");
        std::memcpy(op.out[e], &op.res[e], 4);
      }
    }
    if (++it->second.uses == 128) r.wg_a.erase(it);
  }
  // keep the incomplete ops; predecessor indices shift by ndone
  std::vector<Fiber::WgOp> rest;
  for (size_t i = ndone; i < f.wg_ops.size(); ++i) {
    Fiber::WgOp op = std::move(f.wg_ops[i]);
    if (op.pred >= 0) op.pred = op.pred >= int(ndone) ? op.pred - int(ndone) : -1;
    rest.push_back(std::move(op));
  }
  f.wg_ops = std::move(rest);
}

inline void ptx(const char* tpl, std::initializer_list<Opnd> list) {
  const Opnd* ops = list.begin();
  const size_t n = list.size();
  static const char* last_tpl = nullptr;  // one call site at a time, mostly
  static Ptx last_kind = Ptx::Other;
  if (tpl != last_tpl) {
    last_kind = classify(tpl);
    last_tpl = tpl;
  }
  switch (last_kind) {
    // griddepcontrol.wait: under the early-start model (pdl_begin_launch)
    // the previous launch's writes appear only past it. The trigger changes
    // no data here (the model starts a dependent as early as it may start
    // anyway); the project's rule (cuda/common.cuh) is checked instead: a
    // thread waits for the previous grid before it lets the next one start,
    // which is what makes kernels two launches back complete for a
    // dependent's preamble.
    case Ptx::GridWait:
      self().grid_waited = true;
      if (st().pdl_pre_view) {  // held until the previous launch's writes appear (launch's scheduler)
        self().grid_wait_held = true;
        ctx_switch(self().ctx, run()->sched);
      }
      return;
    case Ptx::GridTrigger:
      if (!self().grid_waited) fail("griddepcontrol.launch_dependents before griddepcontrol.wait (cuda/common.cuh: wait, then trigger)");
      return;
    case Ptx::Commit: ++self().async_groups; return;
    case Ptx::Wait: {
      // cp.async.wait_group N: every group but the N most recent committed
      // ones is complete (copies not yet committed stay pending).
      const char* nstr = std::strstr(tpl, "wait_group") + std::strlen("wait_group");
      const uint64_t keep = std::strstr(nstr, "%0") ? (n > 0 ? ops[0].v : 0) : std::strtoull(nstr, nullptr, 10);
      Fiber& f = self();
      const uint64_t done_below = f.async_groups > keep ? f.async_groups - keep : 0;
      size_t w = 0;
      auto& unf = run()->unfenced[local_block()];
      for (size_t i = 0; i < f.async_copies.size(); ++i) {
        Fiber::AsyncCopy& c = f.async_copies[i];
        if (c.group < done_below) {
          std::memcpy(shared_at(c.dst, 16), c.data, 16);
          for (uint32_t u = c.dst / 16; u <= (c.dst + 15) / 16 && u < unf.size(); ++u) unf[u] = 1;
          f.landed.push_back(c.dst);
        } else {
          f.async_copies[w++] = c;
        }
      }
      f.async_copies.resize(w);
      return;
    }
    case Ptx::CpAsync: {
      // [dst], [src], 16[, src-size]: src-size bytes copied, the rest of the 16 zeroed
      if (n < 2) break;
      const char* comma = std::strrchr(tpl, ',');
      size_t bytes = 16;
      if (std::strstr(comma, "%2")) bytes = n > 2 ? size_t(uint32_t(ops[2].v)) : 16;
      else if (!std::strstr(comma, "16")) bytes = size_t(std::strtoul(comma + 1, nullptr, 10));
      if (bytes > 16) bytes = 16;
      shared_at(uint32_t(ops[0].v), 16);  // bounds-checked now, written at the wait
      Fiber::AsyncCopy c;
      c.dst = uint32_t(ops[0].v);
      c.group = self().async_groups;
      const void* src = reinterpret_cast<const void*>(uintptr_t(ops[1].v));
      if (bytes) {
        // the source must lie inside one device allocation (the guard bytes
        // after it catch writes; reads past the end are caught here)
        std::lock_guard<std::mutex> lk(st().alloc_mu);
        auto& al = st().allocs;
        auto it = al.upper_bound(src);
        const unsigned char* s0 = static_cast<const unsigned char*>(src);
        if (it == al.begin() ||
            (--it, s0 + bytes > static_cast<const unsigned char*>(it->first) + it->second))
          fail("cp.async reads outside a device allocation");
        else
          std::memcpy(c.data, src, bytes);
      }
      std::memset(c.data + bytes, 0, 16 - bytes);
      self().async_copies.push_back(c);
      return;
    }
    case Ptx::Ldsm:
    case Ptx::LdsmTrans:
      if (n != 5) break;
      ptx_warp(last_kind, ops, n);
      return;
    case Ptx::MmaF16:
    case Ptx::MmaBf16:
      if (n != 10) break;
      ptx_warp(last_kind, ops, n);
      return;
    case Ptx::Nop: return;
    case Ptx::WgFence: self().wg_fenced = true; return;
    case Ptx::WgCommit: {
      Fiber& f = self();
      for (Fiber::WgOp& op : f.wg_ops)
        if (op.group == ~uint64_t(0)) op.group = f.wg_groups;
      ++f.wg_groups;
      return;
    }
    case Ptx::WgWait: {
      const char* nstr = std::strstr(tpl, "wait_group") + std::strlen("wait_group");
      wgmma_wait(std::strstr(nstr, "%0") ? (n > 0 ? ops[0].v : 0) : std::strtoull(nstr, nullptr, 10));
      return;
    }
    case Ptx::WgMma: wgmma_issue(tpl, ops, n); return;
    case Ptx::ProxyFence: {
      Fiber& f = self();
      auto& unf = run()->unfenced[local_block()];
      for (uint32_t a : f.landed)
        for (uint32_t u = a / 16; u <= (a + 15) / 16 && u < unf.size(); ++u) unf[u] = 0;
      f.landed.clear();
      return;
    }
    case Ptx::Other: break;
  }
  unsupported((std::string("PTX `") + tpl + "`").c_str());
}

}  // namespace cuda_emu

inline uint32_t __cvta_generic_to_shared(const void* p) { return cuda_emu::shared_address(p); }
template <class T>
inline T __ldcg(const T* p) { return *p; }
inline void __threadfence() {}  // one thread runs at a time: every write is visible
inline void __trap() { cuda_emu::fail("__trap(): the kernel reached a trap"); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) cuda_emu::fail("partial-warp __syncwarp is not emulated");
  cuda_emu::arrive(cuda_emu::warp_bar(), 0, cuda_emu::Op::None, "__syncwarp");
}
inline int __reduce_min_sync(unsigned mask, int v) {
  int m = v;
  for (int o = 16; o > 0; o >>= 1) m = std::min(m, __shfl_xor_sync(mask, m, o));
  return m;
}
template <class K>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, K, int threads, size_t smem) {
  // an H100-like SM: 2048 threads, 228 KB of shared memory, 32 blocks
  int b = threads > 0 ? 2048 / threads : 0;
  if (smem > 0) b = std::min<int>(b, int((228 * 1024) / (smem + 1024)));
  *n = std::max(0, std::min(b, 32));
  return cudaSuccess;
}
