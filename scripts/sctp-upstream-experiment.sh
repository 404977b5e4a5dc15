#!/usr/bin/env bash
# What an upstream change to sctp-proto would buy meshrtc's data channels (issue 22).
#
# sctp-proto 0.10.8 walks its in-flight queue on every poll: for partial-reliability
# expiry (three times per poll whenever the peer supports FORWARD-TSN, i.e. always) and for
# T3 retransmissions (even when nothing is marked). This script builds the throughput bench
# against a patched copy of the crate (outside the repository, in a scratch worktree) whose
# two walks can be skipped at run time:
#
#   SCTP_SKIP_EXPIRE=1  no expiry walk (correct only for reliable channels, as in the bench)
#   SCTP_SKIP_RTX=1     no retransmission walk until a T3 timeout has marked chunks
#
# and runs it without, with the first and with both, interleaved.
#
#   scripts/sctp-upstream-experiment.sh [rounds]     (default 2 rounds per setting, twice)
#
# Needs a built registry copy of sctp-proto 0.10.8 (any `cargo build` of the workspace).
set -euo pipefail
rounds="${1:-2}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
scratch="${SCTP_EXPERIMENT_DIR:-/tmp/meshrtc-sctp-experiment}"
src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/sctp-proto-0.10.8 | head -1)"

rm -rf "$scratch/sctp-proto"
mkdir -p "$scratch"
cp -r "$src" "$scratch/sctp-proto"
python3 - "$scratch/sctp-proto" <<'EOF'
import sys
root = sys.argv[1]
def edit(path, old, new):
    p = f"{root}/{path}"
    s = open(p).read()
    assert old in s, (path, old)
    open(p, "w").write(s.replace(old, new, 1))
flag = lambda name: (
    f"{{ static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new(); "
    f"*F.get_or_init(|| std::env::var_os(\"{name}\").is_some()) }}")
edit("src/queue/outbound_queue.rs",
     "    pub(crate) fn expired_inflight(&self, now: Instant) -> Vec<u32> {\n",
     "    pub(crate) fn expired_inflight(&self, now: Instant) -> Vec<u32> {\n"
     f"        if {flag('SCTP_SKIP_EXPIRE')} {{ return Vec::new(); }}\n")
edit("src/queue/outbound_queue.rs",
     "    pub(crate) fn mark_all_to_retransmit(&mut self) {",
     "    pub(crate) fn inflight_maybe_marked(&self) -> bool { self.inflight.maybe_marked }\n\n"
     "    pub(crate) fn mark_all_to_retransmit(&mut self) {")
edit("src/queue/payload_queue.rs",
     "    n_bytes: usize,\n}",
     "    n_bytes: usize,\n    pub(crate) maybe_marked: bool,\n}")
edit("src/queue/payload_queue.rs",
     "    pub(crate) fn mark_all_to_retransmit(&mut self) {\n",
     "    pub(crate) fn mark_all_to_retransmit(&mut self) {\n        self.maybe_marked = true;\n")
edit("src/association/mod.rs",
     "    fn get_data_packets_to_retransmit(&mut self, now: Instant) -> Vec<Packet> {\n"
     "        self.expire_inflight_messages(now);\n",
     "    fn get_data_packets_to_retransmit(&mut self, now: Instant) -> Vec<Packet> {\n"
     "        self.expire_inflight_messages(now);\n"
     f"        if {flag('SCTP_SKIP_RTX')} && !self.outbound_queue.inflight_maybe_marked() {{ return Vec::new(); }}\n")
EOF

tree="$scratch/worktree"
git -C "$repo" worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
git -C "$repo" worktree add --detach "$tree" HEAD >/dev/null
printf '\n[patch.crates-io]\nsctp-proto = { path = "%s" }\n' "$scratch/sctp-proto" >>"$tree/Cargo.toml"
cd "$tree"
bench="$(cargo bench -p meshrtc-benches --bench figures --features webrtc-rs --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*\))/\1/p' | tail -1)"
for _ in 1 2; do
    for setting in none expire both; do
        case $setting in
        none) vars=() ;;
        expire) vars=(SCTP_SKIP_EXPIRE=1) ;;
        both) vars=(SCTP_SKIP_EXPIRE=1 SCTP_SKIP_RTX=1) ;;
        esac
        echo "== upstream walks skipped: $setting"
        env "${vars[@]}" MESHRTC_BENCH_SIZES="${MESHRTC_BENCH_SIZES:-16}" "$bench" throughput \
            --rounds "$rounds" | grep -E "str0m in memory|meshrtc on|CPU per|webrtc-rs on"
    done
done
