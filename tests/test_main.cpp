// The doctest main shared by every test executable; prints the random seed so a failure replays.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "support/test_support.h"

int main(int argc, char** argv) {
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  djinn::test::init_seed();
  return context.run();
}
