#!/usr/bin/env bash
# Real-socket soak: runs `meshrtc demo --peers 10` for SECONDS (default 600) over loopback
# and samples its resident memory every INTERVAL seconds (default 10). Prints one line per
# sample, then the demo's own table. Exits non-zero if the demo fails (a pair did not
# connect) or if memory grows: the last sample may exceed the one at WARMUP seconds
# (default: a third of the run) by at most 10 % + 8 MiB.
#
#   scripts/soak-demo.sh                    # 10 minutes, a sample every 10 s
#   WARMUP=15 MESHRTC_BIN=target/debug/meshrtc scripts/soak-demo.sh 30 2   # what CI runs
#   SOAK_ARGS="--video" scripts/soak-demo.sh 600
#
# MESHRTC_BIN names the binary (default: target/release/meshrtc, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-600}"
interval="${2:-10}"
warmup="${WARMUP:-$((secs / 3))}"
peers="${SOAK_PEERS:-10}"
bin="${MESHRTC_BIN:-target/release/meshrtc}"
if [ ! -x "$bin" ]; then
  cargo build --release -p meshrtc-tokio --bin meshrtc >&2
fi

out="$(mktemp -t meshrtc-soak.XXXXXX)"
trap 'rm -f "$out"' EXIT
# shellcheck disable=SC2086
"$bin" demo --peers "$peers" --duration "$secs" ${SOAK_ARGS:-} >"$out" 2>/dev/null &
pid=$!

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

printf '%8s %10s\n' t_s rss_mib
t=0
base=""
last=""
peak=0
while kill -0 "$pid" 2>/dev/null; do
  sleep "$interval"
  t=$((t + interval))
  r=$(rss_kib "$pid")
  [ -z "$r" ] && break
  printf '%8d %10s\n' "$t" "$(mib "$r")"
  last=$r
  [ "$r" -gt "$peak" ] && peak=$r
  if [ -z "$base" ] && [ "$t" -ge "$warmup" ]; then base=$r; fi
done
status=0
wait "$pid" || status=$?
cat "$out"
if [ "$status" -ne 0 ]; then
  echo "soak: the demo failed (exit $status)" >&2
  exit 1
fi
if [ -z "$base" ] || [ -z "$last" ]; then
  echo "soak: too few samples (run longer than the warm-up of ${warmup}s)" >&2
  exit 1
fi
limit=$((base + base / 10 + 8192))
printf 'soak: rss at %ds %s MiB, at the end %s MiB, peak %s MiB (limit %s MiB)\n' \
  "$warmup" "$(mib "$base")" "$(mib "$last")" "$(mib "$peak")" "$(mib "$limit")"
if [ "$last" -gt "$limit" ]; then
  echo "soak: memory grew" >&2
  exit 1
fi
