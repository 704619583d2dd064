// CUDA decode attention, append, gather, page_meta and read_scores against
// their CPU twins (cpu_* on host copies of the same fresh random inputs).
//
// Tolerances: decode attention - the GPU and the CPU are each within the bound
// of native/cpu/decode_attention.cc of the exact result, so they must agree to
// twice that bound (u = 2^-24, n = slots attended, dz = (D+4) u scale
// max_s sum_d |q_d k_sd| over the list's slots):
//   o:     2 max|v| (2 dz + 8 sqrt(n) u + 8 u) + |o| ulp_out + f16 subnormal step
//   lse:   2 (dz + 8 sqrt(n) u + 8 u |lse|)
//   score: 2 added (2 dz + 8 sqrt(n) u + 8 u) + 4 u |score|; slots the CPU left
//          bit-identical must stay bit-identical.
// Memory ops: bit-exact.
//
// Without a device every test SKIPs (never passes). With KVSQ_CUDA_BENCH=1 the
// cuda_decode_bench test prints timings (L2 flushed between launches by a 128 MB
// memset, CUDA events, median of 50) against a device-to-device copy measured
// in the same run; otherwise it is skipped.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "../../cuda/launchers.h"
#include "core/device.h"
#include "core/dtype.h"
#include "cpu/kernels.h"
#include "cuda_need_device.h"
#include "harness.h"

using namespace kvsq;
using kvsqtest::randint;
using kvsqtest::uniform;

