// Writes the checkpoint seeds of fuzz_checkpoint (real checkpoints of its fixed
// problem at generations 1 and 2) into the directory given as argv[1].
#include <string>

#include "empas/nsga2.hpp"
#include "tests_cpp_fuzz_problem.hpp"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const empas::Problem p = fuzz::small_problem();
  for (int g : {1, 2}) {
    empas::NSGA2Config c;
    c.pop_size = 8;
    c.generations = g;
    c.threads = 1;
    c.checkpoint_every = 1;
    c.checkpoint_path = std::string(argv[1]) + "/gen" + std::to_string(g) + ".json";
    (void)empas::run_nsga2(p, c);
  }
  return 0;
}
