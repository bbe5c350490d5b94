# The lookup protocol (DESIGN §2, §5): the registrar's methods ("lookup.*") and its notify events.
# Registration leases are served by the same registrar through the lease protocol ("lease.*" of
# lease/proto/lease.capnp), so a registrant renews and cancels them like any other lease.
@0xd3a1f6c0b27e4a91;

$import "/capnp/c++.capnp".namespace("djinn::proto");

using Model = import "/djinn/proto/model.capnp";

# lookup.register: a new registration, or the replacement of the item registered under the same
# ServiceID (a restarted or migrated service). The item's serviceId is set by the registrant (a
# service keeps its id for life); its lease is filled in by the registrar.
struct RegisterParams {
  item @0 :Model.ServiceItem;
  durationMs @1 :Int64;         # the registration lease: > 0 ms, or -1 = ANY
}
struct RegisterResult {
  lease @0 :Model.LeaseInfo;    # the registration lease; the item is stored as sent, with it
  replaced @1 :Bool;            # an item with this ServiceID was registered before
  landlord @2 :Text;            # where to renew and cancel the lease (lease.renew, lease.cancel)
  grantedMs @3 :Int64;          # the lease's granted duration (0 from a registrar of before it)
}

# lookup.lookup: the first matching item, or none.
struct LookupParams {
  template @0 :Model.ServiceTemplate;
}
struct LookupResult {
  found @0 :Bool;
  item @1 :Model.ServiceItem;
}

# lookup.lookupMany: up to maxMatches items, in ServiceID order, and the total that match. With
# notifyId set (a notify registration of the caller's), also the last event number of that
# registration at the moment of the snapshot: a client applies only later events (the lookup
# cache's re-sync). A reply to a caller that pages stops short of 8 MiB of items (at least one):
# `more` says matches were left out, to be asked for with afterId set to the last item's
# ServiceID. One to a caller that does not (older clients) holds up to 15 MiB, what their 16 MiB
# frame read before.
struct LookupManyParams {
  template @0 :Model.ServiceTemplate;
  maxMatches @1 :UInt32;        # at most 100,000
  notifyId @2 :UInt64;          # 0: none
  afterId @3 :Model.Uuid;       # unset: from the first match; set: matches after this ServiceID
  paged @4 :Bool;               # the caller reads `more` and asks for the rest
}
struct LookupManyResult {
  items @0 :List(Model.ServiceItem);
  totalMatches @1 :UInt64;      # every match, before and after the page
  eventSeq @2 :UInt64;          # with notifyId: the registration's last event number
  more @3 :Bool;                # matches after the last item were left out
}

# lookup.modifyAttributes: Jini's modifyAttributes and addAttributes in one durable step. For each
# change in order: every attribute of the item that its template matches (the template rules of
# DESIGN §2: the attribute's type or a supertype, every non-null field equal) is replaced by the
# entry, or deleted when delete is set; a change whose template matches no attribute fails the
# whole call (NOT_FOUND, nothing changed). Then `add` is appended. The item is named by its
# registration lease, as in Jini (the ServiceID alone does not prove the caller registered it).
struct AttributeChange {
  template @0 :Model.Template;
  entry @1 :Model.Entry;        # the replacement; ignored when delete
  delete @2 :Bool;
}
struct ModifyParams {
  leaseId @0 :UInt64;           # the item's registration lease
  changes @1 :List(AttributeChange);
  add @2 :List(Model.Entry);
}
struct ModifyResult {
  item @0 :Model.ServiceItem;
}

# lookup.notify: events for the transitions of items against a template, leased like any grant
# (renew and cancel through lease.*). Events go out as kind "lookup.notify.<ref>" (16 hex digits of
# lease_ref(id): every subscriber sees every kind, and the id would let any of them cancel the
# registration) on the registrar's event socket, numbered by the event stream itself. A
# registration made by a client or registrar of an earlier release keeps "lookup.notify.<id in
# decimal>" and events that name its id.
struct NotifyParams {
  template @0 :Model.ServiceTemplate;
  transitions @1 :UInt8;        # a mask of: 1 = nomatch -> match, 2 = match -> nomatch,
                                # 4 = match -> match (changed); 0 means all
  durationMs @2 :Int64;         # > 0 ms, or -1 = ANY
  holder @3 :Text;              # who registers (for lease queries); may be empty
  kindByRef @4 :Bool;           # set by the clients of this release: the kind names the lease's
                                # ref and events carry no id. Unset (a client of an earlier
                                # release): "lookup.notify.<id>" and events naming the id, as it
                                # expects
}
struct NotifyResult {
  id @0 :UInt64;                # the notify registration = its lease id
  expirationMs @1 :Int64;
  eventKind @2 :Text;           # "lookup.notify.<ref>"
  eventsEndpoint @3 :Text;      # the registrar's PUB endpoint
  landlord @4 :Text;
  grantedMs @5 :Int64;          # the lease's granted duration (0 from a registrar of before it)
}

enum Transition {
  noMatchToMatch @0;
  matchToNoMatch @1;
  matchToMatch @2;
}
# The payload of a "lookup.notify.<ref>" event, the same for every registration a change goes to
# (the event's kind names the registration).
struct NotifyEvent {
  notifyId @0 :UInt64;          # 0 (a registrar of an earlier release sent the id)
  transition @1 :Transition;
  serviceId @2 :Model.Uuid;
  item @3 :Model.ServiceItem;   # the item after the change; for matchToNoMatch, the item before
  removed @4 :Bool;             # matchToNoMatch because the item is gone (expired or cancelled)
}

# lookup.self: the registrar's own item (ServiceID, groups, endpoints); also registered in itself.
struct SelfParams {}
struct SelfResult {
  item @0 :Model.ServiceItem;
  groups @1 :List(Text);
}