namespace {

constexpr double kU = 1.0 / 16777216.0;


#define CU_OK(expr)                                                                      \
  do {                                                                                   \
    cudaError_t e_ = (expr);                                                             \
    CHECK_MSG(e_ == cudaSuccess, #expr << ": " << cudaGetErrorName(e_) << " " << cudaGetErrorString(e_)); \
  } while (0)

// Device copy of a host vector (RAII).
struct Dev {
  void* p = nullptr;
  size_t n = 0;
  Dev() = default;
  explicit Dev(size_t bytes) : n(bytes) {
    if (bytes) CU_OK(cudaMalloc(&p, bytes));
  }
  template <class T>
  explicit Dev(const std::vector<T>& v) : Dev(v.size() * sizeof(T)) {
    if (n) CU_OK(cudaMemcpy(p, v.data(), n, cudaMemcpyHostToDevice));
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() {
    if (p) cudaFree(p);
  }
  template <class T>
  T* as() const { return static_cast<T*>(p); }
  template <class T>
  std::vector<T> get(size_t count) const {
    std::vector<T> v(count);
    if (count) {
      cudaError_t e = cudaMemcpy(v.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost);
      if (e != cudaSuccess) KVSQ_FAIL("download: " << cudaGetErrorString(e));
    }
    return v;
  }
};

void sync_ok() { CU_OK(cudaDeviceSynchronize()); }

// Host storage in a dtype with the decoded values.
struct Buf {
  DType t = DType::F32;
  std::vector<uint8_t> bytes;
  std::vector<float> val;
  void init(DType dt, size_t n) {
    t = dt;
    bytes.assign(n * dtype_size(dt), 0);
    val.assign(n, 0.f);
  }
  void set(size_t i, float x) {
    if (t == DType::F32) {
      std::memcpy(&bytes[i * 4], &x, 4);
      val[i] = x;
      return;
    }
    const uint16_t h = t == DType::F16 ? f32_to_f16(x) : f32_to_bf16(x);
    std::memcpy(&bytes[i * 2], &h, 2);
    val[i] = t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
};
float get_as(DType t, const std::vector<uint8_t>& b, size_t i) {
  if (t == DType::F32) { float f; std::memcpy(&f, &b[i * 4], 4); return f; }
  uint16_t h;
  std::memcpy(&h, &b[i * 2], 2);
  return t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

struct Config {
  int B = 1, Hq = 1, Hkv = 1, D = 64, P = 16;
  DType qdt = DType::F32, kvdt = DType::F32;
  std::vector<int> lens;
  bool subset = false, score = false, lse = true;
  int sel_offset = 0;  // subset: sel_indptr[0] (entries before it are never read)
  Reduce reduce = Reduce::Mean;
  float scale_mult = 1.f;
  float q_mult = 1.f;  // q ~ q_mult * N(0, 1)
  // The warp-page kernel (f16/bf16 K/V, D 128, P 16; other rows ignore the
  // switch): -1 in about half the runs, 0 off, 1 on.
  int warp_pages = -1;
};

// cuda_decode_set_warp_pages for a scope (back to what it was at its end).
struct WarpPages {
  bool before = cuda_decode_warp_pages();
  explicit WarpPages(bool on) { cuda_decode_set_warp_pages(on); }
  ~WarpPages() { cuda_decode_set_warp_pages(before); }
};

struct Problem {
  Config c;
  int g = 1;
  int64_t num_pages = 0;
  Buf q, k, v;
  std::vector<int32_t> indptr, ids, kv_len, sel_indptr, sel_pages;
  std::vector<float> score0;
  float scale = 0.f;

  explicit Problem(const Config& cfg) : c(cfg) {
    g = c.Hq / c.Hkv;
    const int nl = c.B * c.Hkv;
    std::vector<int> np(nl);
    int64_t total = 0;
    for (int l = 0; l < nl; ++l) total += np[l] = (c.lens[l] + c.P - 1) / c.P + (randint(0, 3) == 0);
    num_pages = total + randint(0, 3);
    std::vector<int> perm(num_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), kvsqtest::rng());
    indptr.assign(1, 0);
    int at = 0;
    for (int l = 0; l < nl; ++l) {
      for (int i = 0; i < np[l]; ++i) ids.push_back(perm[at++]);
      indptr.push_back(int32_t(ids.size()));
      kv_len.push_back(c.lens[l]);
    }
    const size_t pool = size_t(std::max<int64_t>(num_pages, 1)) * c.P * c.D;
    k.init(c.kvdt, pool);
    v.init(c.kvdt, pool);
    for (size_t i = 0; i < pool; ++i) {
      k.set(i, kvsqtest::normal());
      v.set(i, uniform(-2.f, 2.f));
    }
    q.init(c.qdt, size_t(c.B) * c.Hq * c.D);
    for (size_t i = 0; i < q.val.size(); ++i) q.set(i, c.q_mult * kvsqtest::normal());
    scale = c.scale_mult / std::sqrt(float(c.D));
    if (c.subset) {
      sel_pages.assign(size_t(c.sel_offset), -7);
      sel_indptr.assign(1, c.sel_offset);
      for (int b = 0; b < c.B; ++b)
        for (int h = 0; h < c.Hq; ++h) {
          const int len = c.lens[b * c.Hkv + h / g], npg = (len + c.P - 1) / c.P;
          const int mode = randint(0, 5);  // 0: none, 1: all, else random + last page
          for (int p = 0; p < npg; ++p)
            if (mode == 1 || (mode > 1 && (p == npg - 1 || randint(0, 2) == 0))) sel_pages.push_back(p);
          sel_indptr.push_back(int32_t(sel_pages.size()));
        }
    }
    score0.resize(size_t(std::max<int64_t>(num_pages, 1)) * c.P);
    for (auto& s : score0) s = uniform(0.f, 4.f);
  }

  DecodeAttnArgs base() const {
    DecodeAttnArgs a;
    a.batch = c.B, a.num_q_heads = c.Hq, a.num_kv_heads = c.Hkv, a.head_dim = c.D, a.page_size = c.P;
    a.q_dtype = c.qdt, a.kv_dtype = c.kvdt, a.scale = scale, a.num_pages = num_pages, a.reduce = c.reduce;
    return a;
  }

  // max_s sum_d |q_d k_sd| over the valid slots of the list of (b, h).
  double absdot(int b, int h) const {
    const int l = b * c.Hkv + h / g;
    const float* qv = &q.val[(size_t(b) * c.Hq + h) * c.D];
    double m = 0.0;
    for (int s = 0; s < c.lens[l]; ++s) {
      const int64_t base = (int64_t(ids[indptr[l] + s / c.P]) * c.P + s % c.P) * c.D;
      double ad = 0.0;
      for (int d = 0; d < c.D; ++d) ad += std::fabs(double(qv[d]) * k.val[base + d]);
      m = std::max(m, ad);
    }
    return m;
  }

  void run_and_compare() const {
    const size_t no = size_t(c.B) * c.Hq * c.D, nq = size_t(c.B) * c.Hq;
    // CPU
    std::vector<uint8_t> o_cpu(no * dtype_size(c.qdt));
    std::vector<float> lse_cpu(nq, 7.f), score_cpu = score0;
    DecodeAttnArgs a = base();
    a.q = q.bytes.data(), a.o = o_cpu.data(), a.k_pool = k.bytes.data(), a.v_pool = v.bytes.data();
    a.page_indptr = indptr.data(), a.page_ids = ids.data(), a.kv_len = kv_len.data();
    if (c.subset) a.sel_indptr = sel_indptr.data(), a.sel_pages = sel_pages.data();
    a.score_pool = c.score ? score_cpu.data() : nullptr;
    a.lse = c.lse ? lse_cpu.data() : nullptr;
    Status st = cpu_decode_attention(a);
    CHECK_MSG(st == Status::Ok, "cpu status " << status_name(st));
    // GPU
    // An empty ids array goes up as one element, as the binding stages it
    // (a padded block, never null). The CPU twin takes null ids when no list
    // owns a page; the launcher, which cannot read the device indptr, refuses
    // null ids whenever the pool has pages (this made ~7% of the ragged-empty
    // runs fail: every list empty, a page left over in the pool).
    const std::vector<int32_t> ids_up = ids.empty() ? std::vector<int32_t>{0} : ids;
    Dev dq(q.bytes), dk(k.bytes), dv(v.bytes), dind(indptr), dids(ids_up), dlen(kv_len), dsi(sel_indptr),
        dsp(sel_pages), dsc(score0), dlse(std::vector<float>(nq, 7.f));
    Dev dout(no * dtype_size(c.qdt));
    DecodeAttnArgs d = base();
    d.q = dq.p, d.o = dout.p, d.k_pool = dk.p, d.v_pool = dv.p;
    d.page_indptr = dind.as<int32_t>(), d.page_ids = dids.as<int32_t>(), d.kv_len = dlen.as<int32_t>();
    if (c.subset) d.sel_indptr = dsi.as<int32_t>(), d.sel_pages = dsp.as<int32_t>(), d.sel_count = int64_t(sel_pages.size());
    d.score_pool = c.score ? dsc.as<float>() : nullptr;
    d.lse = c.lse ? dlse.as<float>() : nullptr;
    int64_t total = 0;
    for (int l = 0; l < c.B * c.Hkv; ++l) total += c.lens[l];
    Dev dbefore(size_t(total + 1) * sizeof(float)), dafter(size_t(total + 1) * sizeof(float));
    // The records and the candidate in about half the runs each: without the
    // records the score pass follows the attention kernel directly, as a
    // dependent launch (what it may read before its wait differs).
    const bool records = c.score && randint(0, 1) == 1, evict = c.score && randint(0, 1) == 1;
    if (records) d.score_before = dbefore.as<float>(), d.score_after = dafter.as<float>();
    // eviction candidates: positions = 2 * slot + list parity, a max per list
    const int nl = c.B * c.Hkv;
    std::vector<int32_t> epos(size_t(std::max<int64_t>(total, 1))), emax(nl);
    {
      int64_t f = 0;
      for (int l = 0; l < nl; ++l) {
        for (int s = 0; s < c.lens[l]; ++s) epos[f++] = (c.lens[l] - s) * 2 + (l & 1);
        emax[l] = l % 3 == 0 ? std::numeric_limits<int32_t>::min() : randint(0, 2 * c.lens[l] + 2);
      }
    }
    Dev depos(epos), demax(emax), dslot(size_t(nl) * sizeof(int32_t));
    if (evict) d.evict_pos = depos.as<int32_t>(), d.evict_max_pos = demax.as<int32_t>(), d.evict_slot = dslot.as<int32_t>();
    const std::string why = cuda_decode_row_check(0, c.kvdt, c.D);
    const WarpPages wp(c.warp_pages < 0 ? randint(0, 1) == 1 : c.warp_pages == 1);  // (before the plan: it sizes it)
    // Dense calls take a plan made on the host in about half the runs, as
    // the bindings' calls do (made from the host's kv_len; none when a list
    // is empty: the plan kernel writes such lists' outputs).
    std::unique_ptr<Dev> dplan;
    if (!c.subset && randint(0, 1) == 1) {
      DecodeAttnArgs hp = d;
      hp.kv_len = kv_len.data();
      DecodePlan plan;
      const Status ps = cuda_decode_plan(hp, &plan);
      CHECK_MSG(ps == (why.empty() ? Status::Ok : Status::Shape), "plan status " << status_name(ps));
      const bool some_empty = std::any_of(kv_len.begin(), kv_len.end(), [](int32_t n) { return n <= 0; });
      CHECK_MSG(ps != Status::Ok || plan.image.empty() == some_empty, "plan image " << plan.image.size() << " bytes");
      if (!plan.image.empty()) {
        dplan = std::make_unique<Dev>(plan.image);
        d.plan = dplan->p, d.plan_items = plan.items, d.plan_lists = plan.lists;
      }
    }
    st = cuda_decode_attention(d, nullptr);
    if (!why.empty()) {  // rows this device cannot take (f32 D > 128 below 68 KB per block): refused, nothing written
      CHECK_MSG(st == Status::Shape, "cuda status " << status_name(st) << " for rows the device refuses: " << why);
      sync_ok();
      CHECK(dsc.get<float>(score0.size()) == score0);
      return;
    }
    CHECK_MSG(st == Status::Ok, "cuda status " << status_name(st) << " " << last_cuda_error());
    sync_ok();
    const std::vector<uint8_t> o_gpu = dout.get<uint8_t>(o_cpu.size());
    const std::vector<float> lse_gpu = dlse.get<float>(nq), score_gpu = dsc.get<float>(score0.size());

    const double ulp_out = c.qdt == DType::F16 ? std::ldexp(1.0, -10) : c.qdt == DType::BF16 ? std::ldexp(1.0, -7)
                                                                                                 : std::ldexp(1.0, -23);
    const double sub_out = c.qdt == DType::F16 ? std::ldexp(1.0, -23) : 0.0;
    double vmax = 0.0;
    for (float x : v.val) vmax = std::max(vmax, double(std::fabs(x)));
    std::vector<double> grel(size_t(c.B) * c.Hkv, 0.0);
    for (int b = 0; b < c.B; ++b)
      for (int h = 0; h < c.Hq; ++h) {
        const int l = b * c.Hkv + h / g;
        const size_t row = size_t(b) * c.Hq + h;
        const double dz = (c.D + 4) * kU * double(scale) * absdot(b, h);
        const double n = std::max(1, c.lens[l]);
        const double sumtol = 8 * std::sqrt(n) * kU + 8 * kU;
        grel[l] = std::max(grel[l], 2 * dz + sumtol);
        for (int dd = 0; dd < c.D; ++dd) {
          const double x = get_as(c.qdt, o_gpu, row * c.D + dd), y = get_as(c.qdt, o_cpu, row * c.D + dd);
          const double tol = 2 * vmax * (2 * dz + sumtol) + std::fabs(y) * ulp_out + sub_out;
          CHECK_MSG(std::fabs(x - y) <= tol, "o b=" << b << " h=" << h << " d=" << dd << " gpu " << x << " cpu " << y
                                                    << " tol " << tol << " len " << c.lens[l] << " (B " << c.B
                                                    << " Hkv " << c.Hkv << " Hq " << c.Hq << " D " << c.D << " P " << c.P
                                                    << " q " << dtype_name(c.qdt) << " kv " << dtype_name(c.kvdt)
                                                    << " subset " << c.subset << ")");
        }
        if (c.lse) {
          const double x = lse_gpu[row], y = lse_cpu[row];
          if (std::isinf(y)) {
            CHECK_MSG(std::isinf(x) && x < 0, "lse of empty row: gpu " << x);
          } else {
            const double tol = 2 * (dz + sumtol + 8 * kU * std::fabs(y));
            CHECK_MSG(std::fabs(x - y) <= tol, "lse b=" << b << " h=" << h << " gpu " << x << " cpu " << y);
          }
        }
      }
    if (c.score) {
      // slot -> list, for the relative tolerance
      std::vector<int> owner(score0.size(), -1);
      for (int l = 0; l < c.B * c.Hkv; ++l)
        for (int s = 0; s < c.lens[l]; ++s) owner[size_t(ids[indptr[l] + s / c.P]) * c.P + s % c.P] = l;
      for (size_t i = 0; i < score0.size(); ++i) {
        const float x = score_gpu[i], y = score_cpu[i];
        if (f32_bits(y) == f32_bits(score0[i]) || owner[i] < 0) {
          CHECK_MSG(f32_bits(x) == f32_bits(y), "untouched score slot " << i << " gpu " << x << " cpu " << y);
          continue;
        }
        const double added = double(y) - score0[i];
        // + g units: groups split into sub-groups (above 8 heads on CUDA cores, 16 on
        // tensor cores) sum sub-group sums (the CPU one running sum)
        const double gsum = g > 8 ? 2 * g * kU : 0.0;
        const double tol = 2 * std::fabs(added) * (grel[owner[i]] + gsum) + 4 * kU * std::fabs(y) + 1e-30;
        CHECK_MSG(std::fabs(double(x) - y) <= tol, "score slot " << i << " gpu " << x << " cpu " << y << " added " << added);
      }
      // The before/after records: exactly the pool around the step, list by list.
      const std::vector<float> before = dbefore.get<float>(size_t(total)), after = dafter.get<float>(size_t(total));
      int64_t f = 0;
      for (int l = 0; l < c.B * c.Hkv && records; ++l)
        for (int s = 0; s < c.lens[l]; ++s, ++f) {
          const size_t ps = size_t(ids[indptr[l] + s / c.P]) * c.P + s % c.P;
          CHECK_MSG(f32_bits(before[f]) == f32_bits(score0[ps]), "score_before[" << f << "] is not the pool before the step");
          CHECK_MSG(f32_bits(after[f]) == f32_bits(score_gpu[ps]), "score_after[" << f << "] is not the pool after the step");
        }
      // The candidate from the device's own pool values: exactly the host scan's.
      const std::vector<int32_t> slot = dslot.get<int32_t>(size_t(nl));
      f = 0;
      for (int l = 0; l < nl && evict; ++l) {
        int want = -1;
        auto sc = [&](int s) { return score_gpu[size_t(ids[indptr[l] + s / c.P]) * c.P + s % c.P]; };
        for (int s = 0; s < c.lens[l]; ++s) {
          if (epos[f + s] > emax[l]) continue;
          if (want < 0 || sc(s) < sc(want) || (sc(s) == sc(want) && epos[f + s] < epos[f + want])) want = s;
        }
        CHECK_MSG(slot[l] == want, "evict_slot[" << l << "] = " << slot[l] << ", want " << want);
        f += c.lens[l];
      }
    }
  }
};

int pick(std::initializer_list<int> v) { return *(v.begin() + randint(0, int(v.size()) - 1)); }
int random_len() {
  switch (randint(0, 5)) {
    case 0: return 1;
    case 1: return 17;
    case 2: return 1000;
    case 3: return 4097;
    default: return randint(2, 1500);
  }
}
const DType kDts[3] = {DType::F32, DType::F16, DType::BF16};

// Case it of a sweep over kernels: kv rows of head dim D, g query heads per
// KV head, hkv KV heads, b sequences; it rotates Quest subsets (starting
// past entry 0 at times), H2O scores with each reduce, and the query dtype
// so that each meets the others; random lengths, about one list in six empty.
Config rotating_case(int it, DType kv, int D, int g, int hkv, int b) {
  Config c;
  c.subset = (it / 3) % 2 == 1;
  c.score = it % 4 != 3;
  c.reduce = it % 3 == 0 ? Reduce::Mean : it % 3 == 1 ? Reduce::Sum : Reduce::Max;
  c.Hkv = hkv, c.Hq = hkv * g, c.B = b, c.D = D, c.P = pick({16, 7});
  c.qdt = kDts[(it / 2) % 3];
  c.kvdt = kv;
  c.sel_offset = c.subset ? randint(0, 3) : 0;
  for (int l = 0; l < c.B * c.Hkv; ++l) c.lens.push_back(randint(0, 5) == 0 ? 0 : random_len());
  return c;
}

}  // namespace

// One kernel serves rows of several sizes (the 32-lane kernel 17 to 32
// vectors, the wide one 33 to 64), with as many dynamic shared memory sizes:
// a larger row after a smaller one after a larger one, each against the CPU
// (the kernel's limit is only ever raised; lowered for the smaller rows, it
// failed the last launch). First in the file, before other tests have used
// these kernels.
KVSQ_TEST(cuda_decode_row_sizes_interleaved) {
  need_device();
  int it = 0;
  for (auto [kv, D] : {std::pair{DType::F16, 248}, std::pair{DType::F16, 136}, std::pair{DType::F16, 248},
                       std::pair{DType::F32, 256}, std::pair{DType::F32, 132}, std::pair{DType::F32, 256}})
    Problem(rotating_case(it++, kv, D, 4, 1, 1)).run_and_compare();
}

KVSQ_TEST(cuda_decode_dense_shapes) {
  need_device();
  int it = 0;
  for (int D : {64, 128, 40, 256}) {
    for (int g : {1, 2, 3, 4, 5, 6, 7, 8}) {
      Config c;
      c.Hkv = pick({1, 2});
      c.Hq = c.Hkv * g;
      c.B = pick({1, 2, 3});
      c.D = D;
      c.P = pick({16, 7});
      c.qdt = kDts[it % 3];
      c.kvdt = kDts[(it / 3 + it) % 3];  // f32 D 256: the wide-row kernel
      c.scale_mult = float(pick({1, 1, 4}));
      for (int l = 0; l < c.B * c.Hkv; ++l) c.lens.push_back(random_len());
      ++it;
      Problem(c).run_and_compare();
    }
  }
}

KVSQ_TEST(cuda_decode_lengths_pages) {
  need_device();
  for (int P : {16, 7, 1})
    for (int len : {1, 17, 1000, 4097}) {
      Config c;
      c.Hkv = 1;
      c.Hq = pick({1, 4});
      c.D = pick({64, 128, 40});
      c.P = P;
      c.kvdt = kDts[randint(0, 2)];
      c.qdt = kDts[randint(0, 2)];
      c.lens = {len};
      Problem(c).run_and_compare();
    }
  // the benchmark shape, shortened: one sequence, 8 KV heads, many items per list
  Config c;
  c.B = 1, c.Hkv = 8, c.Hq = 32, c.D = 128, c.P = 16;
  c.qdt = DType::BF16, c.kvdt = DType::BF16;
  c.lens.assign(8, 0);
  for (auto& l : c.lens) l = 8192 - randint(0, 20);
  Problem(c).run_and_compare();
}

KVSQ_TEST(cuda_decode_ragged_empty) {
  need_device();
  Config c;
  c.B = 4, c.Hkv = 2, c.Hq = 8, c.D = 64, c.P = 7;
  c.qdt = DType::BF16, c.kvdt = DType::F32;
  c.lens = {0, 17, 1000, 1, 0, 0, 4097, 300};
  Problem(c).run_and_compare();
  Config e = c;
  e.lens.assign(8, 0);
  e.qdt = DType::F16;
  e.score = true;
  Problem(e).run_and_compare();
  Config n = c;  // no lse output
  n.lse = false;
  Problem(n).run_and_compare();
}

// The warp-page kernel (f16/bf16 K/V, D 128, pages of 16; switched on here)
// against the CPU: groups of 1 to 16 heads (the mma's M is 16) and 24 / 40
// (sub-groups), every query dtype, dense and Quest, H2O scores with each
// reduce, lengths around the page size and ragged lists (an item's pages
// spread over the four warps: some warps get none), the target shape
// shortened, a 99 KB sm_86, and f16 queries over a wide range (the per-head
// scaling before the split).
KVSQ_TEST(cuda_decode_warp_pages) {
  need_device();
  int it = 0;
  for (DType kv : {DType::BF16, DType::F16})
    for (int g : {1, 4, 8, 12, 16, 24, 40, 5}) {
      Config c = rotating_case(it++, kv, 128, g, pick({1, 2}), pick({1, 3}));
      c.P = 16, c.warp_pages = 1;
      if (it % 3 == 0)
        for (auto& l : c.lens) l = pick({1, 15, 16, 17, 63, 64, 65, 1000});
      Problem(c).run_and_compare();
    }
  Config t;  // the benchmark shape, shortened: one sequence, 8 KV heads
  t.B = 1, t.Hkv = 8, t.Hq = 32, t.D = 128, t.P = 16, t.warp_pages = 1;
  t.qdt = DType::BF16, t.kvdt = DType::BF16, t.score = true;
  for (int l = 0; l < 8; ++l) t.lens.push_back(4096 - randint(0, 20));
  Problem(t).run_and_compare();
  {
#ifdef KVSQ_CUDA_EMU
    cuda_emu::PartScope scope(cuda_emu::part("sm_86"));
#endif
    for (DType kv : {DType::BF16, DType::F16}) {
      Config c = rotating_case(it++, kv, 128, 8, 1, 2);
      c.P = 16, c.warp_pages = 1;
      Problem(c).run_and_compare();
    }
  }
  for (float qm : {1e5f, 1e-6f, 1e36f, 1e-30f}) {
    Config c = rotating_case(it++, DType::F16, 128, pick({8, 16, 5}), 1, pick({1, 2}));
    c.P = 16, c.warp_pages = 1, c.score = true;
    c.qdt = it % 2 ? DType::F32 : DType::BF16;
    c.q_mult = qm;
    c.scale_mult = 1.f / qm;
    Problem(c).run_and_compare();
  }
}

// The plan made on the host (cuda_decode_plan, what the bindings use for
// dense calls) against the plan kernel's: the same items, so bit-identical
// outputs, lse and scores, with sub-groups (ns > 1) too; one uploaded image
// serving two calls (each leaves its counters at zero); and the refusals: a
// plan made for other lists or with a Quest subset is a Shape error before
// anything is written; Quest calls and empty lists get no image.
KVSQ_TEST(cuda_decode_host_plan) {
  need_device();
  for (int rep = 0; rep < 10; ++rep) {
    Config c;
    c.B = randint(1, 3), c.Hkv = pick({1, 2}), c.P = pick({16, 7, 1});
    c.kvdt = kDts[randint(0, 2)], c.qdt = kDts[randint(0, 2)];
    c.D = c.kvdt == DType::F32 ? pick({64, 132}) : pick({64, 80, 128});
    c.Hq = c.Hkv * pick({1, 5, 24, 40});  // 24 / 40: sub-groups (f32 8 heads, wide f32 4, 16-bit 16)
    c.score = randint(0, 1) == 1;
    for (int l = 0; l < c.B * c.Hkv; ++l) c.lens.push_back(pick({1, 17, 1000, randint(1, 3000)}));
    const Problem pr(c);
    if (!cuda_decode_row_check(0, c.kvdt, c.D).empty()) continue;  // (covered by run_and_compare)
    const size_t no = size_t(c.B) * c.Hq * c.D * dtype_size(c.qdt), nq = size_t(c.B) * c.Hq;
    Dev dq(pr.q.bytes), dk(pr.k.bytes), dv(pr.v.bytes), dind(pr.indptr), dids(pr.ids), dlen(pr.kv_len);
    struct Out {
      std::vector<uint8_t> o;
      std::vector<float> lse, score;
    };
    // One call with an optional plan on fresh outputs (o 0x5a bytes, lse 7, score0).
    auto call = [&](const Dev* plan, int32_t items, int32_t lists, Status want, int times) {
      Dev dout(no), dlse(std::vector<float>(nq, 7.f)), dsc(pr.score0);
      CU_OK(cudaMemset(dout.p, 0x5a, no));
      DecodeAttnArgs d = pr.base();
      d.q = dq.p, d.o = dout.p, d.k_pool = dk.p, d.v_pool = dv.p;
      d.page_indptr = dind.as<int32_t>(), d.page_ids = dids.as<int32_t>(), d.kv_len = dlen.as<int32_t>();
      d.lse = dlse.as<float>(), d.score_pool = c.score ? dsc.as<float>() : nullptr;
      if (plan) d.plan = plan->p, d.plan_items = items, d.plan_lists = lists;
      for (int t = 0; t < times; ++t) {
        const Status st = cuda_decode_attention(d, nullptr);
        CHECK_MSG(st == want, "status " << status_name(st) << " want " << status_name(want));
      }
      sync_ok();
      return Out{dout.get<uint8_t>(no), dlse.get<float>(nq), dsc.get<float>(pr.score0.size())};
    };
    DecodeAttnArgs h = pr.base();
    h.q = dq.p, h.o = dq.p, h.k_pool = dk.p, h.v_pool = dv.p;
    h.page_indptr = dind.as<int32_t>(), h.page_ids = dids.as<int32_t>(), h.kv_len = pr.kv_len.data();
    DecodePlan plan;
    CHECK(cuda_decode_plan(h, &plan) == Status::Ok);
    CHECK(!plan.image.empty() && plan.items > 0 && plan.lists >= c.B * c.Hkv);
    Dev dplan(plan.image);
    const Out ref = call(nullptr, 0, 0, Status::Ok, 1);
    // Twice on one image (H2O: scores added twice, so compare only o and lse there).
    const Out got = call(&dplan, plan.items, plan.lists, Status::Ok, c.score ? 1 : 2);
    CHECK_MSG(got.o == ref.o, "o differs with the host plan (D " << c.D << " g " << c.Hq / c.Hkv << ")");
    for (size_t i = 0; i < nq; ++i) CHECK_MSG(f32_bits(got.lse[i]) == f32_bits(ref.lse[i]), "lse " << i);
    for (size_t i = 0; i < ref.score.size(); ++i) CHECK_MSG(f32_bits(got.score[i]) == f32_bits(ref.score[i]), "score " << i);
    if (c.score) {  // the second call on the same image, scores included
      const Out again = call(&dplan, plan.items, plan.lists, Status::Ok, 1);
      CHECK(again.o == ref.o);
    }
    // Made for other lists: refused, nothing written.
    const Out bad1 = call(&dplan, plan.items + 1, plan.lists, Status::Shape, 1);
    const Out bad2 = call(&dplan, plan.items, plan.lists - 1, Status::Shape, 1);
    for (const Out* b : {&bad1, &bad2}) {
      CHECK(std::all_of(b->o.begin(), b->o.end(), [](uint8_t x) { return x == 0x5a; }));
      CHECK(std::all_of(b->lse.begin(), b->lse.end(), [](float x) { return x == 7.f; }));
      CHECK(b->score == pr.score0);
    }
    // A Quest subset: no image made, and a plan given with one is refused.
    std::vector<int32_t> si(nq + 1, 0), sp;
    Dev dsi(si), dsp(std::vector<int32_t>{0});
    DecodeAttnArgs qh = h;
    qh.sel_indptr = dsi.as<int32_t>(), qh.sel_pages = dsp.as<int32_t>(), qh.sel_count = 0;
    DecodePlan none;
    CHECK(cuda_decode_plan(qh, &none) == Status::Ok && none.image.empty());
    DecodeAttnArgs qd = pr.base();
    qd.q = dq.p, qd.o = dq.p, qd.k_pool = dk.p, qd.v_pool = dv.p;
    qd.page_indptr = dind.as<int32_t>(), qd.page_ids = dids.as<int32_t>(), qd.kv_len = dlen.as<int32_t>();
    qd.sel_indptr = qh.sel_indptr, qd.sel_pages = qh.sel_pages;
    qd.plan = dplan.p, qd.plan_items = plan.items, qd.plan_lists = plan.lists;
    CHECK(cuda_decode_attention(qd, nullptr) == Status::Shape);
    // An empty list: no image (the plan kernel writes its outputs).
    std::vector<int32_t> lens0 = pr.kv_len;
    lens0[size_t(randint(0, int(lens0.size()) - 1))] = 0;
    DecodeAttnArgs eh = h;
    eh.kv_len = lens0.data();
    CHECK(cuda_decode_plan(eh, &none) == Status::Ok && none.image.empty());
  }
}

// More lists than the attention blocks plan for themselves (128): the
// 1-block plan kernel's path, with empty lists, Quest subsets and scores.
KVSQ_TEST(cuda_decode_many_lists) {
  need_device();
  for (bool subset : {false, true}) {
    Config c;
    c.B = pick({67, 80}), c.Hkv = 2, c.Hq = 8, c.D = pick({64, 128}), c.P = pick({16, 7});
    c.qdt = kDts[randint(0, 2)], c.kvdt = kDts[randint(0, 2)];
    c.subset = subset, c.score = true;
    for (int l = 0; l < c.B * c.Hkv; ++l) c.lens.push_back(randint(0, 4) == 0 ? 0 : randint(1, 300));
    // The subset run without dependent launches (the path below sm_90, and
    // the benchmarks' comparison): same results.
    struct Pdl {
      explicit Pdl(bool on) { cuda_set_dependent_launch(on); }
      ~Pdl() { cuda_set_dependent_launch(true); }
    } pdl(!subset);
    Problem(c).run_and_compare();
  }
}

KVSQ_TEST(cuda_decode_subset_scores) {
  need_device();
  int it = 0;
  for (bool subset : {false, true})
    for (Reduce r : {Reduce::Mean, Reduce::Sum, Reduce::Max})
      for (int g : {1, 4, 8, 3}) {
        Config c;
        c.subset = subset;
        c.score = true;
        c.reduce = r;
        c.Hkv = pick({1, 2});
        c.Hq = c.Hkv * g;
        c.B = pick({1, 2});
        c.D = pick({40, 64, 128});
        c.P = pick({16, 1, 7});
        c.qdt = kDts[it % 3];
        c.kvdt = kDts[(it + 1 + it / 3) % 3];
        for (int l = 0; l < c.B * c.Hkv; ++l) c.lens.push_back(random_len());
        ++it;
        Problem(c).run_and_compare();
      }
  Config c;  // subset without scores, long lists
  c.subset = true;
  c.B = 2, c.Hkv = 2, c.Hq = 8, c.D = 128, c.P = 16, c.kvdt = DType::BF16;
  c.lens = {4097, 1000, 17, 1};
  Problem(c).run_and_compare();
  // Lists of more pages than the union kernel's 8192-page chunk (P 1: 17000
  // and 8193 pages), selections that start past entry 0, scores on.
  Config u;
  u.subset = true, u.score = true, u.sel_offset = 5;
  u.B = 1, u.Hkv = 2, u.Hq = 8, u.D = 64, u.P = 1, u.kvdt = DType::BF16, u.qdt = DType::BF16;
  u.lens = {17000, 8193};
  Problem(u).run_and_compare();
}

// More than 8 query heads per KV head (MQA, wide GQA): on CUDA cores
// sub-groups of at most 8 heads, equal (16, 24) and not (9, 12, 17, 71 =
// 8 x 8 + 7); f16 and bf16 D 64 / 128 on tensor cores one group up to 16, sub-groups
// of up to 16 beyond (cuda_decode_mma_large_groups has more of those).
// Dense and Quest subsets, every reduce of the H2O scores (the combine of
// the sub-groups' reduces), empty lists included.
KVSQ_TEST(cuda_decode_large_groups) {
  need_device();
  int it = 0;
  for (int g : {9, 16, 12, 17, 24, 71}) {
    for (bool subset : {false, true}) {
      Config c;
      c.subset = subset;
      c.score = it % 4 != 3;
      c.reduce = it % 3 == 0 ? Reduce::Mean : it % 3 == 1 ? Reduce::Sum : Reduce::Max;
      c.Hkv = g == 71 ? 1 : pick({1, 2});
      c.Hq = c.Hkv * g;
      c.B = g == 71 ? 1 : pick({1, 2});
      c.D = g == 71 ? 64 : pick({40, 64, 128});
      c.P = pick({16, 7});
      c.qdt = kDts[it % 3];
      c.kvdt = kDts[(it + 1 + it / 3) % 3];
      c.sel_offset = subset ? randint(0, 3) : 0;
      for (int l = 0; l < c.B * c.Hkv; ++l) c.lens.push_back(randint(0, 5) == 0 ? 0 : random_len());
      ++it;
      Problem(c).run_and_compare();
    }
  }
  // One KV head, 32 query heads (two sub-groups of 16), bf16 on tensor cores.
  Config c;
  c.B = 2, c.Hkv = 1, c.Hq = 32, c.D = 128, c.P = 16, c.score = true;
  c.qdt = DType::BF16, c.kvdt = DType::BF16;
  c.lens = {3000, 1};
  Problem(c).run_and_compare();
}

// f16 and bf16 K/V of D 64, 128 and 256 (tensor cores) with 9 to 16 query
// heads per KV head: one group of up to 16 heads (two mma n tiles), K/V read
// once; more than 16 in sub-groups of up to 16 (17 = 9 + 8, 32 = 16 + 16,
// 71 = 4 x 15 + 11). Dense and Quest subsets, each reduce of the H2O scores,
// f32, f16 and bf16 queries (the hi + lo split), empty lists.
KVSQ_TEST(cuda_decode_mma_large_groups) {
  need_device();
  int it = 0;
  for (DType kv : {DType::BF16, DType::F16})
    for (int D : {64, 128, 256}) {
      for (int g : {9, 16, 13, 17, 32, 71}) {
        if (D == 256 && g > 16) continue;  // the sub-grouping is the same at every D
        if (kv == DType::F16 && g > 16 && D != 64) continue;  // and the same for both types
        Problem(rotating_case(it++, kv, D, g, g > 16 ? 1 : pick({1, 2}), g > 16 ? 1 : pick({1, 2})))
            .run_and_compare();
      }
    }
}

// f16 and bf16 K/V of head dims other than 64 / 128 / 256 on the
// tensor-core kernels of the next power-of-two row (the k steps and m tiles
// past D skipped, tile rows padded to 128 bytes): whole k steps (D % 16 ==
// 0: 16, 48, 80, 96, 112, 144, 160, 192, 240) and half a last one (D % 16
// == 8, its other half a zero chunk: 8, 24, 40, 72, 136, 200, 248), groups
// of 1 to 16 heads (one or two n tiles; 1 and 5 leave padding heads), dense
// and Quest, H2O scores, every query dtype; then such rows on a 99 KB part
// (emulated sm_86; the card's own part on a GPU), where tile rows of 384
// bytes (D 136..192) keep three stages and 512 (D 200..248) take two; and
// rows of one kernel interleaved, so its dynamic shared memory limit is
// raised and reused across sizes.
KVSQ_TEST(cuda_decode_mma_head_dims) {
  need_device();
  int it = 0;
  const int gs[5] = {1, 5, 8, 12, 16};
  for (DType kv : {DType::BF16, DType::F16})
    for (int D : {16, 48, 80, 96, 112, 144, 160, 192, 240, 8, 24, 40, 72, 136, 200, 248}) {
      const int g = gs[it % 5];
      Problem(rotating_case(it++, kv, D, g, pick({1, 2}), pick({1, 2}))).run_and_compare();
    }
  {
#ifdef KVSQ_CUDA_EMU
    cuda_emu::PartScope scope(cuda_emu::part("sm_86"));
#endif
    for (DType kv : {DType::BF16, DType::F16})
      for (int D : {136, 192, 200, 248}) {
        const int g = gs[it % 5];
        Problem(rotating_case(it++, kv, D, g, 1, pick({1, 2}))).run_and_compare();
      }
  }
  for (int D : {176, 256, 136, 232}) Problem(rotating_case(it++, DType::F16, D, 8, 1, 1)).run_and_compare();
}

// f16 K/V on tensor cores with queries f16 cannot hold as they are: f32 and
// bf16 q of magnitude ~1e5 (above f16's 65504) and ~1e-6 (below its normal
// range, 6.1e-5), and the ends of f32's range (1e36, 1e-30), with the scale
// taking the logits back to O(1), and a
// group whose heads differ by 1e10 in magnitude (each head is scaled by its
// own power of two before the hi + lo split). Unscaled, the first gave inf
// (NaN outputs) and the second lost most of q's bits. D 64, 128, 256, 8 and
// 16 heads, dense and Quest, with H2O scores.
KVSQ_TEST(cuda_decode_f16_mma_query_range) {
  need_device();
  int it = 0;
  for (float qm : {1e5f, 1e-6f, 3e4f, 2e-5f, 1e36f, 1e-30f}) {
    for (int D : {64, 128, 256}) {
      Config c = rotating_case(it++, DType::F16, D, pick({8, 16, 5}), pick({1, 2}), pick({1, 2}));
      c.qdt = it % 2 ? DType::F32 : DType::BF16;
      c.q_mult = qm;
      c.scale_mult = 1.f / qm;
      c.score = true;
      Problem(c).run_and_compare();
    }
  }
  // Heads of one group 1e10 apart: head h of q scaled by 10^(h % 11 - 5).
  for (int D : {64, 128}) {
    Config c = rotating_case(it++, DType::F16, D, 11, 1, 2);
    c.qdt = DType::F32;
    Problem pr(c);
    for (int b = 0; b < c.B; ++b)
      for (int h = 0; h < c.Hq; ++h)
        for (int d = 0; d < c.D; ++d) {
          const size_t i = (size_t(b) * c.Hq + h) * c.D + d;
          pr.q.set(i, pr.q.val[i] * std::pow(10.f, float(h % 11 - 5)));
        }
    pr.run_and_compare();
  }
}

// 512-byte K/V rows (f16 and bf16 D 256, f32 D 128) on a 99 KB part (sm_86,
// sm_89; emulated here, the card's own part on a GPU): three stages of
// tiles (96 KB) leave no room for the kernels' static arrays there, so they
// run with two; every kernel that takes such rows (tensor cores with 8 and
// 16 heads, CUDA cores) against the CPU twin, dense and Quest, H2O scores.
KVSQ_TEST(cuda_decode_512_byte_rows_99kb) {
  need_device();
#ifdef KVSQ_CUDA_EMU
  cuda_emu::PartScope scope(cuda_emu::part("sm_86"));
#endif
  int it = 0;
  for (auto [kv, D] : {std::pair{DType::BF16, 256}, std::pair{DType::F16, 256}, std::pair{DType::F32, 128}}) {
    for (int g : {1, 5, 8, 16}) {
      if (kv == DType::F32 && g == 16) continue;  // (the same kernel as 8: two sub-groups)
      Problem(rotating_case(it++, kv, D, g, pick({1, 2}), pick({1, 2}))).run_and_compare();
    }
  }
}

// f32 K/V rows of more than 512 bytes (D 132..256): each lane holds two
// 16-byte vectors, sub-groups of at most 4 heads (g 5, 8, 12 split), a
// two-stage pipeline; dense and Quest, H2O scores with each reduce, empty
// lists, against the CPU twin.
KVSQ_TEST(cuda_decode_wide_f32_rows) {
  need_device();
  int it = 0;
  for (int D : {256, 132, 160, 200})
    for (int g : {1, 4, 5, 8, 12}) Problem(rotating_case(it++, DType::F32, D, g, pick({1, 2}), pick({1, 2}))).run_and_compare();
}

KVSQ_TEST(cuda_decode_unsupported_shapes) {
  need_device();
  Dev buf(1 << 20);
  std::vector<int32_t> ind = {0, 1}, idv = {0}, len = {1};
  Dev dind(ind), dids(idv), dlen(len);
  auto args = [&](int D, DType kv, int Hq) {
    DecodeAttnArgs a;
    a.batch = 1, a.num_q_heads = Hq, a.num_kv_heads = 1, a.head_dim = D, a.page_size = 16;
    a.q_dtype = DType::F32, a.kv_dtype = kv, a.scale = 0.1f;
    a.q = buf.p, a.o = buf.p, a.k_pool = buf.p, a.v_pool = buf.p, a.num_pages = 1;
    a.page_indptr = dind.as<int32_t>(), a.page_ids = dids.as<int32_t>(), a.kv_len = dlen.as<int32_t>();
    return a;
  };
  CHECK(cuda_decode_attention(args(36, DType::BF16, 1), nullptr) == Status::Shape);   // 72-byte rows
  CHECK(cuda_decode_attention(args(260, DType::F32, 1), nullptr) == Status::Shape);   // 1040-byte rows
  CHECK(cuda_decode_attention(args(264, DType::F16, 1), nullptr) == Status::Shape);   // 528-byte 16-bit rows
  CHECK(cuda_decode_attention(args(130, DType::F32, 1), nullptr) == Status::Shape);   // 520 bytes: not whole vectors
  int optin = 0;
  CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) == cudaSuccess);
  CHECK(cuda_decode_row_check(0, DType::F32, 256).empty() == (optin >= 68 * 1024));  // one stage: 64 KB + 3; every sm_80+
  CHECK(cuda_decode_row_check(0, DType::BF16, 256).empty() == (optin >= 70 * 1024));  // two stages: 64 KB + 6
  CHECK(!cuda_decode_row_check(0, DType::F32, 260).empty());
  CHECK(!cuda_decode_row_check(0, DType::BF16, 264).empty());
  CHECK(!cuda_decode_row_check(0, DType::F16, 36).empty());
  CHECK(!cuda_decode_row_check(99, DType::F16, 64).empty());  // no such device
#ifdef KVSQ_CUDA_EMU
  {
    // sm_86/89's 99 KB per block take wide f32 rows with one pipeline stage
    // (two stages of 1 KiB rows are 128 KB) and 512-byte rows with two; a
    // part with 64 KB (none the build targets) fits neither with the static
    // arrays (64 KB of tiles + 3 to 6 KB): refused, with the reason; rows of
    // 256 bytes (three stages, 48 KB) still fit there.
    cuda_emu::PartScope scope(cuda_emu::st().dev);  // changed below, restored at the end
    cuda_emu::st().dev.max_optin_smem = 99 * 1024;
    CHECK(cuda_decode_row_check(0, DType::F32, 256).empty());
    CHECK(cuda_decode_row_check(0, DType::F32, 128).empty());
    CHECK(cuda_decode_row_check(0, DType::BF16, 256).empty());
    cuda_emu::st().dev.max_optin_smem = 64 * 1024;
    for (auto [kv, d] : {std::pair{DType::F32, 256}, std::pair{DType::F32, 128}, std::pair{DType::BF16, 256}}) {
      const std::string why = cuda_decode_row_check(0, kv, d);
      CHECK_MSG(why.find("shared memory") != std::string::npos, why);
    }
    CHECK(cuda_decode_row_check(0, DType::F16, 128).empty());
    const long launches = cuda_emu::st().launches;
    CHECK(cuda_decode_attention(args(256, DType::F32, 1), nullptr) == Status::Shape);
    CHECK(cuda_emu::st().launches == launches);
  }
#endif
  CHECK(cuda_decode_attention(args(64, DType::I32, 1), nullptr) == Status::DType);
  DecodeAttnArgs a = args(64, DType::F16, 1);
  a.k_pool = static_cast<char*>(buf.p) + 2;  // misaligned pool
  CHECK(cuda_decode_attention(a, nullptr) == Status::Shape);
  // a page subset whose element count cannot size the union workspace
  std::vector<int32_t> si = {0, 1}, sp = {0};
  Dev dsi(si), dsp(sp);
  for (int64_t bad : {int64_t(-1), int64_t(INT_MAX) + 1}) {
    DecodeAttnArgs s = args(64, DType::F16, 1);
    s.sel_indptr = dsi.as<int32_t>(), s.sel_pages = dsp.as<int32_t>(), s.sel_count = bad;
    CHECK(cuda_decode_attention(s, nullptr) == Status::Shape);
  }
  sync_ok();
}

// ---------------------------------------------------------------- memory ops
namespace {
std::vector<uint8_t> rand_rows(DType t, size_t n) {
  Buf b;
  b.init(t, n);
  for (size_t i = 0; i < n; ++i) b.set(i, kvsqtest::normal());
  return b.bytes;
}
}  // namespace

KVSQ_TEST(cuda_append_matches_cpu) {
  need_device();
  for (DType t : kDts)
    for (int D : {64, 128, 40, 3}) {
      const int P = pick({16, 7}), num_pages = randint(4, 40), count = randint(1, std::min(num_pages, 24));
      const size_t es = dtype_size(t);
      std::vector<uint8_t> kp = rand_rows(t, size_t(num_pages) * P * D), vp = rand_rows(t, kp.size() / es);
      std::vector<uint8_t> meta = rand_rows(t, size_t(num_pages) * 2 * D);
      std::vector<uint8_t> kn = rand_rows(t, size_t(count) * D), vn = rand_rows(t, size_t(count) * D);
      std::vector<float> score(size_t(num_pages) * P);
      for (auto& s : score) s = uniform(0.f, 3.f);
      // one row per page (the kernel's documented assumption), random rows in the pages
      std::vector<int> pages(num_pages);
      std::iota(pages.begin(), pages.end(), 0);
      std::shuffle(pages.begin(), pages.end(), kvsqtest::rng());
      std::vector<int64_t> slot(count);
      std::vector<uint8_t> reset(count);
      for (int i = 0; i < count; ++i) {
        slot[i] = int64_t(pages[i]) * P + randint(0, P - 1);
        reset[i] = uint8_t(randint(0, 2) == 0);
      }
      const bool use_reset = randint(0, 1);
      AppendArgs a;
      a.count = count, a.head_dim = D, a.page_size = P, a.dtype = t, a.num_pages = num_pages;
      std::vector<uint8_t> ck = kp, cv = vp, cm = meta;
      std::vector<float> cs = score;
      a.k_new = kn.data(), a.v_new = vn.data(), a.dst_slot = slot.data(), a.reset_meta = use_reset ? reset.data() : nullptr;
      a.k_pool = ck.data(), a.v_pool = cv.data(), a.meta_pool = cm.data(), a.score_pool = cs.data();
      CHECK(cpu_append(a) == Status::Ok);
      Dev dk(kp), dv(vp), dm(meta), dsc(score), dkn(kn), dvn(vn), dsl(slot), drs(reset);
      AppendArgs d = a;
      d.k_new = dkn.p, d.v_new = dvn.p, d.dst_slot = dsl.as<int64_t>(), d.reset_meta = use_reset ? drs.as<uint8_t>() : nullptr;
      d.k_pool = dk.p, d.v_pool = dv.p, d.meta_pool = dm.p, d.score_pool = dsc.as<float>();
      CHECK(cuda_append(d, nullptr) == Status::Ok);
      sync_ok();
      CHECK(dk.get<uint8_t>(ck.size()) == ck);
      CHECK(dv.get<uint8_t>(cv.size()) == cv);
      CHECK(dm.get<uint8_t>(cm.size()) == cm);
      std::vector<float> gs = dsc.get<float>(cs.size());
      CHECK(std::memcmp(gs.data(), cs.data(), cs.size() * 4) == 0);
    }
  AppendArgs bad;
  CHECK(cuda_append(bad, nullptr) == Status::DType || cuda_append(bad, nullptr) == Status::Shape);
}

KVSQ_TEST(cuda_gather_page_meta_match_cpu) {
  need_device();
  for (DType t : kDts)
    for (int D : {128, 40, 3}) {
      const int P = pick({16, 7}), num_pages = randint(8, 40);
      const int64_t rows = randint(10, 300);
      const int count = int(std::min<int64_t>(rows, num_pages * P));
      const size_t es = dtype_size(t);
      std::vector<uint8_t> ks = rand_rows(t, size_t(rows) * D), vs = rand_rows(t, size_t(rows) * D);
      std::vector<uint8_t> kp = rand_rows(t, size_t(num_pages) * P * D), vp = rand_rows(t, kp.size() / es);
      std::vector<float> ssrc(rows), spool(size_t(num_pages) * P);
      for (auto& x : ssrc) x = uniform(0.f, 5.f);
      for (auto& x : spool) x = uniform(0.f, 5.f);
      std::vector<int64_t> allsl(num_pages * int64_t(P));
      std::iota(allsl.begin(), allsl.end(), 0);
      std::shuffle(allsl.begin(), allsl.end(), kvsqtest::rng());
      std::vector<int64_t> src(count), dst(allsl.begin(), allsl.begin() + count);
      for (auto& s : src) s = randint(0, int(rows) - 1);
      GatherArgs a;
      a.count = count, a.head_dim = D, a.dtype = t, a.src_rows = rows, a.num_pages = num_pages, a.page_size = P;
      std::vector<uint8_t> ck = kp, cv = vp;
      std::vector<float> cs = spool;
      a.k_src = ks.data(), a.v_src = vs.data(), a.src_row = src.data(), a.score_src = ssrc.data();
      a.k_pool = ck.data(), a.v_pool = cv.data(), a.score_pool = cs.data(), a.dst_slot = dst.data();
      CHECK(cpu_gather(a) == Status::Ok);
      Dev dks(ks), dvs(vs), dsrc(src), dss(ssrc), dk(kp), dv(vp), dsp(spool), ddst(dst);
      GatherArgs d = a;
      d.k_src = dks.p, d.v_src = dvs.p, d.src_row = dsrc.as<int64_t>(), d.score_src = dss.as<float>();
      d.k_pool = dk.p, d.v_pool = dv.p, d.score_pool = dsp.as<float>(), d.dst_slot = ddst.as<int64_t>();
      CHECK(cuda_gather(d, nullptr) == Status::Ok);
      sync_ok();
      CHECK(dk.get<uint8_t>(ck.size()) == ck);
      CHECK(dv.get<uint8_t>(cv.size()) == cv);
      std::vector<float> gs = dsp.get<float>(cs.size());
      CHECK(std::memcmp(gs.data(), cs.data(), cs.size() * 4) == 0);

      // page_meta over some distinct pages of the gathered pool
      const int np = randint(1, num_pages);
      std::vector<int32_t> pids(num_pages), fill(np);
      std::iota(pids.begin(), pids.end(), 0);
      std::shuffle(pids.begin(), pids.end(), kvsqtest::rng());
      pids.resize(np);
      for (auto& f : fill) f = randint(1, P);
      std::vector<uint8_t> meta = rand_rows(t, size_t(num_pages) * 2 * D), cm = meta;
      PageMetaArgs m;
      m.count = np, m.head_dim = D, m.page_size = P, m.dtype = t, m.num_pages = num_pages;
      m.k_pool = ck.data(), m.meta_pool = cm.data(), m.page_ids = pids.data(), m.fill = fill.data();
      CHECK(cpu_page_meta(m) == Status::Ok);
      Dev dm(meta), dpid(pids), dfill(fill);
      PageMetaArgs dmv = m;
      dmv.k_pool = dk.p, dmv.meta_pool = dm.p, dmv.page_ids = dpid.as<int32_t>(), dmv.fill = dfill.as<int32_t>();
      CHECK(cuda_page_meta(dmv, nullptr) == Status::Ok);
      sync_ok();
      CHECK(dm.get<uint8_t>(cm.size()) == cm);
    }
}

KVSQ_TEST(cuda_read_scores_matches_cpu) {
  need_device();
  for (int P : {16, 7, 1}) {
    const int lists = randint(1, 40);
    std::vector<int32_t> indptr(1, 0), ids, len;
    int64_t total_pages = 0;
    for (int l = 0; l < lists; ++l) {
      const int n = pick({0, 1, 17, 1000, 4097});
      len.push_back(n);
      const int np = (n + P - 1) / P + randint(0, 1);
      total_pages += np;
      indptr.push_back(indptr.back() + np);
    }
    std::vector<int> perm(total_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), kvsqtest::rng());
    ids.assign(perm.begin(), perm.end());
    std::vector<float> pool(size_t(std::max<int64_t>(total_pages, 1)) * P);
    for (auto& x : pool) x = uniform(-3.f, 3.f);
    const size_t n_out = std::accumulate(len.begin(), len.end(), size_t(0));
    // at least one element: with every list empty, out.data() of an empty
    // vector may be null, which the CPU twin refuses (Shape)
    std::vector<float> out(std::max<size_t>(n_out, 1), 9.f);
    ReadScoresArgs a;
    a.lists = lists, a.page_size = P, a.num_pages = std::max<int64_t>(total_pages, 1);
    a.score_pool = pool.data(), a.page_indptr = indptr.data(), a.page_ids = ids.data(), a.kv_len = len.data();
    a.out = out.data();
    CHECK(cpu_read_scores(a) == Status::Ok);
    Dev dp(pool), di(indptr), dids(ids.empty() ? std::vector<int32_t>{0} : ids), dl(len), dout(std::max<size_t>(n_out, 1) * 4);
    ReadScoresArgs d = a;
    d.score_pool = dp.as<float>(), d.page_indptr = di.as<int32_t>(), d.page_ids = dids.as<int32_t>();
    d.kv_len = dl.as<int32_t>(), d.out = dout.as<float>();
    CHECK(cuda_read_scores(d, nullptr) == Status::Ok);
    sync_ok();
    std::vector<float> got = dout.get<float>(n_out);
    CHECK(n_out == 0 || std::memcmp(got.data(), out.data(), n_out * 4) == 0);
  }
}

