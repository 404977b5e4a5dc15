#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
  # nextest does not run doc tests (the rustdoc examples and QUICKSTART.md's blocks); they
  # reuse the libraries just built, so they cost only their own compile and link.
  cargo test --workspace --doc --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
# Docs build without warnings (broken or private intra-doc links); a few seconds.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
