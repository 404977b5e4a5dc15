#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60), one after another on
# one core, starting from the seed corpus in fuzz/seeds/<target>/ (which it never writes to), and
# prints each target's executions. Exits non-zero when a target finds a crash; the input is
# then in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh 30                      # CI: a short run of each
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 3600 # 10 million executions or an hour, whichever first
#   FUZZ_TARGETS="server_machine participant" scripts/fuzz.sh 600
#
# Targets: the signaling parsers (client_frame, server_frame), room tokens, the server state
# machine, Participant::handle_input (participant), SDP offers/answers (sdp), the audio
# jitter buffer (jitter), each decoder (decode_opus, decode_h264, decode_vp8, decode_vp9).
# A crash found here belongs in fuzz/seeds/<target>/ once fixed: tests/tests/fuzz_corpus.rs
# replays every seed on stable Rust in every test run.
#
# FUZZ_SANITIZER=none builds without AddressSanitizer (about twice the executions per second;
# fine for the targets that run only safe Rust, keep the default for the decoders, which are C).
#
# FUZZ_MERGE=1 adds to fuzz/seeds/<target>/ what a run found that adds coverage.
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The corpus that
# grows during a run goes to $FUZZ_WORK (a temporary directory unless set).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
runs="${FUZZ_RUNS:-0}"
# Every [[bin]] of fuzz/Cargo.toml unless FUZZ_TARGETS names some.
all_targets=$(awk '/^\[\[bin\]\]/ { bin = 1; next } bin && /^name *=/ { gsub(/[" ]/, "", $0); sub(/^name=/, "", $0); print; bin = 0 }' fuzz/Cargo.toml)
# shellcheck disable=SC2206
targets=(${FUZZ_TARGETS:-$all_targets})
san=(-s "${FUZZ_SANITIZER:-address}")
work="${FUZZ_WORK:-$(mktemp -d -t meshrtc-fuzz.XXXXXX)}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "error: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz not found; installing it" >&2
  cargo install cargo-fuzz --locked
fi

cd fuzz
for t in "${targets[@]}"; do
  cargo +nightly fuzz build -O "${san[@]}" "$t" >/dev/null
done
status=0
printf '%-16s %14s %10s %8s  %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  limit=(-max_total_time="$secs")
  [ "$runs" != 0 ] && limit+=(-runs="$runs")
  if cargo +nightly fuzz run -O "${san[@]}" "$t" "$work/$t" "seeds/$t" -- \
      "${limit[@]}" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="FOUND A CRASH: see $log and fuzz/artifacts/$t/"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  corpus=$(find "$work/$t" -type f | wc -l)
  printf '%-16s %14s %10s %8s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "$corpus" "$result"
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    # Keep what the run found that adds coverage in the repository's corpus.
    cargo +nightly fuzz run -O "${san[@]}" "$t" "seeds/$t" "$work/$t" -- -merge=1 -max_len=65536 \
      >"$work/$t.merge.log" 2>&1 || echo "$t: merge failed, see $work/$t.merge.log" >&2
  fi
done
echo "logs and grown corpora: $work"
exit $status
