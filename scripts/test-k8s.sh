#!/usr/bin/env bash
# test-k8s.sh: build (or reuse) the Kubernetes test control plane, start it, run the Kubernetes
# tests against it, and ALWAYS tear it down. Fails if the environment cannot be built or started:
# with TETHER_REQUIRE_K8S=1 exported, the tests fail instead of skipping.
#
#   scripts/test-k8s.sh                      # cargo test -p tether-tests
#   scripts/test-k8s.sh -p tether-operator   # extra/other cargo test arguments are passed through
#   scripts/test-k8s.sh -p tether-tests -- --nocapture watch
#
# Set TETHER_K8S_KEEP=1 to leave the environment running afterwards for debugging
# (then: eval "$(scripts/k8s-env.sh env)"; ...; scripts/k8s-env.sh down). See docs/testing.md.
#
# The control plane and the tests run inside a private network namespace that this script creates
# (`unshare --net`): the relay-fleet tests bind relays to 10.250.0.2–9 on its loopback interface
# (the API server refuses loopback addresses in EndpointSlices), and the host's interfaces stay
# untouched. Everything that may download (Go modules, crates) is built before entering it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_SH=$ROOT/scripts/k8s-env.sh
# Addresses of fleet-test relays inside the namespace (operator/tests/fleetsupport: relay_ip).
FLEET_NET=10.250.0

args=("$@")
(( ${#args[@]} )) || args=(-p tether-tests)

if [[ -z ${TETHER_K8S_IN_NETNS:-} ]]; then
  "$ENV_SH" build >/dev/null
  cd "$ROOT"
  # The fleet tests (operator/tests/fleet.rs) run tether-relay as processes, as users do.
  echo "[test-k8s] cargo build -p tether-relay; cargo test --no-run ${args[*]}" >&2
  cargo build -p tether-relay
  cargo test --no-run "${args[@]}"
  echo "[test-k8s] entering a private network namespace" >&2
  exec unshare --net -- env TETHER_K8S_IN_NETNS=1 "$0" "$@"
fi
ip link set lo up
for i in 2 3 4 5 6 7 8 9; do ip addr add "$FLEET_NET.$i/32" dev lo; done
export TETHER_FLEET_NET=$FLEET_NET

teardown() {
  local rc=$?
  if [[ ${TETHER_K8S_KEEP:-0} == 1 ]]; then
    echo "[test-k8s] TETHER_K8S_KEEP=1: environment left running; stop it with scripts/k8s-env.sh down" >&2
  else
    "$ENV_SH" down || true
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

"$ENV_SH" up
eval "$("$ENV_SH" env)"
export TETHER_REQUIRE_K8S=1

cd "$ROOT"
echo "[test-k8s] cargo test ${args[*]}" >&2
cargo test --offline "${args[@]}"
