// cpu_topk against a plain reference: stable sort of the indices by score
// descending (equal scores keep index order, -0.0 == +0.0), take min(k, len),
// sort ascending. Tolerance: exact. Both the AVX2 and the portable paths, the
// row-parallel and the split-row paths, the sampled-bound path and its
// whole-row fallback (ties, sorted and periodic rows), NaN and argument errors
// (outputs must stay untouched).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "core/cpu_features.h"
#include "core/threadpool.h"
#include "cpu/kernels.h"
#include "harness.h"

using namespace kvsq;
using kvsqtest::randint;
using kvsqtest::rng;

namespace {

std::vector<int32_t> ref_topk(const float* s, int n, int k) {
  std::vector<int32_t> id(n);
  std::iota(id.begin(), id.end(), 0);
  std::stable_sort(id.begin(), id.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
  id.resize(std::min(k, n));
  std::sort(id.begin(), id.end());
  return id;
}

enum class Dist { Normal, FewValues, Zeros, WithInf, Sorted, Reversed, Periodic, Constant, Softmaxish };

void fill(float* s, int n, Dist d) {
  const float vals[] = {-1.f, 0.f, 0.5f, 2.f};
  for (int i = 0; i < n; ++i) {
    switch (d) {
      case Dist::Normal: s[i] = kvsqtest::normal(); break;
      case Dist::FewValues: s[i] = vals[randint(0, 3)]; break;
      case Dist::Zeros: {
        int c = randint(0, 9);
        s[i] = c < 4 ? 0.f : c < 8 ? -0.f : kvsqtest::normal();
        break;
      }
      case Dist::WithInf: {
        int c = randint(0, 19);
        s[i] = c == 0 ? INFINITY : c == 1 ? -INFINITY : kvsqtest::normal();
        break;
      }
      case Dist::Sorted: s[i] = float(i) * 0.25f; break;
      case Dist::Reversed: s[i] = float(n - i); break;
      case Dist::Periodic: s[i] = float(i % 64 == 0 ? 100 : i % 64); break;
      case Dist::Constant: s[i] = 3.f; break;
      case Dist::Softmaxish: s[i] = std::exp(4.f * kvsqtest::normal()) * 1e-6f; break;
    }
  }
}

struct Case {
  int rows = 1;
  int64_t row_stride = 0;
  std::vector<float> scores;
  std::vector<int32_t> lengths;  // empty = null
  std::vector<int32_t> k;
  int32_t out_stride = 0;
};

// Runs cpu_topk with the given SIMD mode and checks every row.
void check_case(const Case& c, int simd_mode, bool with_count = true) {
  cpu_features_force(simd_mode);
  std::vector<int32_t> out(size_t(c.rows) * c.out_stride, 12345), count(c.rows, -7);
  TopkArgs a;
  a.rows = c.rows;
  a.row_stride = c.row_stride;
  a.scores = c.scores.data();
  a.lengths = c.lengths.empty() ? nullptr : c.lengths.data();
  a.k = c.k.data();
  a.out_stride = c.out_stride;
  a.out = out.data();
  a.count = with_count ? count.data() : nullptr;
  Status st = cpu_topk(a);
  cpu_features_force(-1);
  CHECK_MSG(st == Status::Ok, status_name(st));
  for (int r = 0; r < c.rows; ++r) {
    int len = c.lengths.empty() ? int(c.row_stride) : c.lengths[r];
    auto ref = ref_topk(c.scores.data() + r * c.row_stride, len, c.k[r]);
    if (with_count) CHECK_EQ(count[r], int32_t(ref.size()));
    else CHECK_EQ(count[r], -7);
    const int32_t* o = out.data() + size_t(r) * c.out_stride;
    for (size_t j = 0; j < ref.size(); ++j)
      CHECK_MSG(o[j] == ref[j], "row " << r << " len " << len << " k " << c.k[r] << " j " << j
                                        << " got " << o[j] << " want " << ref[j] << " simd " << simd_mode);
    for (int j = int(ref.size()); j < c.out_stride; ++j) CHECK_EQ(o[j], -1);
  }
}

void check_both(const Case& c) {
  check_case(c, 1);
  check_case(c, 0);
}

Case uniform_case(int rows, int len, int k, Dist d, int extra_out = 0) {
  Case c;
  c.rows = rows;
  c.row_stride = len;
  c.scores.resize(size_t(rows) * std::max(len, 1));
  for (int r = 0; r < rows; ++r) fill(c.scores.data() + size_t(r) * len, len, d);
  c.k.assign(rows, k);
  c.out_stride = std::max(0, std::min(k, len)) + extra_out;
  return c;
}

}  // namespace

KVSQ_TEST(topk_awkward_sizes_and_k) {
  for (int len : {1, 17, 1000, 4097, 131072}) {
    std::vector<int> ks = {0, 1, len - 1, len, len + 5, randint(1, len), std::max(1, len / 64)};
    for (int k : ks) {
      if (k < 0) continue;
      for (int rows : {1, 3}) {
        Dist d = (k + rows) % 3 == 0 ? Dist::Normal : (k + rows) % 3 == 1 ? Dist::WithInf : Dist::Softmaxish;
        check_both(uniform_case(rows, len, k, d, rows == 3 ? 2 : 0));
      }
    }
  }
}

KVSQ_TEST(topk_ties_zeros_inf) {
  for (int len : {17, 1000, 4097, 50000}) {
    for (Dist d : {Dist::FewValues, Dist::Zeros, Dist::WithInf, Dist::Constant}) {
      for (int k : {1, 7, len / 100 + 1, len / 3, len - 1}) check_both(uniform_case(2, len, k, d));
    }
  }
  // -0.0 and +0.0 tie: the lower index wins whichever sign it has
  Case c;
  c.rows = 2;
  c.row_stride = 6;
  c.scores = {-0.f, 0.f, -1.f, -0.f, 0.f, -INFINITY, 0.f, -0.f, -0.f, -INFINITY, 0.f, 1.f};
  c.k = {2, 3};
  c.out_stride = 4;
  check_both(c);
  std::vector<int32_t> out(8), count(2);
  TopkArgs a;
  a.rows = 2, a.row_stride = 6, a.scores = c.scores.data(), a.k = c.k.data();
  a.out_stride = 4, a.out = out.data(), a.count = count.data();
  CHECK(cpu_topk(a) == Status::Ok);
  CHECK(out == (std::vector<int32_t>{0, 1, -1, -1, 0, 1, 5, -1}));
  // Inf rows: +Inf beats everything, -Inf loses to everything, both ordinary
  std::vector<float> inf = {-INFINITY, INFINITY, 1e38f, -INFINITY, INFINITY};
  std::vector<int32_t> k1 = {3};
  a.rows = 1, a.row_stride = 5, a.scores = inf.data(), a.k = k1.data(), a.out_stride = 4;
  CHECK(cpu_topk(a) == Status::Ok);
  CHECK(out[0] == 1 && out[1] == 2 && out[2] == 4 && out[3] == -1);
}

KVSQ_TEST(topk_sample_fallback_patterns) {
  // Sorted, reversed, periodic and constant rows defeat or stress the sampled
  // bound; the answer must not change.
  for (Dist d : {Dist::Sorted, Dist::Reversed, Dist::Periodic, Dist::Constant, Dist::FewValues}) {
    for (int len : {4096, 65536, 131072}) {
      for (int k : {1, 64, 2048, len / 8, len / 8 + 1}) check_both(uniform_case(1, len, k, d));
    }
  }
}

KVSQ_TEST(topk_ragged_rows) {
  for (int iter = 0; iter < 6; ++iter) {
    Case c;
    c.rows = randint(1, 40);
    c.row_stride = randint(1, 9000);
    c.scores.resize(size_t(c.rows) * c.row_stride);
    c.lengths.resize(c.rows);
    c.k.resize(c.rows);
    int maxkk = 0;
    for (int r = 0; r < c.rows; ++r) {
      int len = randint(0, int(c.row_stride));
      if (r % 7 == 0) len = int(c.row_stride);
      c.lengths[r] = len;
      int k = randint(0, 3) == 0 ? randint(0, len + 10) : randint(0, std::max(1, len / 50));
      c.k[r] = k;
      maxkk = std::max(maxkk, std::min(k, len));
      Dist d = Dist(randint(0, 8));
      fill(c.scores.data() + size_t(r) * c.row_stride, int(c.row_stride), d);
      // garbage (NaN) past the length must be ignored
      for (int64_t i = len; i < c.row_stride; ++i) c.scores[size_t(r) * c.row_stride + i] = NAN;
    }
    c.out_stride = maxkk + randint(0, 3);
    check_both(c);
    check_case(c, 1, /*with_count=*/false);
  }
}

KVSQ_TEST(topk_long_rows_split_across_threads) {
  // Fewer rows than threads: each row is split across the pool.
  for (int threads : {2, 3, 4}) {
    set_pool_threads(threads);
    for (Dist d : {Dist::Normal, Dist::FewValues, Dist::Sorted, Dist::Softmaxish}) {
      for (int k : {0, 1, 2048, 40000, 300000}) check_both(uniform_case(1, 300001, k, d));
    }
    check_both(uniform_case(1, 1 << 20, 2048, Dist::Normal));
    // a few rows of mixed lengths, fewer than the threads when threads > 3
    Case c;
    c.rows = 3;
    c.row_stride = 300001;
    c.scores.resize(size_t(3) * c.row_stride);
    fill(c.scores.data(), int(c.scores.size()), Dist::Softmaxish);
    c.lengths = {300001, 100, 50000};
    c.k = {5000, 7, 50000};
    c.out_stride = 50000;
    check_both(c);
  }
  set_pool_threads(0);
}

KVSQ_TEST(topk_nan_is_an_error_and_writes_nothing) {
  for (int simd : {1, 0}) {
    for (int len : {1, 17, 4097, 131072}) {
      for (int k : {0, 1, 2048, len, len + 1}) {
        for (int rows : {1, 5}) {
          Case c = uniform_case(rows, len, k, Dist::Normal, 1);
          int r = randint(0, rows - 1);
          int pos = randint(0, 2) == 0 ? 0 : randint(0, 2) == 0 ? len - 1 : randint(0, len - 1);
          c.scores[size_t(r) * len + pos] = randint(0, 1) ? NAN : -NAN;
          std::vector<int32_t> out(size_t(rows) * c.out_stride, 777), count(rows, 888);
          TopkArgs a;
          a.rows = rows, a.row_stride = len, a.scores = c.scores.data(), a.k = c.k.data();
          a.out_stride = c.out_stride, a.out = out.data(), a.count = count.data();
          cpu_features_force(simd);
          Status st = cpu_topk(a);
          cpu_features_force(-1);
          CHECK_MSG(st == Status::NaN, "len " << len << " k " << k << " pos " << pos << " got " << status_name(st));
          for (int32_t v : out) CHECK_EQ(v, 777);
          for (int32_t v : count) CHECK_EQ(v, 888);
        }
      }
    }
  }
}

KVSQ_TEST(topk_invalid_arguments_leave_outputs_untouched) {
  std::vector<float> s(4 * 10);
  fill(s.data(), 40, Dist::Normal);
  std::vector<int32_t> lens = {10, 5, 0, 10}, ks = {3, 3, 3, 3};
  std::vector<int32_t> out(4 * 3, 555), count(4, 666);
  auto base = [&] {
    TopkArgs a;
    a.rows = 4, a.row_stride = 10, a.scores = s.data(), a.lengths = lens.data(), a.k = ks.data();
    a.out_stride = 3, a.out = out.data(), a.count = count.data();
    return a;
  };
  auto untouched = [&] {
    for (int32_t v : out) CHECK_EQ(v, 555);
    for (int32_t v : count) CHECK_EQ(v, 666);
  };
  TopkArgs a = base();
  a.rows = -1;
  CHECK(cpu_topk(a) == Status::Shape);
  untouched();
  a = base();
  a.k = nullptr;
  CHECK(cpu_topk(a) == Status::Shape);
  untouched();
  a = base();
  a.scores = nullptr;
  CHECK(cpu_topk(a) == Status::Shape);
  untouched();
  a = base();
  a.out = nullptr;
  CHECK(cpu_topk(a) == Status::Shape);
  untouched();
  a = base();
  a.out_stride = 2;  // < min(k, len) = 3
  CHECK(cpu_topk(a) == Status::Shape);
  untouched();
  a = base();
  a.row_stride = -1;
  CHECK(cpu_topk(a) == Status::Shape);
  untouched();
  a = base();
  a.out_stride = -1;
  CHECK(cpu_topk(a) == Status::Shape);
  untouched();
  ks[2] = -1;
  a = base();
  CHECK(cpu_topk(a) == Status::Range);
  untouched();
  ks[2] = 3;
  lens[3] = 11;  // > row_stride
  a = base();
  CHECK(cpu_topk(a) == Status::Range);
  untouched();
  lens[3] = -2;
  a = base();
  CHECK(cpu_topk(a) == Status::Range);
  untouched();
  lens[3] = 10;
  // rows = 0 is a no-op
  a = base();
  a.rows = 0;
  CHECK(cpu_topk(a) == Status::Ok);
  untouched();
  // lengths null: every row has row_stride elements
  a = base();
  a.lengths = nullptr;
  CHECK(cpu_topk(a) == Status::Ok);
  for (int r = 0; r < 4; ++r) {
    auto ref = ref_topk(s.data() + r * 10, 10, 3);
    CHECK_EQ(count[r], 3);
    for (int j = 0; j < 3; ++j) CHECK_EQ(out[r * 3 + j], ref[j]);
  }
  // all rows empty / k = 0: scores and out may be null when nothing is read or written
  std::vector<int32_t> zl = {0, 0}, zk = {0, 0}, zc = {9, 9};
  TopkArgs e;
  e.rows = 2, e.row_stride = 0, e.lengths = zl.data(), e.k = zk.data(), e.out_stride = 0, e.count = zc.data();
  CHECK(cpu_topk(e) == Status::Ok);
  CHECK(zc[0] == 0 && zc[1] == 0);
}

KVSQ_TEST(topk_sample_overestimate_falls_back) {
  // Mirror of the kernel's sample positions (strided, xorshift jitter): putting
  // large values exactly there makes the sampled bound too high, so fewer than
  // k candidates survive and the whole-row fallback must give the answer. (If
  // the sampling scheme changes this is still a valid test, only less pointed.)
  for (int n : {131072, 300001}) {
    const int k = 2048;
    const double p = double(k) / n;
    int64_t ns = std::max<int64_t>(1024, int64_t(std::ceil(16.0 / p)));
    ns = std::min<int64_t>(ns, n / 4);
    const int64_t block = n / ns;
    std::vector<float> s(n, 0.f);
    for (int i = 0; i < n; ++i) s[i] = randint(0, 1) ? 0.f : -0.f;
    uint32_t h = 0x9e3779b9u;
    for (int64_t i = 0; i < ns; ++i) {
      h ^= h << 13;
      h ^= h >> 17;
      h ^= h << 5;
      s[i * block + int64_t(h % uint32_t(block))] = 1.f + float(i % 3);
    }
    Case c;
    c.rows = 1, c.row_stride = n, c.scores = s, c.k = {k}, c.out_stride = k;
    check_both(c);
    c.rows = 3;
    c.scores.clear();
    for (int r = 0; r < 3; ++r) c.scores.insert(c.scores.end(), s.begin(), s.end());
    c.k = {k, k / 2, k * 3};
    c.out_stride = k * 3;
    check_both(c);
  }
}
