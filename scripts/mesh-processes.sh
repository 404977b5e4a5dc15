#!/usr/bin/env bash
# A 10-peer mesh on this machine, one `meshrtc peer` process per peer: Opus and 360p30 VP8
# from every peer to the nine others, on loopback. Prints each process's CPU (% of one core
# over its life, from /usr/bin/time) and resident set, and whether every pair connected and
# got video, from the peers' --stats-json files. Not a test: a figure for benches/README.md.
#
#   scripts/mesh-processes.sh [PEERS=10] [SECONDS=20] [WIDTHxHEIGHT=640x360]
#
# Uses target/release/meshrtc (cargo build --release -p meshrtc-tokio --bin meshrtc).
set -euo pipefail

peers=${1:-10}
seconds=${2:-20}
size=${3:-640x360}
width=${size%x*}
height=${size#*x}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/meshrtc
[[ -x $bin ]] || { echo "build it first: cargo build --release -p meshrtc-tokio --bin meshrtc" >&2; exit 1; }
out=$(mktemp -d)
server=
# KEEP=1 keeps the peers' logs and stats.
if [[ -n ${KEEP:-} ]]; then echo "logs in $out" >&2; fi
trap 'if [[ -n $server ]]; then kill "$server" 2>/dev/null || true; fi; if [[ -z ${KEEP:-} ]]; then rm -rf "$out"; fi' EXIT
: >"$out/signal.log"

"$bin" signal --listen 127.0.0.1:0 >"$out/signal.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    url=$(sed -n 's/^listening on \(ws:[^ ]*\)$/\1/p' "$out/signal.log")
    [[ -n $url ]] && break
    sleep 0.1
done
[[ -n ${url:-} ]] || { echo "signaling server did not start" >&2; exit 1; }

pids=()
for i in $(seq 0 $((peers - 1))); do
    /usr/bin/time -f "%U %S %e %M" -o "$out/p$i.time" \
        "$bin" peer --signal "$url" --room mesh --id "p$i" --audio tone --video testsrc \
        --video-codec vp8 --width "$width" --height "$height" --fps 30 \
        --duration "$seconds" --stats-json "$out/p$i.json" --bind 127.0.0.1 \
        >"$out/p$i.log" 2>&1 &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done

python3 - "$out" "$peers" "$seconds" <<'EOF'
import json, sys
out, peers, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cpu, rss, bad = [], [], []
for i in range(peers):
    u, s, e, m = open(f"{out}/p{i}.time").read().split()[-4:]
    cpu.append((float(u) + float(s)) / float(e) * 100)
    rss.append(int(m) / 1024)
    try:
        st = json.load(open(f"{out}/p{i}.json"))
    except Exception as x:
        bad.append(f"p{i}: no stats ({x})")
        continue
    for peer, r in st["remote"].items():
        v = (r.get("video") or {}).get("frames_decoded") or 0
        if not r.get("connected"):
            bad.append(f"p{i}<-{peer}: not connected")
        elif v < 10 * seconds:
            bad.append(f"p{i}<-{peer}: {v} video frames decoded in {seconds:.0f} s")
    if len(st["remote"]) != peers - 1:
        bad.append(f"p{i}: {len(st['remote'])} remote peers")
cpu.sort(); rss.sort()
print(f"{peers} processes, {seconds:.0f} s: CPU per process median {cpu[len(cpu)//2]:.0f}% "
      f"(min {cpu[0]:.0f}%, max {cpu[-1]:.0f}%) of one core; max RSS median "
      f"{rss[len(rss)//2]:.0f} MB")
print("pairs: all connected with video" if not bad else "problems:\n  " + "\n  ".join(bad))
EOF
[[ $failed -eq 0 ]] || { echo "$failed peer processes exited non-zero" >&2; exit 1; }
