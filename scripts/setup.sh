#!/usr/bin/env bash
# Installs the Debian packages meshrtc needs to build and test, when missing.
# Safe to run repeatedly; uses sudo only when not already root.
set -euo pipefail

# Codecs (core features opus/h264/vpx): cmake builds the bundled libopus; g++ and nasm build
# OpenH264 (nasm for its SIMD, which is several times faster); libvpx-dev via pkg-config for
# VP8/VP9, and libclang-dev for bindgen, which generates the libvpx bindings from its headers.
# chromium: Debian's headless browser for the interop tests (interop/, /usr/bin/chromium).
# coturn: the TURN/STUN server the ICE tests start on 127.0.0.1 (core/tests/turn/).
# iproute2, iptables: network namespaces behind Linux NAT (scripts/netns-nat.sh).
# python3-prometheus-client: the Prometheus project's own text-format parser, which the
# signaling server's /metrics test checks its output with.
# redis-server: the room store that signaling nodes share (driver-tokio/tests/net/cluster.rs).
needed=(pkg-config cmake g++ nasm libvpx-dev libclang-dev chromium coturn iproute2 iptables python3-prometheus-client redis-server)
missing=()
for p in "${needed[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  echo "note: cargo-nextest not found; scripts/test.sh falls back to cargo test" >&2
fi
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
