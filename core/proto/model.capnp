# The data model of DESIGN §2 on the wire: ids, values, entries, templates, service items and
# service templates. Every service that stores or matches entries (lookup, space, runtime) speaks
# these structs; core/include/djinn/core/model_capnp.h converts them to and from djinn:: types and
# validates what it reads.
@0xb1e033f55759a39c;

$import "/capnp/c++.capnp".namespace("djinn::proto");

# A 128-bit id (ServiceID, AppID, NodeID). The two halves are the id's 16 bytes read big-endian,
# so (hi, lo) order is the order of the canonical text. All zero = nil, which names nothing.
struct Uuid {
  hi @0 :UInt64;               # bytes 0..7 of the id
  lo @1 :UInt64;               # bytes 8..15 of the id
}

# One typed value. Equality is by kind and value: int 1 and float 1.0 differ.
struct Value {
  union {
    none @0 :Void;             # null; in a template field, a wildcard
    bool @1 :Bool;
    int @2 :Int64;
    float @3 :Float64;         # compared by bit pattern (a NaN equals the same NaN)
    text @4 :Text;             # UTF-8, at most 64 KiB
    bytes @5 :Data;            # at most 1 MiB; larger content goes in space chunks by hash
    uuid @6 :Uuid;
  }
}

# A named field of an entry or a template. Names are identifiers ([A-Za-z_][A-Za-z0-9_]*), unique
# within their entry or template; a reader rejects a repeated name.
struct Field {
  name @0 :Text;
  value @1 :Value;
}

# A typed record: a service attribute (filled by the service that registers) or a space entry
# (filled by the writer).
struct Entry {
  type @0 :Text;               # dotted identifier, e.g. "djinn.attr.Location"
  supertypes @1 :List(Text);   # every other type this entry is a kind of; a template of any of
                               # them matches it
  fields @2 :List(Field);      # in any order on the wire; kept sorted by name in memory
}

# A pattern over entries, filled by whoever queries (lookup client, space reader, notify).
struct Template {
  type @0 :Text;               # the entry's type or one of its supertypes; empty = any type
  fields @1 :List(Field);      # each non-null field must be present in the entry and equal; a
                               # null field (or one left out) is a wildcard
}

# Where a service is reached: ZeroMQ endpoints, filled by the service (or its node) when it
# registers. Empty = the service offers no such socket.
struct Endpoints {
  rpc @0 :Text;                # ROUTER endpoint, e.g. "tcp://10.0.0.2:7001"
  events @1 :Text;             # PUB endpoint of its events
}

# The registration lease, filled by the lookup service that granted it; zero before a grant.
struct LeaseInfo {
  id @0 :UInt64;               # the landlord's lease id
  expirationMillis @1 :Int64;  # unix time in ms when the registration lapses unless renewed
}

# A registered service, as the lookup service stores and returns it. Filled by the registering
# service except `lease`, which the lookup service fills.
struct ServiceItem {
  serviceId @0 :Uuid;          # the service's id for life (an app keeps it across migrations);
                               # never nil
  interfaceTypes @1 :List(Text); # every interface it implements, supertypes included
  attributes @2 :List(Entry);  # descriptive entries (location, name, capacity, ...)
  endpoints @3 :Endpoints;
  publicKey @4 :Text;          # CURVE public key, Z85 (40 characters); empty when CURVE is off
  lease @5 :LeaseInfo;
}

# A lookup query, filled by the client. An item matches when every given part matches.
struct ServiceTemplate {
  serviceId @0 :Uuid;          # left unset (null pointer) = any service; when set, never nil
  interfaceTypes @1 :List(Text); # the item must implement all of them
  attributes @2 :List(Template); # each must match at least one of the item's attributes
}
