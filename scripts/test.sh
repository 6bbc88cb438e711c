#!/usr/bin/env bash
# The project's test command: installs what the tests need, builds every binary, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
