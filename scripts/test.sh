#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
