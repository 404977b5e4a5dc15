#!/usr/bin/env python3
"""Delays packets with the simulator's jitter shapes, for real stacks on one machine.

The kernel of the build machines has no netem, but it has NFQUEUE: an iptables rule hands each
matching packet to this program, which lets it go (an NF_ACCEPT verdict) after a delay drawn
from a shape. Every packet's delay is independent, so packets reorder, as with netem's jitter
(the simulator's `keep_order = false`). Pure Python (netlink by hand), no dependencies.

Shapes (milliseconds, added to `--latency`):
  exponential:MEAN          one-sided, e.g. exponential:20
  pareto:MEAN:ALPHA         Lomax (Pareto type II), e.g. pareto:6:2.5
  normal:STD                clamped at zero total delay
  uniform:MAX               uniform in [-MAX, +MAX]

Use it in a network namespace of its own, so that nothing else on the machine is touched:

  unshare -n sh -c 'ip link set lo up &&
    iptables -A OUTPUT -o lo -p udp -j NFQUEUE --queue-num 7 &&
    (python3 scripts/jitter-queue.py --queue 7 --latency 20 exponential:20 &) &&
    sleep 1 && COMMAND'

Only UDP is delayed there (media, STUN, DTLS, SCTP); the signaling's TCP is not.
"""
import argparse
import heapq
import math
import random
import select
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2


def attr(kind, payload):
    length = 4 + len(payload)
    pad = (4 - length % 4) % 4
    return struct.pack("=HH", length, kind) + payload + b"\0" * pad


def message(kind, queue, attrs, seq):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, NLM_F_REQUEST, seq, 0)
    return header + body


def parse_shape(text):
    parts = text.split(":")
    kind, args = parts[0], [float(p) for p in parts[1:]]
    if kind == "exponential" and len(args) == 1:
        mean = args[0]
        return lambda rng: -mean * math.log(1.0 - rng.random())
    if kind == "pareto" and len(args) == 2:
        mean, alpha = args
        scale = mean * (alpha - 1.0)
        return lambda rng: scale * ((1.0 - rng.random()) ** (-1.0 / alpha) - 1.0)
    if kind == "normal" and len(args) == 1:
        std = args[0]
        return lambda rng: rng.gauss(0.0, std)
    if kind == "uniform" and len(args) == 1:
        width = args[0]
        return lambda rng: rng.uniform(-width, width)
    raise SystemExit(f"unknown shape {text!r} (see --help)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", type=int, default=7, help="NFQUEUE number (default 7)")
    p.add_argument("--latency", type=float, default=0.0, help="base one-way delay, ms")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("shape", help="jitter shape, e.g. exponential:20")
    a = p.parse_args()
    jitter = parse_shape(a.shape)
    rng = random.Random(a.seed)

    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((0, 0))
    seq = 1
    s.send(message(NFQNL_MSG_CONFIG, a.queue, [attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0))], seq))
    seq += 1
    s.send(message(NFQNL_MSG_CONFIG, a.queue, [attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))], seq))
    seq += 1
    s.send(message(NFQNL_MSG_CONFIG, a.queue, [attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 20000))], seq))
    print(f"jitter-queue: queue {a.queue}, {a.latency} ms + {a.shape}", file=sys.stderr, flush=True)

    due = []  # (release time, packet id)
    packets = 0
    while True:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, pid = heapq.heappop(due)
            seq += 1
            s.send(message(NFQNL_MSG_VERDICT, a.queue, [attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))], seq))
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else 1.0
        ready, _, _ = select.select([s], [], [], timeout)
        if not ready:
            continue
        data = s.recv(1 << 16)
        arrived = time.monotonic()
        off = 0
        while off + 16 <= len(data):
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, off + 16)
                if code != 0:
                    print(f"jitter-queue: netlink error {code}", file=sys.stderr, flush=True)
            elif kind & 0xFF == NFQNL_MSG_PACKET:
                pos = off + 20
                end = off + length
                while pos + 4 <= end:
                    alen, akind = struct.unpack_from("=HH", data, pos)
                    if alen < 4:
                        break
                    if akind & 0x7FFF == NFQA_PACKET_HDR:
                        (pid,) = struct.unpack_from("!I", data, pos + 4)
                        delay = max(0.0, a.latency + jitter(rng)) / 1000.0
                        heapq.heappush(due, (arrived + delay, pid))
                        packets += 1
                    pos += (alen + 3) & ~3
            off += (length + 3) & ~3


if __name__ == "__main__":
    main()
