#!/usr/bin/env bash
# images.sh: Tether's container images without Docker. Builds static release binaries
# (glibc, `-C target-feature=+crt-static`) of tether-operator, tether-relay and tether-agent and
# packages each as a FROM-scratch, non-root (65532) image tarball with crane (scripts/oci-image.sh):
#
#   scripts/images.sh                  # -> target/images/tether-{operator,relay,agent}.tar
#   TETHER_IMAGE_TAG=dev scripts/images.sh
#   scripts/images.sh --import         # also load them into the test node (k8s-env.sh up --node)
#
# Images are tagged $TETHER_IMAGE_REPO/<name>:$TETHER_IMAGE_TAG (default ghcr.io/tether-dev,
# the workspace version), the names the chart's values use. Dockerfile at the repository root
# builds the same images with Docker (docs/operations.md).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
REPO=${TETHER_IMAGE_REPO:-ghcr.io/tether-dev}
TAG=${TETHER_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
TARGET=x86_64-unknown-linux-gnu
OUT=$ROOT/target/images
NAMES=(tether-operator tether-relay tether-agent)
import=0 files=()
[[ ${1:-} == --import ]] && import=1

t0=$SECONDS
# --target keeps RUSTFLAGS off build scripts and proc macros (they cannot be static).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" \
  -p tether-operator -p tether-relay -p tether-agent -p tether-cli # the CLI: for the helm suite, not an image
echo "[images] static binaries built in $((SECONDS - t0)) s"
mkdir -p "$OUT"
for n in "${NAMES[@]}"; do
  bin=$ROOT/target/$TARGET/release/$n
  # A dynamic binary would fail at exec in a scratch image: refuse it here, with the reason.
  if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
    echo "[images] ERROR: $bin is dynamically linked" >&2; exit 1
  fi
  "$ROOT/scripts/oci-image.sh" "$REPO/$n:$TAG" "$OUT/$n.tar" "/$n" "$bin" 2>"$OUT/$n.log" ||
    { cat "$OUT/$n.log" >&2; exit 1; }
  printf '[images] %-40s binary %5s KiB, image tarball %5s KiB\n' "$REPO/$n:$TAG" \
    "$(( $(stat -c %s "$bin") / 1024 ))" "$(( $(stat -c %s "$OUT/$n.tar") / 1024 ))"
done
if ((import)); then
  for n in "${NAMES[@]}"; do files+=("$OUT/$n.tar"); done
  "$ROOT/scripts/k8s-env.sh" import --node "${files[@]}"
fi
