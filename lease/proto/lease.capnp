# The lease protocol (DESIGN §4): the methods every landlord serves ("lease.*", the same on the
# lease manager, lookup and the space, so a client or the renewal service renews any lease the same
# way), the renewal service of djinn-lease ("renewal.*"), and the events.
@0xb649c728b613a33d;

$import "/capnp/c++.capnp".namespace("djinn::proto");

enum LeaseKind {
  shared @0;
  exclusive @1;
  interest @2;         # compact level: no copy
  sharedCopy @3;       # compact level
  exclusiveCopy @4;    # compact level
}

# A lease as the landlord reports it.
struct Lease {
  id @0 :UInt64;
  resource @1 :Text;
  holder @2 :Text;
  kind @3 :LeaseKind;
  expirationMs @4 :Int64;   # Unix ms; 9223372036854775807 = never (FOREVER)
  grantedMs @5 :Int64;      # duration granted by the last grant or renewal
  landlord @6 :Text;        # the landlord's RPC endpoint, so the holder knows where to renew
  ref @7 :UInt64;           # events only: lease_ref(id), the lease's public reference; an event
                            # carries it with id 0, since the id lets whoever knows it renew or
                            # cancel the lease (0 elsewhere)
}

# Requested durations: > 0 ms, or -1 = ANY (the landlord chooses), -2 = FOREVER (where allowed).

# lease.grant
struct GrantParams {
  resource @0 :Text;        # the landlord's name for the thing leased (<= its policy's size limit)
  holder @1 :Text;          # who holds it: a ServiceID, an AppID, a client's name
  kind @2 :LeaseKind;
  durationMs @3 :Int64;
  waitMs @4 :Int64;         # > 0: a conflicting request waits this long for the resource
}
struct LeaseResult {
  lease @0 :Lease;
}

# lease.renew
struct RenewParams {
  id @0 :UInt64;
  durationMs @1 :Int64;
}

# lease.cancel, lease.get
struct LeaseIdParams {
  id @0 :UInt64;
}

# The results of lease.cancel, renewal.add and renewal.remove: the status says it all.
struct Empty {}

# lease.renewBatch: one durable write for all; each item succeeds or fails on its own.
struct RenewBatchParams {
  items @0 :List(RenewParams);
}
struct ItemResult {
  code @0 :UInt16;          # djinn::Code; 0 = ok
  message @1 :Text;
  lease @2 :Lease;          # when ok (renewals)
}
struct BatchResults {
  items @0 :List(ItemResult);  # same order as the request
}

# lease.cancelBatch
struct CancelBatchParams {
  ids @0 :List(UInt64);
}

# lease.holderLeases, lease.resourceLeases (lease.cancelHolder: CancelHolderParams). A reply holds
# the leases in id order, as many as fit in 8 MiB (at least one); LeaseList.more says whether
# there are more: ask again with afterId = the last id listed.
struct HolderParams {
  holder @0 :Text;
  afterId @1 :UInt64;       # only leases with larger ids (0: from the first); set by the client
}
# lease.cancelHolder: graceMs 0 cancels the holder's leases at once; graceMs > 0 ends each of them
# within that many ms instead (a migration's step 5: the holder's new node grants them again
# meanwhile). Its first field is HolderParams's, so a HolderParams without afterId is read as
# graceMs 0.
struct CancelHolderParams {
  holder @0 :Text;
  graceMs @1 :Int64;
}
struct ResourceParams {
  resource @0 :Text;
  afterId @1 :UInt64;       # as in HolderParams
}
struct LeaseList {
  leases @0 :List(Lease);
  eventSeq @1 :UInt64;      # the last event number of the lease kinds when the list was taken
                            # (the sum over the five kinds: it moves whenever any of them does)
  kindSeqs @2 :List(KindSeq);  # the same, kind by kind, read before the list was taken: events
                            # numbered above these may or may not be reflected in `leases`
  more @3 :Bool;            # set by the landlord when `leases` stops at the reply's size (8 MiB):
                            # holderLeases, resourceLeases: ask again after the last id listed;
                            # cancelHolder: the leases beyond were ended too, but are not listed
  total @4 :UInt64;         # set by the landlord: the leases it found (the lists: on every page
                            # together, as this page was read) or ended (cancelHolder); 0 from a
                            # landlord that predates it (count `leases`)
}
struct KindSeq {
  kind @0 :Text;            # "lease.granted", ...
  seq @1 :UInt64;           # Publisher::last_seq of that kind
}

# Events, published with kind "lease.granted" | "lease.renewed" | "lease.cancelled" |
# "lease.expired" | "lease.conflict" and key = the lease's holder. Every subscriber admitted to the
# event socket reads them, so the lease in them has id 0 and its ref set.
struct LeaseEvent {
  lease @0 :Lease;
  requestedBy @1 :Text;     # conflict only: who asked
  requestedKind @2 :LeaseKind;
}

# The renewal service (djinn-lease): a client hands over leases (held at any landlord) to be kept
# renewed until a time; the set itself is leased from the service.
# renewal.create
struct CreateSetParams {
  holder @0 :Text;
  durationMs @1 :Int64;     # the lease on the set
}
struct SetResult {
  setId @0 :UInt64;         # random: whoever knows it may add, remove and list the set's members
  setLease @1 :Lease;       # renew it (lease.renew at this service) or the set is dropped
}
# renewal.add: keep `lease` renewed (by `renewMs` per renewal) until `untilMs` (Unix ms).
struct AddParams {
  setId @0 :UInt64;
  lease @1 :Lease;          # its landlord endpoint and id are what the service renews
  renewMs @2 :Int64;
  untilMs @3 :Int64;
}
# renewal.remove
struct RemoveParams {
  setId @0 :UInt64;
  leaseId @1 :UInt64;
  landlord @2 :Text;
}
# renewal.members: the leases of a set as last renewed (a LeaseList; eventSeq is that of
# "renewal.failed").
struct SetIdParams {
  setId @0 :UInt64;
  # renewal.members lists a set's members in (landlord, lease id) order, a page of at most 8 MiB
  # (LeaseList.more set when it stops there): ask again after the last member listed.
  afterLandlord @1 :Text;      # empty: from the first member
  afterLeaseId @2 :UInt64;
}
# Event kind "renewal.failed", key = the set's ref in 16 hex digits (public_ref_hex of its id): a
# lease could not be renewed. Set ids are capabilities, like lease ids: the event names neither.
struct RenewalFailure {
  setId @0 :UInt64;         # 0 (a service of an earlier release sent the id)
  lease @1 :Lease;          # id 0, ref set
  code @2 :UInt16;
  message @3 :Text;
  setRef @4 :UInt64;        # public_ref(set id)
}
