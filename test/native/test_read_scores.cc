// read_scores: flat copy of each list's slot scores, against a plain loop
// over the page tables. Tolerance: exact (a copy).
#include <algorithm>
#include <numeric>
#include <vector>

#include "cpu/kernels.h"
#include "harness.h"

using namespace kvsq;

KVSQ_TEST(read_scores_vs_reference) {
  for (int P : {1, 7, 16}) {
    const int lists = kvsqtest::randint(1, 9);
    std::vector<int32_t> len(lists), indptr(lists + 1, 0);
    for (int l = 0; l < lists; ++l) {
      const int choices[] = {0, 1, 17, 1000, 4097};
      len[l] = choices[kvsqtest::randint(0, 4)];
      indptr[l + 1] = indptr[l] + (len[l] + P - 1) / P + kvsqtest::randint(0, 2);  // spare pages allowed
    }
    const int64_t N = indptr[lists] + 5;
    std::vector<int32_t> ids(indptr[lists]);
    std::vector<int32_t> perm(N);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), kvsqtest::rng());
    std::copy(perm.begin(), perm.begin() + ids.size(), ids.begin());
    std::vector<float> pool(size_t(N) * P);
    for (auto& x : pool) x = kvsqtest::uniform();
    const int64_t total = std::accumulate(len.begin(), len.end(), int64_t(0));
    std::vector<float> out(size_t(total) + 1, -7.f);
    ReadScoresArgs a;
    a.lists = lists;
    a.page_size = P;
    a.num_pages = N;
    a.score_pool = pool.data();
    a.page_indptr = indptr.data();
    a.page_ids = ids.data();
    a.kv_len = len.data();
    a.out = out.data();
    CHECK(cpu_read_scores(a) == Status::Ok);
    int64_t o = 0;
    for (int l = 0; l < lists; ++l)
      for (int s = 0; s < len[l]; ++s) CHECK_EQ(out[o++], pool[size_t(ids[indptr[l] + s / P]) * P + s % P]);
    CHECK_EQ(out[total], -7.f);  // nothing written past the end
    // write_back restores: scale the flat copy, write it back, read it again
    if (total == 0) continue;  // every list empty: nothing to restore (and no buffer to point at)
    std::vector<float> back(out.begin(), out.begin() + total), again(size_t(total) + 1, -7.f);
    for (auto& x : back) x = x * 2.f + 1.f;
    std::vector<float> before_pool = pool;
    ReadScoresArgs w = a;
    w.write_back = true;
    w.in = back.data();
    w.out = nullptr;
    CHECK(cpu_read_scores(w) == Status::Ok);
    a.out = again.data();
    CHECK(cpu_read_scores(a) == Status::Ok);
    for (int64_t i = 0; i < total; ++i) CHECK_EQ(again[i], back[i]);
    // slots outside the lists' lengths keep their values
    size_t changed = 0;
    for (size_t i = 0; i < pool.size(); ++i) changed += pool[i] != before_pool[i];
    CHECK_EQ(int64_t(changed), total);
  }
}

KVSQ_TEST(read_scores_invalid_args_write_nothing) {
  const int P = 4;
  std::vector<int32_t> len = {5}, indptr = {0, 2}, ids = {0, 1};
  std::vector<float> pool(2 * P, 1.f), out(8, -7.f);
  ReadScoresArgs a;
  a.lists = 1;
  a.page_size = P;
  a.num_pages = 2;
  a.score_pool = pool.data();
  a.page_indptr = indptr.data();
  a.page_ids = ids.data();
  a.kv_len = len.data();
  a.out = out.data();
  ids[1] = 2;  // page out of the pool
  CHECK(cpu_read_scores(a) == Status::Range);
  ids[1] = 1;
  len[0] = 9;  // more slots than the list's pages hold
  CHECK(cpu_read_scores(a) == Status::Range);
  len[0] = -1;
  CHECK(cpu_read_scores(a) == Status::Range);
  a.page_size = 0;
  CHECK(cpu_read_scores(a) == Status::Shape);
  for (float x : out) CHECK_EQ(x, -7.f);
}
