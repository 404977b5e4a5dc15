#!/usr/bin/env bash
# The main job in one command: installs what is missing, then runs `meshrtc demo` (an
# embedded signaling server and N peers on loopback). Extra arguments go to the demo,
# e.g. `./scripts/demo.sh --peers 10 --video`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec cargo run --release -p meshrtc-tokio --bin meshrtc -- demo "$@"
