#!/usr/bin/env bash
# Runs every test of orbax-rs. On a fresh machine it installs what the tests
# need (a venv with the pinned orbax-checkpoint 0.12.8); nothing here is
# cached that it cannot rebuild.
set -euo pipefail
cd "$(dirname "$0")"

echo "== Python environment with real Orbax 0.12.8 (created on first run)"
ORBAX_TS_PYTHON="$(conformance/venv.sh)"
export ORBAX_TS_PYTHON

echo "== local S3 (moto), GCS (fake-gcs-server), Azure (Azurite) servers on 127.0.0.1, stopped on exit"
source backends/servers/servers.sh
trap servers_stop EXIT
servers_install
servers_start

echo "== formatting and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== unit, integration and conformance tests (reader tests use the committed corpus, no Python)"
cargo test --workspace --all-targets
cargo test --workspace --doc
cargo clippy --lib --features ndarray --quiet -- -D warnings
cargo test --lib --features ndarray interop::

echo "== writer conformance: real Orbax 0.12.8 loads what we write, byte-identical metadata"
conformance/writer/run.sh
