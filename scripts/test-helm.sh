#!/usr/bin/env bash
# test-helm.sh: the helm suite. Builds (or reuses) the node binaries and Tether's images, starts
# the single-node cluster (scripts/k8s-env.sh up --node), imports the images, runs
# scripts/e2e/helm.sh inside the node's namespace and ALWAYS tears the node down.
#   scripts/test-helm.sh              # TETHER_K8S_KEEP=1 leaves the node running for debugging
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_SH=$ROOT/scripts/k8s-env.sh
export TETHER_K8S_NODE=1
export TETHER_IMAGE_TAG=${TETHER_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)}
TAG2=$TETHER_IMAGE_TAG-upgrade
REPO=ghcr.io/tether-dev
BIN_DIR=$("$ENV_SH" build)
"$ROOT/scripts/images.sh"

teardown() {
  local rc=$?
  if [[ ${TETHER_K8S_KEEP:-0} == 1 ]]; then
    echo "[test-helm] TETHER_K8S_KEEP=1: node left running; stop it with scripts/k8s-env.sh down --node" >&2
  else
    "$ENV_SH" down || true
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM
"$ENV_SH" up
"$ENV_SH" status
"$ENV_SH" import "$ROOT"/target/images/tether-{operator,relay,agent}.tar
# The upgrade test rolls the relays to another tag of the same image.
"$ENV_SH" exec -- ctr --address "$ROOT/.testenv/node/containerd/containerd.sock" -n k8s.io images tag \
  "$REPO/tether-relay:$TETHER_IMAGE_TAG" "$REPO/tether-relay:$TAG2" >/dev/null
"$ENV_SH" exec -- env TETHER_IMAGE_TAG2="$TAG2" \
  TETHER_BIN_DIR="$ROOT/target/x86_64-unknown-linux-gnu/release" "$ROOT/scripts/e2e/helm.sh"
"$ENV_SH" status | sed 's/^/[test-helm] /'
: "$BIN_DIR"
