#!/usr/bin/env bash
# Builds (up) or removes (down) a small NATed internet in network namespaces — veth pairs
# only, nothing is attached to a real interface, so no packet leaves the machine:
#
#   P-lan1  10.0.1.2 ── 10.0.1.1  P-nat1  198.51.100.11 ─┐
#                                                        ├─ br0 in P-pub: 198.51.100.1
#   P-lan2  10.0.2.2 ── 10.0.2.1  P-nat2  198.51.100.12 ─┘   (the "internet"; coturn runs here)
#
# Each P-natN masquerades its LAN behind its public address (iptables MASQUERADE, Linux
# conntrack): endpoint-independent mapping that keeps the source port when it can, and
# address-and-port-dependent filtering (only replies to what went out come in) — a
# port-restricted cone NAT, through which ICE connects directly with srflx candidates.
# With --symmetric, MASQUERADE --random-fully picks a random public port for every new
# destination: a symmetric NAT, through which only TURN works.
#
# usage: scripts/netns-nat.sh up [--symmetric] [--prefix P]    (P defaults to mrtc)
#        scripts/netns-nat.sh down [--prefix P]
# Then e.g.: ip netns exec mrtc-pub turnserver ...; ip netns exec mrtc-lan1 <program>
# Needs root (CAP_NET_ADMIN) and the iproute2 and iptables packages (scripts/setup.sh).
set -euo pipefail

cmd="${1:-}"
shift || true
prefix=mrtc
symmetric=0
while [ $# -gt 0 ]; do
  case "$1" in
    --symmetric) symmetric=1 ;;
    --prefix) prefix="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

ns() { ip netns exec "$prefix-$1" "${@:2}"; }

down() {
  for n in lan1 lan2 nat1 nat2 pub; do
    ip netns del "$prefix-$n" 2>/dev/null || true
  done
}

up() {
  down
  for n in pub nat1 nat2 lan1 lan2; do
    ip netns add "$prefix-$n"
    ns "$n" ip link set lo up
  done
  # The "internet": a bridge in the public namespace.
  ns pub ip link add br0 type bridge
  ns pub ip addr add 198.51.100.1/24 dev br0
  ns pub ip link set br0 up
  # Like any host on the internet, the public one has a default route: packets to
  # addresses nobody routes (a peer's private candidates) vanish silently (into a dummy
  # veth whose other end answers no ARP) instead of failing at once with "network
  # unreachable" — which makes coturn stop relaying for the whole allocation.
  ip link add sink netns "$prefix-pub" type veth peer name sink-end netns "$prefix-pub"
  ns pub ip link set sink up
  ns pub ip link set sink-end up
  ns pub ip route add default dev sink
  for i in 1 2; do
    # WAN side: natN:wan <-> pub:natN (on the bridge). Created directly in the namespaces,
    # so the names never meet in the root namespace.
    ip link add wan netns "$prefix-nat$i" type veth peer name "nat$i" netns "$prefix-pub"
    ns pub ip link set "nat$i" master br0 up
    ns "nat$i" ip addr add "198.51.100.1$i/24" dev wan
    ns "nat$i" ip link set wan up
    # LAN side: natN:lan <-> lanN:eth0.
    ip link add lan netns "$prefix-nat$i" type veth peer name eth0 netns "$prefix-lan$i"
    ns "nat$i" ip addr add "10.0.$i.1/24" dev lan
    ns "nat$i" ip link set lan up
    ns "lan$i" ip addr add "10.0.$i.2/24" dev eth0
    ns "lan$i" ip link set eth0 up
    ns "lan$i" ip route add default via "10.0.$i.1"
    ns "nat$i" sysctl -qw net.ipv4.ip_forward=1
    if [ "$symmetric" = 1 ]; then
      ns "nat$i" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully
    else
      ns "nat$i" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE
    fi
    # Nothing from the internet reaches the LAN unless it answers something that went out.
    ns "nat$i" iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ns "nat$i" iptables -A FORWARD -i wan -o lan -j DROP
    # Unsolicited packets to the router itself are dropped before conntrack confirms an
    # entry for them, as home routers' firewalls do. Without this, a peer's hole-punching
    # packet that arrives before our own first packet to it leaves a conntrack entry that
    # makes MASQUERADE pick another port for our packet: hole punching would fail.
    ns "nat$i" iptables -A INPUT -i wan -m conntrack --ctstate NEW -j DROP
  done
  kind=$([ "$symmetric" = 1 ] && echo symmetric || echo port-restricted-cone)
  echo "$prefix: lan1 10.0.1.2 and lan2 10.0.2.2 behind $kind NATs 198.51.100.11/.12; public 198.51.100.1 in $prefix-pub"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down [--symmetric] [--prefix P]" >&2; exit 2 ;;
esac