// ---------------------------------------------------------------- benchmark
namespace {

__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 15; x *= 2246822519u; x ^= x >> 13;
    const float f = (float(x & 0xffff) / 65536.f - 0.5f) * 4.f;
    uint32_t u;
    memcpy(&u, &f, 4);
    p[i] = uint16_t(u >> 16);
  }
}

struct Timer {
  cudaEvent_t a, b;
  Timer() { cudaEventCreate(&a); cudaEventCreate(&b); }
  ~Timer() { cudaEventDestroy(a); cudaEventDestroy(b); }
};

template <class F>
double median_ms(F&& f, void* flush, size_t flush_bytes, int reps) {
  Timer t;
  std::vector<float> ms;
  for (int i = 0; i < reps + 3; ++i) {
    cudaMemsetAsync(flush, i & 0xff, flush_bytes);  // evict the 50 MB L2
    cudaEventRecord(t.a);
    f();
    cudaEventRecord(t.b);
    cudaEventSynchronize(t.b);
    float x = 0.f;
    cudaEventElapsedTime(&x, t.a, t.b);
    if (i >= 3) ms.push_back(x);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// The benchmark's lists: nl full lists of npl pages each, scattered over the
// pool (shuffled page ids), as a real cache's would be.
struct BenchLists {
  std::vector<int32_t> indptr, ids, len;
  BenchLists(int nl, int npl, int P) : indptr(1, 0), ids(size_t(nl) * npl), len(nl, npl * P) {
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), kvsqtest::rng());
    for (int l = 0; l < nl; ++l) indptr.push_back(indptr.back() + npl);
  }
};

