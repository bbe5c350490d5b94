# The RPC and event envelopes of DESIGN §3. A call is one ZeroMQ frame: a RequestHeader message
# immediately followed by the payload message (a whole Cap'n Proto flat-array message, unpacked, of
# the method's own schema; nothing when the call has none). A reply is one frame: ReplyHeader, then
# the results. Cap'n Proto messages say where they end, so no lengths are needed. One ZeroMQ
# message may carry several calls, one frame each (a batch); the server answers a batch with one
# message of reply frames. A ROUTER adds the peer's routing id in front.
@0xd6b2a1c3e4f50617;

$import "/capnp/c++.capnp".namespace("djinn::proto");

# Same numbers as djinn::Code (core/include/djinn/core/status.h). Never renumber.
enum StatusCode {
  ok @0;
  cancelled @1;
  unknown @2;
  invalidArgument @3;
  deadlineExceeded @4;
  notFound @5;
  alreadyExists @6;
  permissionDenied @7;
  resourceExhausted @8;
  failedPrecondition @9;
  aborted @10;
  outOfRange @11;
  unimplemented @12;
  internal @13;
  unavailable @14;
  dataLoss @15;
  unauthenticated @16;
}

# Filled by the client.
struct RequestHeader {
  id @0 :UInt64;               # chosen by the client, unique among its calls in flight; echoed in the reply
  method @1 :Text;             # "part.verb", e.g. "lease.grant"
  timeoutMicros @2 :UInt64;    # time left until the caller's deadline when sent; 0 = none
  idempotent @3 :Bool;         # the method may be applied twice without harm (safe to retry)
  idempotencyKey @4 :Data;     # optional; the server answers a repeated key with the first reply
}

# Filled by the server.
struct ReplyHeader {
  id @0 :UInt64;               # the request's id; 0 when the request header could not be read
  status @1 :StatusCode;
  message @2 :Text;            # empty when ok; otherwise what was wrong and what to do
}

# Events: a ZeroMQ multipart message [topic][header][payload] on a PUB socket. The topic is
# "<kind>/<key>" so a subscriber can filter by kind ("<kind>/") or by kind and key.
struct EventHeader {
  kind @0 :Text;
  key @1 :Text;
  seq @2 :UInt64;              # per publisher and kind, from 1, no gaps unless dropped in transit
  incarnation @3 :UInt64;      # random per publisher start; a change means the sequence restarted
  heartbeat @4 :Bool;          # no payload: says the last seq of this kind, so a drop at the tail shows
  timeMicros @5 :UInt64;       # publisher's wall clock, for display
}
