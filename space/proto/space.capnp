# The object space protocol (DESIGN §6): entries ("space.*"), large values as content-addressed
# chunks ("space.putChunk" ...), the 2PC participant side ("participant.*") and the transaction
# manager ("txn.*"). Entry leases are renewed and cancelled with the lease protocol ("lease.*" of
# lease/proto/lease.capnp) on the same port.
@0x960e5866d4e81ac0;

$import "/capnp/c++.capnp".namespace("djinn::proto");

using Model = import "/djinn/proto/model.capnp";

# A transaction an operation runs under, filled by the client from txn.create's answer. An unset
# (null) txn, or a nil id, means no transaction.
struct TxnRef {
  id @0 :Model.Uuid;           # the transaction's id (random, never reused)
  manager @1 :Text;            # RPC endpoint of its manager; the space joins the transaction there
}

# space.write: stores an entry under a lease (renew and cancel it with lease.*).
struct WriteParams {
  entry @0 :Model.Entry;
  durationMs @1 :Int64;        # the entry's lease: > 0 ms, or -1 = ANY
  txn @2 :TxnRef;              # under a transaction: visible to it alone until it commits
  holder @3 :Text;             # the holder of its lease (lease.holderLeases and lease.cancelHolder
                               # find it by it: an application's entries); empty: the entry's type
}
struct WriteResult {
  lease @0 :Model.LeaseInfo;   # the entry's lease
  landlord @1 :Text;           # where to renew or cancel it
  grantedMs @2 :Int64;         # the lease's granted duration (0: not known, as for a keyed resend)
}

# space.writeMany: several entries in one durable transaction (JavaSpace05's write of a list),
# each written or refused on its own, all with the same lease duration, transaction and holder.
struct WriteManyParams {
  entries @0 :List(Model.Entry);   # 1..1,000
  durationMs @1 :Int64;
  txn @2 :TxnRef;
  holder @3 :Text;
}
struct WriteManyItem {
  code @0 :UInt16;                 # djinn::Code; 0 = written
  message @1 :Text;
  lease @2 :Model.LeaseInfo;       # when written
  grantedMs @3 :Int64;             # the lease's granted duration (0: not known)
}
struct WriteManyResult {
  items @0 :List(WriteManyItem);   # in the order of the entries
  landlord @1 :Text;               # where to renew or cancel their leases
}

# space.read, space.take, space.readIfExists, space.takeIfExists, space.takeMany.
struct MatchParams {
  template @0 :Model.Template;
  timeoutMs @1 :Int64;         # read/take/takeMany: how long to wait for a match (0: do not
                               # wait; at most 24 h); ignored by the IfExists forms
  txn @2 :TxnRef;
  maxEntries @3 :UInt32;       # takeMany only: at most this many (1..10,000)
}
struct MatchResult {
  entries @0 :List(Model.Entry);  # empty: nothing matched before the timeout
}

# space.contents: iterates every entry matching a template, in write order, a page at a time.
struct ContentsParams {
  template @0 :Model.Template;
  cursor @1 :UInt64;           # 0 to start; then the cursor of the previous page
  maxEntries @2 :UInt32;       # page size, 1..10,000
  txn @3 :TxnRef;
}
struct ContentsResult {
  entries @0 :List(Model.Entry);  # may be fewer than asked, or none, before done: a page walks a bounded slice
  cursor @1 :UInt64;           # pass it back for the next page
  done @2 :Bool;               # no entry after this page matched when it was read
}

# space.notify: an event for each entry matching the template that becomes visible (a write, or
# the commit of a transaction that wrote it), leased like any grant.
struct SpaceNotifyParams {
  template @0 :Model.Template;
  durationMs @1 :Int64;        # > 0 ms, or -1 = ANY
  holder @2 :Text;             # who registers (for lease queries); may be empty
}
struct SpaceNotifyResult {
  id @0 :UInt64;               # the registration = its lease id
  expirationMs @1 :Int64;
  eventKind @2 :Text;          # "space.notify.<ref>": 16 hex digits of lease_ref(id), never the
                               # id, which lets whoever knows it cancel the registration
  eventsEndpoint @3 :Text;
  landlord @4 :Text;
}
# The payload of a "space.notify.<ref>" event, the same for every registration the entry goes to
# (the event's kind names the registration); the event's own sequence number numbers it.
struct SpaceNotifyEvent {
  notifyId @0 :UInt64;         # 0 (a space of an earlier release sent the id)
  entry @1 :Model.Entry;
}

