// A stand-in for libFuzzer's main when building with gcc: runs the target over every file of the
// corpus directories given, then over deterministic mutations of them and random inputs, so the
// ordinary test build keeps the targets compiling and replays their corpus.
//   fuzz-driver-NAME [--iterations N] [--seed S] DIR_OR_FILE...
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  long iterations = 20000;
  uint64_t seed = 1;
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--iterations" && i + 1 < argc) iterations = std::atol(argv[++i]);
    else if (a == "--seed" && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else inputs.push_back(a);
  }
  std::vector<std::string> corpus;
  for (const auto& in : inputs) {
    std::vector<fs::path> files;
    if (fs::is_directory(in)) {
      for (const auto& e : fs::directory_iterator(in)) files.push_back(e.path());
    } else if (fs::exists(in)) {
      files.push_back(in);
    }
    for (const auto& f : files) {
      std::ifstream s(f, std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(s), std::istreambuf_iterator<char>());
    }
  }
  for (const auto& c : corpus) LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(c.data()), c.size());
  std::mt19937_64 rng(seed);
  for (long n = 0; n < iterations; ++n) {
    std::string buf;
    if (!corpus.empty() && rng() % 4 != 0) {
      buf = corpus[rng() % corpus.size()];
      int flips = 1 + static_cast<int>(rng() % 8);
      for (int k = 0; k < flips && !buf.empty(); ++k) {
        switch (rng() % 3) {
          case 0: buf[rng() % buf.size()] = static_cast<char>(rng()); break;
          case 1: buf.resize(rng() % (buf.size() + 1)); break;
          default: buf.insert(buf.begin() + static_cast<long>(rng() % (buf.size() + 1)), static_cast<char>(rng()));
        }
      }
    } else {
      buf.resize(rng() % 512);
      for (auto& ch : buf) ch = static_cast<char>(rng());
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(buf.data()), buf.size());
  }
  std::printf("fuzz driver: %zu corpus inputs and %ld generated inputs ran without a crash (seed %llu)\n",
              corpus.size(), iterations, static_cast<unsigned long long>(seed));
  return 0;
}