// A benchmark problem on the device: B sequences of ctx tokens per KV head
// (BenchLists), bf16 K/V pools and q filled from seeds seed, seed + 1,
// seed + 2, outputs, a zeroed score pool and lse.
struct BenchPool {
  int B, Hq, Hkv, D, P, nl, npl;
  int64_t num_pages;
  size_t pool_el;
  BenchLists lists;
  Dev k, v, q, o, dind, dids, dlen, score, lse;
  BenchPool(int B_, int Hq_, int Hkv_, int D_, int P_, int ctx, int seed)
      : B(B_), Hq(Hq_), Hkv(Hkv_), D(D_), P(P_), nl(B_ * Hkv_), npl(ctx / P_), num_pages(int64_t(nl) * npl),
        pool_el(size_t(num_pages) * P * D), lists(nl, npl, P), k(pool_el * 2), v(pool_el * 2),
        q(size_t(B) * Hq * D * 2), o(size_t(B) * Hq * D * 2), dind(lists.indptr), dids(lists.ids), dlen(lists.len),
        score(size_t(num_pages) * P * 4), lse(size_t(B) * Hq * 4) {
    fill_bf16<<<1024, 256>>>(k.as<uint16_t>(), pool_el, seed);
    fill_bf16<<<1024, 256>>>(v.as<uint16_t>(), pool_el, seed + 1);
    fill_bf16<<<64, 256>>>(q.as<uint16_t>(), size_t(B) * Hq * D, seed + 2);
    CU_OK(cudaMemset(score.p, 0, score.n));
  }
  // bf16 decode attention over these buffers; hq query heads (<= Hq) read q's first rows.
  DecodeAttnArgs args(int hq = 0) const {
    DecodeAttnArgs a;
    a.batch = B, a.num_q_heads = hq ? hq : Hq, a.num_kv_heads = Hkv, a.head_dim = D, a.page_size = P;
    a.q_dtype = DType::BF16, a.kv_dtype = DType::BF16, a.scale = 1.f / std::sqrt(float(D));
    a.q = q.p, a.o = o.p, a.k_pool = k.p, a.v_pool = v.p, a.num_pages = num_pages;
    a.page_indptr = dind.as<int32_t>(), a.page_ids = dids.as<int32_t>(), a.kv_len = dlen.as<int32_t>();
    a.lse = lse.as<float>();
    return a;
  }
};

}  // namespace