# space.stats: what the space holds.
struct StatsParams {}
struct StatsResult {
  entries @0 :UInt64;
  values @1 :UInt64;           # value manifests stored
  chunks @2 :UInt64;
  chunkBytes @3 :UInt64;       # bytes of chunk content stored (each chunk once)
  waiters @4 :UInt64;          # blocking reads and takes waiting
  inDoubt @5 :UInt64;          # prepared transactions waiting for their outcome
  manifestBytes @6 :UInt64;    # bytes of value manifests stored
  maxValueBytes @7 :UInt64;    # the most bytes of chunks and manifests held (--max-value-bytes; 0: no limit)
}

# ---- large values ----
# A value is a list of chunks (each at most 4 MiB, named by its BLAKE2b-256 hash) and its total
# size; its manifest is stored under the BLAKE2b-256 hash of the manifest's encoding, the value id.
# An entry refers to a value with a bytes field holding "DJV1" followed by the 32-byte value id.

# space.putChunk: stores a chunk (nothing happens when it is already stored).
struct PutChunkParams {
  hash @0 :Data;               # 32 bytes: BLAKE2b-256 of data, checked; or empty: the space computes
                               # it (one hash of the content instead of one on each side)
  data @1 :Data;               # 1 byte .. 4 MiB
}
struct PutChunkResult {
  stored @0 :Bool;             # false: it was already there
  hash @1 :Data;               # the chunk's name: BLAKE2b-256 of data
  keptMs @2 :UInt64;           # how long the space keeps a chunk no value names after its last put
                               # or space.hasChunks (its --value-grace); 0 from older spaces
}
# space.putChunks: several chunks in one call (a pre-copy round's pages), each stored or refused
# on its own as by space.putChunk; at most 10,000 and what a call carries.
struct PutChunksParams {
  chunks @0 :List(PutChunkParams);
}
struct PutChunksItem {
  code @0 :UInt16;             # djinn::Code; 0 = stored or already there
  message @1 :Text;
  stored @2 :Bool;
  hash @3 :Data;
}
struct PutChunksResult {
  items @0 :List(PutChunksItem);   # in the order of the chunks
  keptMs @1 :UInt64;               # as in PutChunkResult
}
# space.hasChunks: which of these chunks are stored (to skip uploading them).
struct HasChunksParams {
  hashes @0 :List(Data);       # at most 10,000
}
struct HasChunksResult {
  present @0 :List(Bool);
}
# space.getChunks: several chunks in one call (a post-copy heap's pages, fetched by hash), in the
# order asked, as many whole ones as fit in 8 MiB (at least one); ask again for the rest.
struct GetChunksParams {
  hashes @0 :List(Data);       # at most 10,000
}
struct GetChunksResult {
  chunks @0 :List(Data);       # the first `answered` are the chunks asked for, in order; an empty
                               # one is not stored
  answered @1 :UInt32;
}

# space.getChunk
struct GetChunkParams {
  hash @0 :Data;
}
struct GetChunkResult {
  data @0 :Data;
}
# space.putValue: stores a manifest whose chunks are all stored; returns the value id.
struct PutValueParams {
  size @0 :UInt64;             # total bytes: the sum of the chunks' sizes
  chunks @1 :List(Data);       # chunk hashes in order, at most 120,000
}
struct PutValueResult {
  valueId @0 :Data;            # 32 bytes
}
# space.getValue: a value's manifest.
struct GetValueParams {
  valueId @0 :Data;
}
struct GetValueResult {
  size @0 :UInt64;
  chunks @1 :List(Data);
  chunkSizes @2 :List(UInt32);
}

# ---- transactions: the participant side (a coordinator calls these on the space) ----
struct ParticipantParams {
  txn @0 :Model.Uuid;
  coordinator @1 :Text;        # prepare: the coordinator's name, asked for the outcome after a crash
}
enum Vote {
  prepared @0;
  notChanged @1;
  aborted @2;
}
struct VoteResult {
  vote @0 :Vote;
}

# ---- the transaction manager (txn.*), served by djinn-space --txn-manager ----
struct CreateTxnParams {
  leaseMs @0 :Int64;           # the transaction aborts unless committed within it (> 0)
}
struct CreateTxnResult {
  txn @0 :TxnRef;
}
struct TxnParams {
  txn @0 :Model.Uuid;
  leaseMs @1 :Int64;           # txn.renew only
}
struct JoinParams {
  txn @0 :Model.Uuid;
  participant @1 :Text;        # "<kind>:<id>@<rpc endpoint>": the manager calls participant.*
                               # at the endpoint after '@'
  incarnation @2 :UInt64;      # the participant's run, new at each start (0: not given); a join
                               # under another one than before aborts the transaction
}
enum Outcome {
  active @0;
  committed @1;
  aborted @2;
}
struct OutcomeResult {
  outcome @0 :Outcome;
}
struct SpaceEmpty {}
