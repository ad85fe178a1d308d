#!/usr/bin/env bash
# A microcloud on one machine: a network namespace per node, each joined by a veth pair to a
# bridge that lives in its own namespace. Nothing touches the host's own network, except that
# `up` raises (never lowers) the kernel's neighbour (ARP/NDP) table limits: that table is shared
# by every namespace, and N nodes each knowing N peers on eth0 and on the VPN overflow its
# default of 1024 entries from about 20 nodes ("neighbor table overflow", ENOBUFS on send).
#
#   netns-microcloud.sh up PREFIX N     bridge namespace PREFIX-br and nodes PREFIX-n1..nN
#   netns-microcloud.sh add PREFIX I    one more node, PREFIX-nI
#   netns-microcloud.sh down PREFIX     kill what runs in them, remove the namespaces
#   netns-microcloud.sh check           exit 0 if namespaces, veth and bridges work here
#   netns-microcloud.sh avahi PREFIX I ROOT [IFACES]
#                                       avahi-daemon in node I (no D-Bus), announcing the
#                                       service files in ROOT/etc/avahi/services, on IFACES
#                                       (comma list; default all)
#   netns-microcloud.sh nomcast PREFIX  the bridge stops flooding multicast (no mDNS path)
#
# Node I's interface is eth0, left down and without an address: the agent brings it up with
# the seed's address, as on a real node. PREFIX must be short (interface names are <= 15).
set -euo pipefail

usage() { sed -n '2,17p' "$0" >&2; exit 2; }

bridge_up() {
  local br="$1-br"
  ip netns add "$br"
  ip -n "$br" link set lo up
  ip -n "$br" link add br0 type bridge
  ip -n "$br" link set br0 up
}

node_add() {
  local pfx=$1 i=$2 ns="$1-n$2" br="$1-br"
  ip netns add "$ns"
  ip link add "${pfx}a$i" type veth peer name "${pfx}b$i"
  ip link set "${pfx}a$i" netns "$ns"
  ip -n "$ns" link set "${pfx}a$i" name eth0
  ip link set "${pfx}b$i" netns "$br"
  ip -n "$br" link set "${pfx}b$i" master br0 up
}

down() {
  local pfx=$1 ns pids
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${pfx}-(br|n[0-9]+)$" || true); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}

# Room for every node to know every other one on two links, IPv4 and IPv6, plus other tests.
neigh_room() {
  local n=$1 want fam cur
  want=$((4 * n * n + 1024))
  for fam in ipv4 ipv6; do
    cur=$(sysctl -n "net.$fam.neigh.default.gc_thresh3" 2>/dev/null) || continue
    [ "$cur" -ge "$want" ] && continue
    # Not fatal where /proc/sys is read-only (a container): small clouds fit the default.
    sysctl -qw "net.$fam.neigh.default.gc_thresh1=$((want / 2))" \
      "net.$fam.neigh.default.gc_thresh2=$((want * 3 / 4))" \
      "net.$fam.neigh.default.gc_thresh3=$want" 2>/dev/null ||
      echo "netns-microcloud: cannot raise net.$fam.neigh.default.gc_thresh3 to $want; with $n nodes expect 'neighbor table overflow'" >&2
  done
}

check() {
  command -v ip >/dev/null || { echo "no ip(8): apt-get install iproute2"; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "needs root for network namespaces"; exit 1; }
  local pfx="cmchk$$"
  trap 'down '"$pfx" EXIT
  bridge_up "$pfx" && node_add "$pfx" 1 >/dev/null 2>&1 || { echo "cannot make namespaces, veth or bridges here"; exit 1; }
}

# avahi-daemon wants /run/avahi-daemon and /etc/avahi/services to itself: give this one a
# private mount namespace with a tmpfs there and the node's own services dir bound in.
avahi() {
  local ns="$1-n$2" root=$3 ifaces=${4:-}
  command -v avahi-daemon >/dev/null || { echo "no avahi-daemon: apt-get install avahi-daemon" >&2; exit 1; }
  mkdir -p "$root/etc/avahi/services" /run/avahi-daemon /etc/avahi/services
  cat >"$root/etc/avahi/avahi-daemon.conf" <<EOF
[server]
host-name=n$2
use-ipv4=yes
use-ipv6=no
enable-dbus=no
ratelimit-interval-usec=1000000
ratelimit-burst=1000
${ifaces:+allow-interfaces=$ifaces}
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
EOF
  ip netns exec "$ns" unshare -m sh -c '
    mount --make-rprivate / &&
    mount -t tmpfs tmpfs /run/avahi-daemon &&
    mount --bind "$1/etc/avahi/services" /etc/avahi/services &&
    exec avahi-daemon -D -f "$1/etc/avahi/avahi-daemon.conf" --no-drop-root --no-chroot --no-rlimits
  ' sh "$root" >"$root.avahi.log" 2>&1
}

nomcast() {
  local br="$1-br" p
  for p in $(ip -n "$br" -o link show master br0 | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip -n "$br" link set dev "$p" type bridge_slave mcast_flood off
  done
}

[ $# -ge 1 ] || usage
case $1 in
  up)
    [ $# -eq 3 ] || usage
    [ ${#2} -le 10 ] || { echo "prefix $2 too long (<= 10)" >&2; exit 2; }
    down "$2"
    neigh_room "$3"
    bridge_up "$2"
    for i in $(seq 1 "$3"); do node_add "$2" "$i"; done
    ;;
  add) [ $# -eq 3 ] || usage; node_add "$2" "$3" ;;
  down) [ $# -eq 2 ] || usage; down "$2" ;;
  check) check ;;
  avahi) [ $# -ge 4 ] || usage; avahi "$2" "$3" "$4" "${5:-}" ;;
  nomcast) [ $# -eq 2 ] || usage; nomcast "$2" ;;
  *) usage ;;
esac