KVSQ_TEST(cuda_decode_bench) {
#ifdef KVSQ_CUDA_EMU
  SKIP("benchmarks time a device, not the emulator");
#endif
  const char* env = std::getenv("KVSQ_CUDA_BENCH");
  if (!env || std::strcmp(env, "1") != 0) SKIP("set KVSQ_CUDA_BENCH=1 to run the CUDA decode benchmark");
  need_device();
  const size_t flush_bytes = size_t(128) << 20;
  Dev flush(flush_bytes);
  // device-to-device copy bandwidth (read + write bytes)
  const size_t cb = size_t(512) << 20;
  Dev c0(cb), c1(cb);
  const double copy_ms = median_ms([&] { cudaMemcpyAsync(c1.p, c0.p, cb, cudaMemcpyDeviceToDevice); }, flush.p, flush_bytes, 20);
  const double copy_gbs = 2.0 * cb / copy_ms / 1e6;
  std::printf("BENCH copy D2D %zu MB: %.3f ms, %.0f GB/s (read+write)\n", cb >> 20, copy_ms, copy_gbs);
  // Median time of one decode call over bp's pool (checked), and its K and V
  // bytes per second (each read once) in *gbs.
  auto timed = [&](const DecodeAttnArgs& a, const BenchPool& bp, double* gbs) {
    Status st = Status::Ok;
    sync_ok();
    const double t = median_ms([&] { st = cuda_decode_attention(a, nullptr); }, flush.p, flush_bytes, 50);
    CHECK_MSG(st == Status::Ok, status_name(st));
    sync_ok();
    *gbs = 2.0 * bp.pool_el * 2 / t / 1e6;
    return t;
  };

  const int Hq = 32, Hkv = 8, D = 128, P = 16, ctx = 32768;
  // KVSQ_CUDA_BENCH_ONLY=quest: only the 128K Quest case (profiling runs)
  const char* only = std::getenv("KVSQ_CUDA_BENCH_ONLY");
  const bool quest_only = only && std::strcmp(only, "quest") == 0;
  for (int B : {1, 4}) {
    if (quest_only) break;
    const BenchPool bp(B, Hq, Hkv, D, P, ctx, 1);
    const int nl = bp.nl, npl = bp.npl;
    // Quest: each head selects 1/8 of the pages (random, sorted), plus the last
    std::vector<int32_t> si(1, 0), sp;
    for (int r = 0; r < B * Hq; ++r) {
      for (int p = 0; p < npl; ++p)
        if (p == npl - 1 || randint(0, 7) == 0) sp.push_back(p);
      si.push_back(int32_t(sp.size()));
    }
    Dev dsi(si), dsp(sp);
    sync_ok();
    const DecodeAttnArgs a = bp.args();
    const double bytes = 2.0 * bp.pool_el * 2;  // K + V read once
    Status st = Status::Ok;
    auto run = [&](const DecodeAttnArgs& x) { st = cuda_decode_attention(x, nullptr); };
    const double plain = median_ms([&] { run(a); }, flush.p, flush_bytes, 50);
    CHECK_MSG(st == Status::Ok, status_name(st));
    DecodeAttnArgs h = a;
    h.score_pool = bp.score.as<float>();
    const double h2o = median_ms([&] { run(h); }, flush.p, flush_bytes, 50);
    CHECK_MSG(st == Status::Ok, status_name(st));
    DecodeAttnArgs qs = a;
    qs.sel_indptr = dsi.as<int32_t>(), qs.sel_pages = dsp.as<int32_t>(), qs.sel_count = int64_t(sp.size());
    const double quest = median_ms([&] { run(qs); }, flush.p, flush_bytes, 50);
    CHECK_MSG(st == Status::Ok, status_name(st));
    sync_ok();
    const double gbs = bytes / plain / 1e6;
    std::printf("BENCH decode bf16 B=%d Hq=%d Hkv=%d D=%d ctx=%d (B*Hkv=%d): plain %.3f ms %.0f GB/s = %.0f%% of copy; "
                "H2O fused %.3f ms (%.2fx plain); Quest 1/8 pages %.3f ms\n",
                B, Hq, Hkv, D, ctx, nl, plain, gbs, 100.0 * gbs / copy_gbs, h2o, h2o / plain, quest);
    // The same three without dependent launches (what they are worth).
    cuda_set_dependent_launch(false);
    const double plain_n = median_ms([&] { run(a); }, flush.p, flush_bytes, 50);
    const double h2o_n = median_ms([&] { run(h); }, flush.p, flush_bytes, 50);
    const double quest_n = median_ms([&] { run(qs); }, flush.p, flush_bytes, 50);
    cuda_set_dependent_launch(true);
    CHECK_MSG(st == Status::Ok, status_name(st));
    sync_ok();
    std::printf("BENCH decode_nopdl B=%d: plain %.3f ms (with PDL %.3f); H2O fused %.3f ms (%.3f, %.2fx plain); "
                "Quest 1/8 pages %.3f ms (%.3f)\n",
                B, plain_n, plain, h2o_n, h2o, h2o_n / plain_n, quest_n, quest);
    // The plan made on the host (what the bindings do for dense calls): the
    // same calls without the plan kernel. The image is uploaded once; each
    // call leaves its counters at zero, so it serves every repetition.
    DecodeAttnArgs ha = a;
    ha.kv_len = bp.lists.len.data();
    DecodePlan plan;
    const Status ps = cuda_decode_plan(ha, &plan);
    CHECK_MSG(ps == Status::Ok && !plan.image.empty(), "plan " << status_name(ps));
    Dev dplan(plan.image);
    DecodeAttnArgs hp = a, hh = h;
    for (DecodeAttnArgs* x : {&hp, &hh}) x->plan = dplan.p, x->plan_items = plan.items, x->plan_lists = plan.lists;
    const double plain_h = median_ms([&] { run(hp); }, flush.p, flush_bytes, 50);
    const double h2o_h = median_ms([&] { run(hh); }, flush.p, flush_bytes, 50);
    CHECK_MSG(st == Status::Ok, status_name(st));
    sync_ok();
    const double gbs_h = bytes / plain_h / 1e6;
    std::printf("BENCH decode_host_plan B=%d: plain %.3f ms %.0f GB/s = %.0f%% of copy (device plan %.3f); "
                "H2O fused %.3f ms (%.2fx plain; device plan %.3f)\n",
                B, plain_h, gbs_h, 100.0 * gbs_h / copy_gbs, plain, h2o_h, h2o_h / plain_h, h2o);
    // The warp-page kernel (off by default until these lines say it wins):
    // the same three calls, plan kernel as in the first line.
    double plain_w = 0, h2o_w = 0, quest_w = 0;
    {
      const WarpPages on(true);
      plain_w = median_ms([&] { run(a); }, flush.p, flush_bytes, 50);
      h2o_w = median_ms([&] { run(h); }, flush.p, flush_bytes, 50);
      quest_w = median_ms([&] { run(qs); }, flush.p, flush_bytes, 50);
    }
    CHECK_MSG(st == Status::Ok, status_name(st));
    sync_ok();
    const double gbs_w = bytes / plain_w / 1e6;
    std::printf("BENCH decode_warp_pages B=%d: plain %.3f ms %.0f GB/s = %.0f%% of copy (tile kernel %.3f); "
                "H2O fused %.3f ms (%.2fx plain; tile %.3f); Quest 1/8 pages %.3f ms (tile %.3f)\n",
                B, plain_w, gbs_w, 100.0 * gbs_w / copy_gbs, plain, h2o_w, h2o_w / plain_w, h2o, quest_w, quest);
  }

  // f16 K/V at the target shape (the tensor-core kernels since 2026-12-07,
  // CUDA cores before): the bf16 buffers read as f16 (finite, |x| < 2), f16
  // and f32 queries (f32: scaled per head and split into f16 hi + lo). No
  // target of its own; beside the bf16 line.
  for (int B : {1, 4}) {
    if (quest_only) break;
    const BenchPool bp(B, Hq, Hkv, D, P, ctx, 4);
    DecodeAttnArgs a = bp.args();
    a.q_dtype = DType::F16, a.kv_dtype = DType::F16;
    double gbs = 0, gbs32 = 0;
    const double t = timed(a, bp, &gbs);
    std::vector<float> hq(size_t(B) * Hq * D);
    for (float& x : hq) x = kvsqtest::normal();
    Dev q32(hq);
    a.q = q32.p, a.q_dtype = DType::F32;
    const double t32 = timed(a, bp, &gbs32);
    std::printf("BENCH decode f16 B=%d Hq=%d Hkv=%d D=%d ctx=%d: plain %.3f ms %.0f GB/s = %.0f%% of copy; "
                "f32 q %.3f ms\n",
                B, Hq, Hkv, D, ctx, t, gbs, 100.0 * gbs / copy_gbs, t32);
  }

  // bf16 K/V of head dims other than 64 / 128 / 256 (tensor cores since
  // session 18, CUDA cores before: D 80 Phi-2, D 96 Phi-3-mini; 112, 192 the
  // padded tile rows of both row kernels), 32 query heads on 8 KV heads at
  // 32K, batch 4, against copy like the D 128 line. No target.
  for (int Dx : {80, 96, 112, 192}) {
    if (quest_only) break;
    const BenchPool bp(4, Hq, Hkv, Dx, P, ctx, 16);
    double gbs = 0;
    const double t = timed(bp.args(), bp, &gbs);
    std::printf("BENCH decode_dims bf16 B=4 Hq=%d Hkv=%d D=%d ctx=%d: plain %.3f ms %.0f GB/s = %.0f%% of copy\n", Hq,
                Hkv, Dx, ctx, t, gbs, 100.0 * gbs / copy_gbs);
  }

  // More than 16 query heads per KV head (sub-groups, each reading the KV
  // head's pages): 32 query heads on 1 KV head (two sub-groups of 16 on
  // tensor cores) against 8 on 1 (one pass over the same K/V bytes), one
  // sequence and 8, 32K context. The ratio is what the second sub-group's
  // repeated reads cost (L2 hits or DRAM) and the 16-head kernel's extra
  // work; no target.
  for (int B : {1, 8}) {
    if (quest_only) break;
    const BenchPool bp(B, 32, 1, D, P, ctx, 8);
    sync_ok();
    Status st = Status::Ok;
    const DecodeAttnArgs g32 = bp.args(), g8 = bp.args(8);
    DecodeAttnArgs g32h = g32;
    g32h.score_pool = bp.score.as<float>();
    const double t8 = median_ms([&] { st = cuda_decode_attention(g8, nullptr); }, flush.p, flush_bytes, 50);
    CHECK_MSG(st == Status::Ok, status_name(st));
    const double t32 = median_ms([&] { st = cuda_decode_attention(g32, nullptr); }, flush.p, flush_bytes, 50);
    CHECK_MSG(st == Status::Ok, status_name(st));
    const double t32h = median_ms([&] { st = cuda_decode_attention(g32h, nullptr); }, flush.p, flush_bytes, 50);
    CHECK_MSG(st == Status::Ok, status_name(st));
    sync_ok();
    const double gbs = 2.0 * bp.pool_el * 2 / t32 / 1e6;
    std::printf("BENCH decode_mqa bf16 B=%d Hq=32 Hkv=1 D=%d ctx=%d: %.3f ms %.0f GB/s of K/V = %.0f%% of copy "
                "(2 sub-groups of 16); Hq=8 on the same K/V %.3f ms (%.2fx); H2O fused %.3f ms (%.2fx plain)\n",
                B, D, ctx, t32, gbs, 100.0 * gbs / copy_gbs, t8, t32 / t8, t32h, t32h / t32);
  }

  // f32 K/V at D 256 (the wide-row kernel: two 16-byte vectors per lane,
  // sub-groups of at most 4 heads, two pipeline stages), 32 query heads on 8
  // KV heads (two sub-groups each) at 32K, one sequence and 4. The buffers
  // of a bf16 D 512 problem hold exactly its bytes (bf16 pairs read as f32:
  // finite values in [-2, 2)). No target; against copy like the rest.
  for (int B : {1, 4}) {
    if (quest_only) break;
    const BenchPool bp(B, Hq, Hkv, 2 * 256, P, ctx, 12);
    DecodeAttnArgs a = bp.args();
    a.head_dim = 256, a.q_dtype = DType::F32, a.kv_dtype = DType::F32, a.scale = 1.f / 16.f;
    double gbs = 0;
    const double t = timed(a, bp, &gbs);
    std::printf("BENCH decode_f32_d256 B=%d Hq=%d Hkv=%d D=256 ctx=%d: %.3f ms %.0f GB/s = %.0f%% of copy "
                "(2 sub-groups of 4 heads per KV head)\n",
                B, Hq, Hkv, ctx, t, gbs, 100.0 * gbs / copy_gbs);
  }

  // Quest end to end at 128K, budget 2048 tokens (128 pages of 16), one
  // sequence, per query head: page choice on the device (cuda_quest_select:
  // bounds + radix top-k + assembly) then sparse attention, against dense
  // attention over the same pages. As the cache calls it (q_checked: no read
  // back, no wait) and, for comparison, with q checked and reported (one
  // read back and a wait inside the step).
  {
    const int B = 1, ctx = 131072, budget = 2048 / P;
    const BenchPool bp(B, Hq, Hkv, D, P, ctx, 4);
    const int npl = bp.npl;
    const int64_t num_pages = bp.num_pages;
    const size_t pool_el = bp.pool_el;
    Dev meta(size_t(num_pages) * 2 * D * 2);
    fill_bf16<<<1024, 256>>>(meta.as<uint16_t>(), size_t(num_pages) * 2 * D, 7);
    Dev dsi(size_t(B * Hq + 1) * 4), dsp(size_t(B * Hq) * budget * 4);
    sync_ok();
    const DecodeAttnArgs a = bp.args();
    QuestSelectArgs s;
    s.bounds.batch = B, s.bounds.num_q_heads = Hq, s.bounds.num_kv_heads = Hkv, s.bounds.head_dim = D;
    s.bounds.page_size = P, s.bounds.q_dtype = DType::BF16, s.bounds.kv_dtype = DType::BF16;
    s.bounds.q = bp.q.p, s.bounds.meta_pool = meta.p, s.bounds.num_pages = num_pages;
    s.bounds.page_indptr = bp.dind.as<int32_t>(), s.bounds.page_ids = bp.dids.as<int32_t>(), s.bounds.kv_len = bp.dlen.as<int32_t>();
    s.bounds.share = false;
    s.budget_pages = budget, s.max_pages = npl;
    s.sel_indptr = dsi.as<int32_t>(), s.sel_pages = dsp.as<int32_t>();
    s.q_checked = true;
    QuestSelectArgs s_wait = s;
    s_wait.q_checked = false;
    Status st = Status::Ok, st2 = Status::Ok;
    const double dense = median_ms([&] { st = cuda_decode_attention(a, nullptr); }, flush.p, flush_bytes, 30);
    CHECK_MSG(st == Status::Ok, status_name(st));
    DecodeAttnArgs qs = a;
    qs.sel_indptr = dsi.as<int32_t>(), qs.sel_pages = dsp.as<int32_t>(), qs.sel_count = int64_t(B * Hq) * budget;
    const double sel = median_ms([&] { st2 = cuda_quest_select(s, nullptr); }, flush.p, flush_bytes, 30);
    CHECK_MSG(st2 == Status::Ok, status_name(st2));
    const double both = median_ms([&] {
      st2 = cuda_quest_select(s, nullptr);
      if (st2 == Status::Ok) st = cuda_decode_attention(qs, nullptr);
    }, flush.p, flush_bytes, 30);
    CHECK_MSG(st2 == Status::Ok && st == Status::Ok, status_name(st2) << " " << status_name(st));
    const double both_wait = median_ms([&] {
      st2 = cuda_quest_select(s_wait, nullptr);
      if (st2 == Status::Ok) st = cuda_decode_attention(qs, nullptr);
    }, flush.p, flush_bytes, 30);
    CHECK_MSG(st2 == Status::Ok && st == Status::Ok, status_name(st2) << " " << status_name(st));
    cuda_set_dependent_launch(false);
    const double both_n = median_ms([&] {
      st2 = cuda_quest_select(s, nullptr);
      if (st2 == Status::Ok) st = cuda_decode_attention(qs, nullptr);
    }, flush.p, flush_bytes, 30);
    cuda_set_dependent_launch(true);
    CHECK_MSG(st2 == Status::Ok && st == Status::Ok, status_name(st2) << " " << status_name(st));
    sync_ok();
    std::printf("BENCH quest_nopdl: select + sparse attention %.3f ms (with PDL %.3f)\n", both_n, both);
    std::printf("BENCH quest bf16 B=1 Hq=%d Hkv=%d D=%d ctx=%d budget=2048: dense %.3f ms %.0f GB/s; "
                "select %.3f ms; select + sparse attention %.3f ms = %.1fx faster than dense (target 6x); "
                "with q checked on the device and waited for: %.3f ms = %.1fx\n",
                Hq, Hkv, D, ctx, dense, 2.0 * pool_el * 2 / dense / 1e6, sel, both, dense / both, both_wait,
                dense / both_wait);
  }
}

