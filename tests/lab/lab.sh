#!/usr/bin/env bash
# The LAN lab (DESIGN §10): N hosts as network namespaces on a bridge that lives in a namespace of
# its own, each host with its own mount namespace for /run/dbus and /run/avahi-daemon and its own
# dbus-daemon and avahi-daemon bound to its eth0. Addresses 10.77.0.N/24 exist only inside the lab;
# while a lab is up the root namespace carries `unreachable 10.77.0.0/24`, so nothing for the lab
# can leave by the machine's real interface. Needs root.
#
#   lab.sh up [--prefix P] [--hosts N] [--no-avahi 2,3] [--no-multicast 3]   prints the state dir
#   lab.sh exec STATE HOST CMD...      runs CMD in host HOST (h1, h2, ...) of the lab
#   lab.sh down STATE                  kills every process of the lab, removes what it created
#   lab.sh check STATE                 exit 0 when nothing of the lab is left
#   lab.sh run [up options] -- CMD...  up, CMD with DJINN_LAB=<state dir>, down (also on failure or
#                                      signal), check; exits with CMD's status (1 if not clean)
#   lab.sh selftest                    the discovery.lab test: DNS-SD across hosts, multicast
#                                      between hosts, no lab address or route in the root namespace
#
# STATE is the state directory printed by `up` (/run/djinn-lab/<prefix>) or the prefix alone.
# Every namespace is named <prefix>sw or <prefix>hN; a run removes only names with its own prefix.
set -uo pipefail

readonly LAB_ROOT=/run/djinn-lab
readonly LAB_NET=10.77.0
readonly LAB_RANGE=10.77.0.0/24
readonly MCAST_ROUTE=224.0.0.0/4

die() { echo "lab.sh: $*" >&2; exit 2; }
log() { [[ -n "${LAB_VERBOSE:-}" ]] && echo "lab.sh: $*" >&2; return 0; }

