// cuda/topk.cu run by the CPU emulator (cuda_emu.h) against its CPU twin:
// the sampled one-pass kernel, the cluster radix select, their launcher and
// the commit kernel, on machines without a GPU. The same cases as the device
// tests (test/native/test_cuda_scores.cu) in smaller numbers (every CUDA
// thread is a fiber here), with the emulated device set to an H100-like
// sm_90 part, a 4-SM sm_90 part (the radix kernel's loop over the filter's
// list with few clusters) and an sm_80 part (no clusters).
#include <cstring>
#include <limits>

#include "../../../native/cpu/kernels.h"
#include "../harness.h"
#include "topk_emu.inc"

using namespace kvsqtest;
using kvsq::Status;
using kvsq::TopkArgs;

namespace {

// Sawtooth: descending runs of 1024, so the filter's sample (the first 32
// values of each 1/16 of a block's segment) sees only the largest values and
// its threshold keeps fewer than k: the row must go to the radix kernel.
enum class Dist { Normal, FewValues, Zeros, WithInf, Sorted, Descending, Uniform24, Sawtooth };

void fill_row(float* s, int64_t n, Dist d) {
  const float vals[] = {-1.f, 0.f, 0.5f, 2.f};
  for (int64_t i = 0; i < n; ++i) {
    switch (d) {
      case Dist::Normal: s[i] = normal(); break;
      case Dist::FewValues: s[i] = vals[randint(0, 3)]; break;
      case Dist::Zeros: {
        const int c = randint(0, 9);
        s[i] = c < 4 ? 0.f : c < 8 ? -0.f : normal();
        break;
      }
      case Dist::WithInf: {
        const int c = randint(0, 19);
        s[i] = c == 0 ? INFINITY : c == 1 ? -INFINITY : normal();
        break;
      }
      case Dist::Sorted: s[i] = float(i) * 0.25f; break;
      case Dist::Descending: s[i] = float(n - i) * 0.5f; break;
      case Dist::Uniform24: s[i] = float(randint(0, (1 << 24) - 1)) / 16777216.f; break;
      case Dist::Sawtooth: s[i] = float(1024 - i % 1024); break;
    }
  }
}

// A device buffer of the emulator (fill pattern, guard bytes).
template <class T>
struct EBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit EBuf(size_t count) : n(count) {
    if (count) p = static_cast<T*>(cuda_emu::dev_alloc(count * sizeof(T)));
  }
  ~EBuf() { cuda_emu::dev_free(p); }
  EBuf(const EBuf&) = delete;
  EBuf& operator=(const EBuf&) = delete;
};

struct Case {
  int rows = 1;
  int64_t row_stride = 0;
  std::vector<float> scores;
  std::vector<int32_t> lengths;  // empty: null
  std::vector<int32_t> k;
  int32_t out_stride = 0;
};

// Runs the CPU twin and the emulated CUDA launcher; both statuses must agree,
// the outputs too (or stay untouched on an error).
Status run_both(const Case& c) {
  cuda_emu::st().error.clear();
  TopkArgs a;
  a.rows = c.rows;
  a.row_stride = c.row_stride;
  a.scores = c.scores.data();
  a.lengths = c.lengths.empty() ? nullptr : c.lengths.data();
  a.k = c.k.data();
  a.out_stride = c.out_stride;
  std::vector<int32_t> ref(size_t(c.rows) * c.out_stride, 12345), rc(c.rows, -7);
  a.out = ref.data();
  a.count = rc.data();
  const Status cs = kvsq::cpu_topk(a);

  EBuf<float> ds(c.scores.size());
  EBuf<int32_t> dl(c.lengths.size()), dk(c.k.size()), dout(ref.size()), dc(c.rows);
  if (ds.p) std::memcpy(ds.p, c.scores.data(), c.scores.size() * 4);
  if (dl.p) std::memcpy(dl.p, c.lengths.data(), c.lengths.size() * 4);
  std::memcpy(dk.p, c.k.data(), c.k.size() * 4);
  for (size_t i = 0; i < ref.size(); ++i) dout.p[i] = 12345;
  for (int r = 0; r < c.rows; ++r) dc.p[r] = -7;
  a.scores = ds.p;
  a.lengths = c.lengths.empty() ? nullptr : dl.p;
  a.k = dk.p;
  a.out = ref.empty() ? nullptr : dout.p;
  a.count = dc.p;
  const Status gs = kvsq::emu_cuda::cuda_topk(a, nullptr);
  CHECK_MSG(cuda_emu::st().error.empty(), "emulator: " << cuda_emu::st().error);
  CHECK_MSG(gs == cs, "emulated " << kvsq::status_name(gs) << " cpu " << kvsq::status_name(cs));
  if (gs == Status::Ok) {
    for (int r = 0; r < c.rows; ++r) {
      CHECK_MSG(dc.p[r] == rc[r], "row " << r << " count " << dc.p[r] << " cpu " << rc[r]);
      for (int j = 0; j < c.out_stride; ++j) {
        const size_t i = size_t(r) * c.out_stride + j;
        CHECK_MSG(dout.p[i] == ref[i], "row " << r << " len " << (c.lengths.empty() ? c.row_stride : c.lengths[r])
                                              << " k " << c.k[r] << " out[" << j << "] " << dout.p[i] << " cpu "
                                              << ref[i]);
      }
    }
  } else {
    for (size_t i = 0; i < ref.size(); ++i) CHECK_MSG(dout.p[i] == 12345, "out written on " << kvsq::status_name(gs));
    for (int r = 0; r < c.rows; ++r) CHECK_MSG(dc.p[r] == -7, "count written on " << kvsq::status_name(gs));
  }
  return gs;
}

