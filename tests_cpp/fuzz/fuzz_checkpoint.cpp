// libFuzzer target: the NSGA-II checkpoint loader. The input is written as the
// checkpoint of a fixed small search, which then resumes from it (or refuses
// it with a FormatError / ValueError).
#include <unistd.h>

#include <cstdio>

#include "fuzz_common.hpp"
#include "tests_cpp_fuzz_problem.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const empas::Problem p = fuzz::small_problem();
  static const std::string path = "/tmp/empas_fuzz_ck." + std::to_string(::getpid()) + ".json";
  {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return 0;
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  empas::NSGA2Config c;
  c.pop_size = 8;
  c.generations = 3;
  c.threads = 1;
  c.checkpoint_path = path;
  try {
    (void)empas::run_nsga2(p, c);
  } catch (const empas::ValueError&) {
  }
  std::remove(path.c_str());
  return 0;
}
