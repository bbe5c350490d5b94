# Discovery (DESIGN §5): the UDP multicast fallback's packets, and the djinn-discovery service for
# clients that cannot discover lookup services themselves. Avahi DNS-SD carries the same facts as
# an Announcement in TXT records (docs/discovery.md).
@0xc4e2b7a9135f0d6e;

$import "/capnp/c++.capnp".namespace("djinn::proto");

using Model = import "/djinn/proto/model.capnp";

# --- Multicast: every datagram to 239.255.41.60 UDP 4160 is one unpacked Cap'n Proto message
# (a single segment, at most 4096 bytes) whose root is a DiscoveryPacket.

struct DiscoveryPacket {
  version @0 :UInt16;            # 1; a receiver ignores packets of any other version
  union {
    request @1 :DiscoveryRequest;
    announcement @2 :LookupAnnouncement;
  }
}

# Sent by a client to the group: "which lookups serve these groups?". Each matching lookup that is
# not in `known` answers with its LookupAnnouncement by unicast UDP to the request's source address
# and port.
struct DiscoveryRequest {
  groups @0 :List(Text);         # wanted groups; empty: every group
  known @1 :List(Model.Uuid);    # lookups the client knows already: they stay quiet
}

# Sent by a lookup service to the group at its interval, and by unicast in answer to a request.
struct LookupAnnouncement {
  serviceId @0 :Model.Uuid;      # the lookup's ServiceID (its registrar's own item)
  groups @1 :List(Text);         # the groups it serves
  rpcPort @2 :UInt16;            # its registrar's RPC port (lookup.* and lease.*)
  eventsPort @3 :UInt16;         # its event port (0: not said)
  host @4 :Text;                 # the address to dial; empty: the datagram's source address
  name @5 :Text;                 # its djinn.attr.Name, for people
  intervalMs @6 :UInt32;         # how often it announces (0: it does not), so silence can be judged
  leaving @7 :Bool;              # its last announcement: it is stopping
}

# --- djinn-discovery: interest registrations ("discovery.*" over RPC) and their events.

struct DiscoveredLookup {
  serviceId @0 :Model.Uuid;
  rpc @1 :Text;                  # the registrar's RPC endpoint as the discovery service dials it
  events @2 :Text;               # its event endpoint (empty: unknown)
  groups @3 :List(Text);
  name @4 :Text;
  via @5 :Text;                  # "avahi", "multicast" or "unicast": how it was first found
}

# discovery.register: interest in lookups of some groups, for durationMs (> 0); renewed with
# discovery.renew, dropped with discovery.cancel or when it expires. Events of kind
# "discovery.interest.<ref>" (16 hex digits of public_ref(id): the id, drawn at random, lets whoever
# knows it renew or cancel the interest) follow on the service's event socket, numbered from
# eventSeq on.
struct RegisterInterestParams {
  groups @0 :List(Text);         # empty: every group
  durationMs @1 :Int64;
}
struct RegisterInterestResult {
  id @0 :UInt64;
  eventKind @1 :Text;
  eventsEndpoint @2 :Text;
  expirationMs @3 :Int64;        # wall-clock ms since the epoch
  lookups @4 :List(DiscoveredLookup);  # what is discovered now (the snapshot)
  eventSeq @5 :UInt64;           # the event stream's number at the snapshot
}

struct RenewInterestParams {
  id @0 :UInt64;
  durationMs @1 :Int64;
}
struct RenewInterestResult {
  expirationMs @0 :Int64;
}

struct CancelInterestParams {
  id @0 :UInt64;
}

# discovery.snapshot: the lookups discovered now for an interest, to re-sync after a gap.
struct SnapshotParams {
  id @0 :UInt64;
}
struct SnapshotResult {
  lookups @0 :List(DiscoveredLookup);
  eventSeq @1 :UInt64;
}

# The payload of a "discovery.interest.<ref>" event (key: the lookup's ServiceID).
struct DiscoveryEvent {
  discarded @0 :Bool;            # false: discovered
  lookup @1 :DiscoveredLookup;
}