state_dir_of() {
  local s="$1"
  [[ "$s" == /* ]] && { echo "$s"; return; }
  echo "$LAB_ROOT/$s"
}

# The root namespace's safety route is shared by every lab that is up; it is added and removed
# under one lock so that the last lab down removes it and no other.
with_lock() { mkdir -p "$LAB_ROOT"; ( flock 9; "$@" ) 9>"$LAB_ROOT/.lock"; }
route_add() { ip route replace unreachable "$LAB_RANGE" 2>/dev/null || true; }
route_release() {
  local others
  others=$(find "$LAB_ROOT" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)
  if [[ "$others" -eq 0 ]]; then
    ip route del unreachable "$LAB_RANGE" 2>/dev/null || true
    # The empty mount point the hosts' private tmpfs sits on; no lab needs it any more.
    if [[ -f "$LAB_ROOT/.created-avahi-dir" ]]; then
      rmdir /run/avahi-daemon 2>/dev/null || true
      rm -f "$LAB_ROOT/.created-avahi-dir"
    fi
  fi
}
ensure_avahi_dir() {
  if [[ ! -d /run/avahi-daemon ]]; then
    mkdir -p /run/avahi-daemon && touch "$LAB_ROOT/.created-avahi-dir"
  fi
}

in_list() {  # in_list 3 "2,3"
  local x="$1" list=",$2,"
  [[ "$list" == *",$x,"* || "$list" == *",h$x,"* ]]
}

holder_pid() {  # holder_pid STATE HOST
  local f="$1/$2.pid"
  [[ -f "$f" ]] || die "no host $2 in lab $1"
  cat "$f"
}

# Runs CMD in both namespaces of a host: its network namespace and its private mount namespace.
host_exec() {
  local state="$1" host="$2"; shift 2
  local pid; pid=$(holder_pid "$state" "$host")
  nsenter -t "$pid" -m -n -- "$@"
}

cmd_up() {
  local prefix="" hosts=3 no_avahi="" no_mcast=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --prefix) prefix="$2"; shift 2;;
      --hosts) hosts="$2"; shift 2;;
      --no-avahi) no_avahi="$2"; shift 2;;
      --no-multicast) no_mcast="$2"; shift 2;;
      *) die "up: unknown option '$1' (expected --prefix, --hosts, --no-avahi, --no-multicast)";;
    esac
  done
  [[ $EUID -eq 0 ]] || die "the lab needs root (network and mount namespaces)"
  [[ "$hosts" =~ ^[0-9]+$ && "$hosts" -ge 1 && "$hosts" -le 50 ]] || die "--hosts $hosts: expected 1..50"
  if [[ -z "$prefix" ]]; then
    prefix="dl$$$(printf '%04x' $((RANDOM % 65536)))"
  fi
  [[ "$prefix" =~ ^[a-z][a-z0-9]{1,10}$ ]] || die "--prefix '$prefix': 2..11 lowercase letters and digits"
  local state="$LAB_ROOT/$prefix"
  if ip netns list | awk '{print $1}' | grep -Eq "^${prefix}(sw|h[0-9]+)$"; then
    die "namespaces with prefix $prefix exist already"
  fi
  mkdir -p "$LAB_ROOT"
  mkdir "$state" 2>/dev/null || die "lab $prefix exists already ($state)"
  echo "$prefix" >"$state/prefix"
  echo "$hosts" >"$state/hosts"
  with_lock route_add
  with_lock ensure_avahi_dir

  local sw="${prefix}sw"
  ip netns add "$sw" || return 1
  ip -n "$sw" link add br0 type bridge || return 1
  # Multicast snooping off: the bridge floods every group, as a plain switch would.
  ip -n "$sw" link set br0 type bridge mcast_snooping 0 2>/dev/null || true
  ip -n "$sw" link set br0 up
  ip -n "$sw" link set lo up

  local i
  for ((i = 1; i <= hosts; i++)); do
    local h="${prefix}h$i" addr="$LAB_NET.$i"
    ip netns add "$h" || return 1
    # Both ends are created inside the lab: nothing of it ever exists in the root namespace.
    ip link add "veth$i" netns "$h" type veth peer name "p$i" netns "$sw" || return 1
    ip -n "$sw" link set "p$i" master br0
    ip -n "$sw" link set "p$i" up
    ip -n "$h" link set "veth$i" name eth0
    ip -n "$h" addr add "$addr/24" dev eth0
    ip -n "$h" link set lo up
    ip -n "$h" link set eth0 up
    if in_list "$i" "$no_mcast"; then
      ip -n "$h" link set eth0 multicast off
      echo nomulticast >>"$state/h$i.flags"
    else
      ip -n "$h" route add "$MCAST_ROUTE" dev eth0
    fi
    # The holder keeps the host's mount namespace (private tmpfs on /run/dbus and
    # /run/avahi-daemon) alive; everything for the host runs with nsenter into it.
    setsid ip netns exec "$h" unshare -m --propagation private sh -c \
      "mount -t tmpfs tmpfs /run/dbus && mount -t tmpfs tmpfs /run/avahi-daemon && echo \$\$ >'$state/h$i.pid' && exec sleep infinity" \
      </dev/null >/dev/null 2>"$state/h$i.holder.log" &
    local waited=0
    while [[ ! -s "$state/h$i.pid" ]]; do
      sleep 0.02; waited=$((waited + 1))
      [[ $waited -lt 250 ]] || { echo "lab.sh: host h$i: holder did not start: $(cat "$state/h$i.holder.log")" >&2; return 1; }
    done
    echo "$addr" >"$state/h$i.addr"
    if in_list "$i" "$no_avahi"; then
      echo noavahi >>"$state/h$i.flags"
      continue
    fi
    cat >"$state/h$i.avahi.conf" <<CONF
[server]
host-name=$h
use-ipv4=yes
use-ipv6=no
allow-interfaces=eth0
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
CONF
    host_exec "$state" "h$i" dbus-daemon --system --fork --nopidfile || { echo "lab.sh: h$i: dbus-daemon failed" >&2; return 1; }
    host_exec "$state" "h$i" avahi-daemon -D --no-drop-root --no-chroot --no-rlimits -f "$state/h$i.avahi.conf" \
      2>>"$state/h$i.avahi.log" || { echo "lab.sh: h$i: avahi-daemon failed: $(cat "$state/h$i.avahi.log")" >&2; return 1; }
  done
  # Every avahi-daemon answers before up returns, so a test can browse at once.
  for ((i = 1; i <= hosts; i++)); do
    [[ -f "$state/h$i.avahi.conf" ]] || continue
    local n=0
    until host_exec "$state" "h$i" avahi-daemon -c 2>/dev/null; do
      sleep 0.05; n=$((n + 1))
      [[ $n -lt 200 ]] || { echo "lab.sh: h$i: avahi-daemon is not running" >&2; return 1; }
    done
  done
  log "lab $prefix up: $hosts hosts"
  echo "$state"
}

lab_namespaces() {  # every namespace of this prefix that exists, hosts first
  local prefix="$1"
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}h[0-9]+$" || true
  ip netns list 2>/dev/null | awk '{print $1}' | grep -Ex "${prefix}sw" || true
}

cmd_down() {
  local state; state=$(state_dir_of "${1:?down: give the state dir or prefix}")
  local prefix; prefix=$(basename "$state")
  [[ "$prefix" =~ ^[a-z][a-z0-9]{1,10}$ ]] || die "down: '$prefix' is not a lab prefix"
  local ns pids tries
  for ns in $(lab_namespaces "$prefix"); do
    # Every process of the host (holder, dbus, avahi, whatever a test started there), by pid,
    # until none is left.
    for tries in $(seq 1 100); do
      pids=$(ip netns pids "$ns" 2>/dev/null)
      [[ -z "$pids" ]] && break
      kill -9 $pids 2>/dev/null
      sleep 0.05
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$state"
  with_lock route_release
  log "lab $prefix down"
}

cmd_check() {
  local state; state=$(state_dir_of "${1:?check: give the state dir or prefix}")
  local prefix; prefix=$(basename "$state")
  local left; left=$(lab_namespaces "$prefix")
  local bad=0
  [[ -z "$left" ]] || { echo "lab.sh: namespaces left: $left" >&2; bad=1; }
  [[ ! -e "$state" ]] || { echo "lab.sh: state left: $state" >&2; bad=1; }
  local procs; procs=$(pgrep -f "$state/" || true)
  [[ -z "$procs" ]] || { echo "lab.sh: processes left: $procs" >&2; bad=1; }
  return $bad
}

# The root namespace must hold no lab address and no usable route into the lab range.
root_is_clean() {
  if ip -4 -o addr show | grep -q " $LAB_NET\."; then
    echo "lab.sh: the root namespace has a lab address" >&2; return 1
  fi
  if ip route get "$LAB_NET.1" >/dev/null 2>&1; then
    echo "lab.sh: the root namespace has a route into $LAB_RANGE: $(ip route get "$LAB_NET.1")" >&2; return 1
  fi
  return 0
}

cmd_run() {
  local up_args=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do up_args+=("$1"); shift; done
  [[ "${1:-}" == "--" ]] || die "run: expected -- CMD..."
  shift
  [[ $# -gt 0 ]] || die "run: no command"
  local state=""
  RUN_STATE=""
  RUN_CHILD=""
  trap 'if [[ -n "$RUN_CHILD" ]]; then kill -TERM "$RUN_CHILD" 2>/dev/null; sleep 0.5; kill -KILL "$RUN_CHILD" 2>/dev/null; fi
        if [[ -n "$RUN_STATE" ]]; then cmd_down "$RUN_STATE"; fi' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local prefix="dl$$$(printf '%04x' $((RANDOM % 65536)))"
  RUN_STATE="$LAB_ROOT/$prefix"
  state=$(cmd_up --prefix "$prefix" "${up_args[@]}") || { echo "lab.sh: the lab did not come up" >&2; exit 1; }
  local rc=0
  # In the background and awaited, so that a signal runs the trap at once (bash defers traps
  # until a foreground child ends); the trap stops the child by its pid before tearing down.
  DJINN_LAB="$state" "$@" &
  RUN_CHILD=$!
  wait "$RUN_CHILD" || rc=$?
  RUN_CHILD=""
  cmd_down "$state"
  RUN_STATE=""
  cmd_check "$state" || rc=1
  exit $rc
}

# A TCP connection from h1 to a listener in h2.
unicast_ok() {
  local state="$1"
  host_exec "$state" h2 /usr/bin/python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.2", 4198)); s.listen(1); s.settimeout(5)
c, _ = s.accept(); c.sendall(b"lab-tcp")' &
  local srv=$! out="" n
  for n in $(seq 1 50); do
    out=$(host_exec "$state" h1 /usr/bin/python3 -c '
import socket
print(socket.create_connection(("10.77.0.2", 4198), timeout=1).recv(16).decode())' 2>/dev/null) && break
    sleep 0.05
  done
  wait "$srv" 2>/dev/null
  [[ "$out" == lab-tcp ]]
}

# A connection from the root namespace to a lab address fails at once (the unreachable route).
root_cannot_reach() {
  ! /usr/bin/python3 -c '
import socket
socket.create_connection(("10.77.0.1", 4198), timeout=1)' 2>/dev/null
}

# discovery.lab: proves the lab is a LAN and nothing more.
cmd_selftest() {
  local state="${DJINN_LAB:-}"
  if [[ -z "$state" ]]; then
    exec "$0" run --hosts 3 --no-avahi 3 -- "$0" selftest
  fi
  local fail=0
  check() { if "$@"; then echo "ok: $DESC"; else echo "FAILED: $DESC" >&2; fail=1; fi; }

  DESC="the root namespace has no lab address or route"; check root_is_clean
  DESC="h1 reaches h2 by unicast"; check unicast_ok "$state"

  # DNS-SD: published in h1, resolved in h2 with the lab address, the port and the TXT.
  host_exec "$state" h1 avahi-publish -s selftest-lookup _djinn-lookup._tcp 4160 groups=public version=1 \
    >/dev/null 2>&1 &
  local pub=$!
  local found="" n
  for n in $(seq 1 50); do
    found=$(host_exec "$state" h2 timeout 5 avahi-browse -rtp _djinn-lookup._tcp 2>/dev/null | grep '^=' || true)
    [[ "$found" == *selftest-lookup* ]] && break
    sleep 0.1
  done
  DESC="avahi-publish in h1 is resolved by avahi-browse in h2 (address, port, TXT)"
  check grep -q "selftest-lookup;_djinn-lookup._tcp;local;.*;$LAB_NET.1;4160;.*groups=public" <<<"$found"
  kill "$pub" 2>/dev/null; wait "$pub" 2>/dev/null

  # Multicast: a datagram to an admin-scoped group from h1 arrives in h3 (which has no avahi).
  local got="$state/mcast.out"
  host_exec "$state" h3 /usr/bin/python3 -c '
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("239.255.41.60", 4199))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton("239.255.41.60"), socket.inet_aton("10.77.0.3")))
s.settimeout(5)
print(s.recv(100).decode())' >"$got" 2>&1 &
  local rcv=$!
  sleep 0.3
  for n in 1 2 3 4 5; do
    host_exec "$state" h1 /usr/bin/python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.sendto(b"lab-hello", ("239.255.41.60", 4199))'
    sleep 0.1
  done
  wait "$rcv" 2>/dev/null
  DESC="a multicast datagram from h1 is received in h3"; check grep -q lab-hello "$got"

  DESC="the root namespace cannot reach the lab"; check root_cannot_reach
  DESC="the root namespace still has no lab address or route"; check root_is_clean
  return $fail
}

main() {
  local cmd="${1:-}"; shift || true
  case "$cmd" in
    up) cmd_up "$@";;
    down) cmd_down "$@";;
    exec) local s; s=$(state_dir_of "${1:?exec: STATE HOST CMD...}"); shift; local h="${1:?exec: HOST}"; shift
          host_exec "$s" "$h" "$@";;
    check) cmd_check "$@";;
    run) cmd_run "$@";;
    selftest) cmd_selftest "$@";;
    *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; [[ -z "$cmd" || "$cmd" == "--help" || "$cmd" == "-h" ]] || exit 2;;
  esac
}
main "$@"
