// Types that cannot live in a heap are refused at compile time: small programs that put a
// polymorphic type, a raw pointer, a std::vector and a std::string into a heap through
// Objects::root/make are compiled (syntax only) with the same compiler and must fail with
// HeapStorable's message, while the same program with a heap container compiles. Slow: each
// compile parses Boost.Interprocess.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "support/test_support.h"

using namespace djinn;

namespace {

struct Outcome {
  int exit_code = -1;
  std::string output;
};

// Compiles `body` inside a main() that has an Objects& named `objects`.
Outcome compile(const test::TempDir& dir, const std::string& name, const std::string& body) {
  const std::filesystem::path root = std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
  const std::string file = dir.file(name + ".cpp");
  std::ofstream(file) << "#include <string>\n#include <vector>\n#include \"djinn/heapstore/heap_objects.h\"\n"
                         "using namespace djinn::heapstore;\n"
                         "struct Polymorphic { virtual ~Polymorphic() = default; };\n"
                         "void f(Objects& objects) {\n"
                      << body << "\n}\nint main() {}\n";
  const char* cxx = std::getenv("CXX");
  std::string command = std::string(cxx && *cxx ? cxx : "c++") + " -std=c++20 -fsyntax-only -I" +
                        (root / "heapstore/include").string() + " -I" + (root / "core/include").string() + " " +
                        file + " 2>&1";
  Outcome out;
  FILE* p = ::popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.output.append(buf, n);
  int status = ::pclose(p);
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

}  // namespace

TEST_CASE("putting a type that cannot live in a heap into one does not compile") {
  test::TempDir dir;
  Outcome ok = compile(dir, "control", "  objects.root<HeapVector<int>>(\"v\", objects.allocator<int>());");
  REQUIRE_MESSAGE(ok.exit_code == 0, "the control program must compile:\n", ok.output);

  const std::pair<const char*, const char*> refused[] = {
      {"polymorphic", "  objects.root<Polymorphic>(\"p\");"},
      {"raw_pointer", "  objects.root<int*>(\"p\", nullptr);"},
      {"std_vector", "  objects.root<std::vector<int>>(\"v\");"},
      {"std_string", "  objects.make<std::string>(\"text\");"},
  };
  for (const auto& [name, body] : refused) {
    INFO("case ", name);
    Outcome out = compile(dir, name, body);
    CHECK(out.exit_code != 0);
    CHECK_MESSAGE(out.output.find("cannot live in a heap") != std::string::npos, out.output.substr(0, 2000));
  }
}
