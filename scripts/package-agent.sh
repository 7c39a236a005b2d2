#!/usr/bin/env bash
# package-agent.sh: build the static x86_64 device agent (glibc with +crt-static: no shared
# libraries, runs on any x86_64 Linux), strip it, check it is at most 5 MB, and print its size.
#
#   scripts/package-agent.sh [out-dir]     # default: target/package
#
# The systemd unit and sample config are in packaging/; docs/operations.md has the install steps
# and the ARM cross-compilation recipe.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/target/package}
TARGET=x86_64-unknown-linux-gnu
MAX_BYTES=$((5 * 1000 * 1000))
cd "$ROOT"
# --target keeps RUSTFLAGS off build scripts and proc macros (they stay dynamic host binaries).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile dist --locked -p tether-agent --target "$TARGET"
mkdir -p "$OUT"
install -m 0755 "target/$TARGET/dist/tether-agent" "$OUT/tether-agent"
strip "$OUT/tether-agent"
cp packaging/systemd/tether-agent.service packaging/agent.toml.example "$OUT/"
if ldd "$OUT/tether-agent" 2>&1 | grep -q "=>"; then
  echo "package-agent: $OUT/tether-agent is dynamically linked" >&2; exit 1
fi
size=$(stat -c %s "$OUT/tether-agent")
echo "package-agent: $OUT/tether-agent: $size bytes ($(numfmt --to=si "$size")B), static"
if ((size > MAX_BYTES)); then
  echo "package-agent: larger than the 5 MB budget" >&2; exit 1
fi
