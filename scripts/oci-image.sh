#!/usr/bin/env bash
# oci-image.sh: package static binaries as a FROM-scratch, non-root image tarball with crane
# (go-containerregistry, built by scripts/k8s-env.sh build), without Docker:
#
#   scripts/oci-image.sh REF OUT.tar ENTRYPOINT FILE...
#
# Each FILE goes to /<basename> (mode 0755, owner 0:0, mtime 0: the same inputs give the same
# image digest). The image runs as 65532:65532 (the distroless "nonroot" user, as the operator's
# pod security contexts), platform linux/amd64, and is written as a docker-archive tarball tagged
# REF, which `ctr images import` and `docker load` both read. A throwaway registry on loopback
# (`crane registry serve`) holds the intermediate image: `crane append` can start from an empty
# base only into a registry, and `crane mutate` sets entrypoint/user and writes the tarball.
# Environment: TETHER_CRANE (default: crane from the k8s-env cache).
set -euo pipefail
(($# >= 4)) || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
REF=$1 OUT=$2 ENTRY=$3; shift 3
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CRANE=${TETHER_CRANE:-$("$ROOT/scripts/k8s-env.sh" bin-dir)/crane}
[[ -x $CRANE ]] || { echo "oci-image: crane not found at $CRANE (run scripts/k8s-env.sh build)" >&2; exit 1; }
IMAGE_UID=65532

W=$(mktemp -d)
REG_PID=""
cleanup() { [[ -n $REG_PID ]] && kill "$REG_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

mkdir -p "$W/root"
for f in "$@"; do
  [[ -f $f ]] || { echo "oci-image: no such file: $f" >&2; exit 1; }
  install -m 0755 "$f" "$W/root/$(basename "$f")"
done
# Reproducible layer: fixed owner, mtime and order.
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$W/root" -cf "$W/layer.tar" .

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$CRANE" registry serve --address "127.0.0.1:$port" >"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  kill -0 "$REG_PID" 2>/dev/null || { cat "$W/registry.log" >&2; exit 1; }
  sleep 0.1
done
# Loopback registries are spoken to over plain HTTP by go-containerregistry.
tmp_ref=127.0.0.1:$port/build:latest
"$CRANE" append --oci-empty-base -f "$W/layer.tar" -t "$tmp_ref" >/dev/null
"$CRANE" mutate "$tmp_ref" --entrypoint "$ENTRY" --user "$IMAGE_UID:$IMAGE_UID" \
  --set-platform linux/amd64 -t "$REF" -o "$OUT"
echo "oci-image: $REF -> $OUT ($(du -k "$OUT" | cut -f1) KiB)"
