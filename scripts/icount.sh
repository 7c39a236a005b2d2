#!/usr/bin/env bash
# The instruction-count gate (issue 14): counts the instructions `tether-relay` spends on a fixed
# workload (one stream setup with its token check; 64 MiB relayed one way; 1,000 keepalive rounds)
# under `valgrind --tool=callgrind`, and fails when a phase grew beyond the threshold recorded in
# bench/icount-baseline.json (docs/benchmarks.md, "Instruction-count gate", says why that much).
#
#   scripts/icount.sh             compare with the baseline (CI)
#   scripts/icount.sh --update    measure and rewrite the baseline (an intended change: commit it
#                                 with the reason, e.g. "icount: +3% relay_64mib, h2 frame copy")
#   scripts/icount.sh --runs N    measure N times and print every count (spread check)
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=bench/icount-baseline.json
mode=compare runs=1
while (($#)); do
  case $1 in
    --update) mode=update ;;
    --runs) runs=$2; mode=spread; shift ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
  shift
done
if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
  echo "installing valgrind (Debian) ..." >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind
fi
cargo build --release --locked -p tether-bench -p tether-relay
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
cp target/release/tether-bench target/release/tether-relay "$bin/"
run() { "$bin/tether-bench" icount --callgrind --relay-bin "$bin/tether-relay" "$@"; }
case $mode in
  compare) run --baseline "$baseline" ;;
  update) run --baseline "$baseline" --update ;;
  spread) for i in $(seq "$runs"); do run --out "$bin/run-$i.json"; cat "$bin/run-$i.json"; done ;;
esac