// The CPU twin's empty-pool rule: num_pages 0 with null K/V, page ids and
// scores is accepted even with score records and an eviction candidate asked
// for (the random ragged test reaches this case once in ~256 runs).
KVSQ_TEST(cuda_decode_empty_pool_null_pointers) {
  need_device();
  const int B = 2, Hq = 4, Hkv = 2, D = 16;
  Dev q(std::vector<float>(size_t(B) * Hq * D, 0.5f)), o(std::vector<float>(size_t(B) * Hq * D, 7.f));
  Dev lse(std::vector<float>(size_t(B) * Hq, 7.f)), rec(std::vector<float>(1, 3.f));
  Dev ind(std::vector<int32_t>(B * Hkv + 1, 0)), len(std::vector<int32_t>(B * Hkv, 0));
  Dev epos(std::vector<int32_t>(1, 0)), emax(std::vector<int32_t>(B * Hkv, 100)), slot(std::vector<int32_t>(B * Hkv, 5));
  DecodeAttnArgs a;
  a.batch = B, a.num_q_heads = Hq, a.num_kv_heads = Hkv, a.head_dim = D, a.page_size = 4;
  a.q_dtype = DType::F32, a.kv_dtype = DType::F32, a.scale = 0.25f;
  a.q = q.p, a.o = o.p, a.lse = lse.as<float>(), a.num_pages = 0;
  a.page_indptr = ind.as<int32_t>(), a.kv_len = len.as<int32_t>();
  a.score_before = rec.as<float>(), a.score_after = rec.as<float>();
  a.evict_pos = epos.as<int32_t>(), a.evict_max_pos = emax.as<int32_t>(), a.evict_slot = slot.as<int32_t>();
  CHECK(cuda_decode_attention(a, nullptr) == Status::Ok);
  sync_ok();
  for (float x : o.get<float>(size_t(B) * Hq * D)) CHECK(x == 0.f);
  for (float x : lse.get<float>(size_t(B) * Hq)) CHECK(x == -std::numeric_limits<float>::infinity());
  for (int32_t s : slot.get<int32_t>(B * Hkv)) CHECK(s == -1);
  CHECK(rec.get<float>(1)[0] == 3.f);
}
