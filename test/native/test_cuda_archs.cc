// cuda_archs_run_on against CUDA's compatibility rules, on the lists the
// builds use (the prebuild's, the development default, the local-GPU pick)
// and on hand-made edge cases. Pure string logic: runs in every build.
#include <string>

#include "core/cuda_archs.h"
#include "harness.h"

using kvsq::cuda_archs_run_on;

namespace {
bool runs(const char* archs, int major, int minor) { return cuda_archs_run_on(archs, major, minor, nullptr); }
}  // namespace

KVSQ_TEST(cuda_archs_compatibility_rules) {
  // the prebuild: SASS 80/86/89/90a + PTX 90
  const char* pre = "80-real,86-real,89-real,90a-real,90-virtual";
  CHECK(runs(pre, 8, 0) && runs(pre, 8, 6) && runs(pre, 8, 7) && runs(pre, 8, 9) && runs(pre, 9, 0));
  CHECK(runs(pre, 10, 0) && runs(pre, 12, 0));  // newer GPUs: the driver compiles the PTX
  CHECK(!runs(pre, 7, 5) && !runs(pre, 7, 0));
  // "90" is SASS and PTX; SASS alone runs within its major only, from its minor up
  CHECK(runs("90", 9, 0) && runs("90", 10, 0) && !runs("90", 8, 0) && !runs("90", 8, 9));
  CHECK(runs("90-real", 9, 0) && !runs("90-real", 10, 0));
  CHECK(runs("80-real", 8, 6) && runs("80-real", 8, 9) && !runs("86-real", 8, 0) && !runs("80-real", 9, 0));
  CHECK(runs("86-virtual", 8, 9) && runs("86-virtual", 9, 0) && !runs("86-virtual", 8, 0));
  // the local pick: one SASS per GPU kind and PTX for the newest; ';' separated too
  CHECK(runs("80-real;86-real;86-virtual", 8, 0) && runs("80-real;86-real;86-virtual", 12, 0));
  // the development default and a 9.0 GPU's local pick: 90a SASS + PTX 90
  CHECK(runs("90a-real;90-virtual", 9, 0) && runs("90a-real;90-virtual", 10, 0) && !runs("90a-real;90-virtual", 8, 9));
  // arch-specific code runs on exactly its capability
  CHECK(runs("90a-real", 9, 0) && !runs("90a-real", 10, 0) && !runs("90a", 9, 1));
  // nothing usable: false, and the reason names the list and the capability
  std::string why;
  CHECK(!cuda_archs_run_on("90", 8, 0, &why));
  CHECK_MSG(why.find("90") != std::string::npos && why.find("8.0") != std::string::npos, why);
  CHECK(!cuda_archs_run_on("", 9, 0, &why));
  CHECK(!cuda_archs_run_on(",;junk", 9, 0, &why));
}
