# The echo service's messages.
@0x9f246ebeba02b6de;

$import "/capnp/c++.capnp".namespace("djinn::examples");

struct EchoParams {
  text @0 :Text;            # returned as is
  blob @1 :Data;            # returned as is
  sleepMillis @2 :UInt32;   # echo.slow only: how long the handler blocks before replying
}

struct EchoResults {
  text @0 :Text;
  blob @1 :Data;
  served @2 :UInt64;        # calls this server has answered so far
}

# echo.depth walks this chain and returns its length: a way to show the nesting limit at work.
struct Chain {
  next @0 :Chain;
}

struct DepthResults {
  depth @0 :UInt32;
}