// Rows aimed at each branch of the two kernels (see the device test
// cuda_topk_filter_and_radix_paths).
Case mixed_case(int rows, int64_t stride) {
  Case c;
  c.rows = rows;
  c.row_stride = stride;
  c.scores.resize(size_t(rows) * stride);
  for (int r = 0; r < rows; ++r) {
    int64_t len;
    switch (r % 5) {
      case 0: len = stride; break;
      case 1: len = std::min<int64_t>(stride, 6144); break;
      case 2: len = std::min<int64_t>(stride, 6145); break;
      default: len = randint(0, int(stride)); break;
    }
    c.lengths.push_back(int32_t(len));
    fill_row(c.scores.data() + size_t(r) * stride, stride, Dist(r % 8));
    const int ks[] = {0, 1, 17, 127, 1000, 2048, 4096, 6144, 6200};
    int k = ks[randint(0, 8)];
    if (r % 6 == 5) k = int(len) - randint(0, 1);
    c.k.push_back(std::max(k, 0));
    c.out_stride = std::max<int32_t>(c.out_stride, int32_t(std::min<int64_t>(c.k.back(), len)));
  }
  c.out_stride += randint(0, 2);
  return c;
}

struct Device {
  int major, sms;
};
const Device kDevices[] = {{9, 132}, {9, 4}, {8, 108}};

void set_device(const Device& d) {
  cuda_emu::st().dev.major = d.major;
  cuda_emu::st().dev.sms = d.sms;
}

struct Restore {
  ~Restore() {
    kvsq::emu_cuda::cuda_topk_set_filter(true);
    set_device(kDevices[0]);
  }
};

}  // namespace

// Every row shape and value pattern, filter on and off, on each emulated part.
KVSQ_TEST(emu_cuda_topk_vs_cpu) {
  Restore restore;
  const int64_t strides[] = {131072, 40001, 6145, 1000, 17};
  for (const Device& d : kDevices) {
    set_device(d);
    for (int64_t stride : strides) {
      if (d.major < 9 && stride > 16384) continue;  // one block per row there: the radix kernel alone
      const int rows = stride >= 131072 ? 5 : stride > 6144 ? 10 : 6;
      Case c = mixed_case(rows, stride);
      for (bool filter : {true, false}) {
        kvsq::emu_cuda::cuda_topk_set_filter(filter);
        CHECK_MSG(run_both(c) == Status::Ok,
                  "sm_" << d.major << "0, " << d.sms << " SMs, stride " << stride << " filter " << filter);
      }
    }
  }
  // sm_80: rows of 16K keys take the filter with one block each
  set_device(kDevices[2]);
  Case c = mixed_case(6, 16384);
  CHECK(run_both(c) == Status::Ok);
}

// The benchmark's shape in a few rows: uniform 24-bit scores, k 2048 (the
// sampled path) -- more rows than a 4-SM part has clusters for the fallback.
KVSQ_TEST(emu_cuda_topk_benchmark_shape_and_nan) {
  Restore restore;
  set_device(kDevices[1]);
  Case c;
  c.rows = 4;
  c.row_stride = 131072;
  c.scores.resize(size_t(c.rows) * c.row_stride);
  fill_row(c.scores.data(), int64_t(c.scores.size()), Dist::Uniform24);
  c.k.assign(c.rows, 2048);
  c.out_stride = 2048;
  CHECK(run_both(c) == Status::Ok);
  // all rows to the radix kernel (k = 6144 cannot be promised within the cap)
  c.k.assign(c.rows, 6144);
  c.out_stride = 6144;
  CHECK(run_both(c) == Status::Ok);
  // a sample that misleads: fewer than k candidates, the radix kernel redoes the row
  Case saw = c;
  fill_row(saw.scores.data() + saw.row_stride, saw.row_stride, Dist::Sawtooth);
  saw.k.assign(saw.rows, 2048);
  saw.out_stride = 2048;
  CHECK(run_both(saw) == Status::Ok);
  // a NaN found by the filter's pass; one found by the radix kernel
  c.k.assign(c.rows, 2048);
  c.out_stride = 2048;
  c.scores[size_t(2) * c.row_stride + 99999] = std::numeric_limits<float>::quiet_NaN();
  CHECK(run_both(c) == Status::NaN);
  c.k[2] = 6144;
  c.out_stride = 6144;
  CHECK(run_both(c) == Status::NaN);
}

// Bad arguments: the statuses of the CPU twin, nothing written.
KVSQ_TEST(emu_cuda_topk_errors) {
  Restore restore;
  Case c;
  c.rows = 3;
  c.row_stride = 7000;
  c.scores.resize(size_t(c.rows) * c.row_stride);
  fill_row(c.scores.data(), int64_t(c.scores.size()), Dist::Normal);
  c.lengths = {7000, 6500, 10};
  c.k = {100, 2048, 3};
  c.out_stride = 2048;
  CHECK(run_both(c) == Status::Ok);
  Case e = c;
  e.k[1] = -1;
  CHECK(run_both(e) == Status::Range);
  e = c;
  e.lengths[0] = 7001;
  CHECK(run_both(e) == Status::Range);
  e = c;
  e.out_stride = 2047;
  CHECK(run_both(e) == Status::Shape);
}
