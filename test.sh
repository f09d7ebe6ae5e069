#!/usr/bin/env bash
# Runs every test of orbax-rs. On a fresh machine it installs what the tests
# need; nothing here is cached that it cannot rebuild.
set -euo pipefail
cd "$(dirname "$0")"

echo "== formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== unit, integration and conformance tests (fixtures written by real Orbax, no Python needed)"
cargo test --workspace --all-targets
cargo test --workspace --doc
