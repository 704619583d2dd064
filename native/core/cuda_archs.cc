// See cuda_archs.h.
#include "cuda_archs.h"

#include <cctype>

namespace kvsq {

bool cuda_archs_run_on(const std::string& archs, int major, int minor, std::string* why) {
  const int cc = major * 10 + minor;
  size_t i = 0;
  while (i < archs.size()) {
    size_t j = archs.find_first_of(",;", i);
    if (j == std::string::npos) j = archs.size();
    std::string item = archs.substr(i, j - i);
    i = j + 1;
    // digits, an optional arch-specific letter, an optional -real / -virtual
    size_t d = 0;
    while (d < item.size() && std::isdigit(static_cast<unsigned char>(item[d]))) ++d;
    if (d == 0 || d > 4) continue;  // not an architecture
    const int a = std::stoi(item.substr(0, d));
    const bool specific = d < item.size() && std::isalpha(static_cast<unsigned char>(item[d]));
    // "-real": SASS only; "-virtual": PTX only; neither: both
    const bool sass = item.find("-virtual") == std::string::npos, ptx = item.find("-real") == std::string::npos;
    if (specific) {
      if (a == cc) return true;
      continue;
    }
    if (sass && a / 10 == major && a % 10 <= minor) return true;
    if (ptx && a <= cc) return true;
  }
  if (why)
    *why = "this build has CUDA code for " + (archs.empty() ? std::string("no architecture") : archs) +
           ", none of which runs on compute capability " + std::to_string(major) + "." + std::to_string(minor) +
           " (rebuild on this machine: npm install from source builds for its GPUs, or set KVSQ_CUDA_ARCHS)";
  return false;
}

}  // namespace kvsq
