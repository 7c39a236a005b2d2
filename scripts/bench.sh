#!/usr/bin/env bash
# Tether's benchmark harness (issue 5): builds tether-bench and tether-relay, installs rathole
# 0.5.0 for the full run, raises the file-descriptor limit and runs every scenario.
#
#   scripts/bench.sh            full run (~10 min on 2 cores); writes docs/benchmarks.{json,md}
#   scripts/bench.sh --smoke    seconds; CI: asserts every scenario ran and produced sane figures
#
# Extra arguments go to tether-bench (e.g. `--only 1,3`, `--idle-devices 2000`).
# TETHER_BENCH_CACHE (default ~/.cache/tether-bench) holds the rathole install, outside the repo.
set -euo pipefail

cd "$(dirname "$0")/.."
cache="${TETHER_BENCH_CACHE:-$HOME/.cache/tether-bench}"
smoke=false
for arg in "$@"; do
  [[ "$arg" == "--smoke" ]] && smoke=true
done

cargo build --release -p tether-bench -p tether-relay

rathole_args=()
rathole="$cache/rathole/bin/rathole"
if [[ "$smoke" == false || -x "$rathole" ]]; then
  if [[ ! -x "$rathole" ]]; then
    mkdir -p "$cache"
    echo "installing rathole 0.5.0 into $cache/rathole (a few minutes) ..." >&2
    # rathole 0.5.0's lock file pins time 0.3.29, which newer compilers reject (E0282); fall back
    # to fresh dependency resolution within rathole's own semver ranges when --locked fails.
    if ! cargo install rathole --version 0.5.0 --locked --root "$cache/rathole" >"$cache/install.log" 2>&1; then
      echo "rathole: --locked build failed (see $cache/install.log); retrying without --locked" >&2
      cargo install rathole --version 0.5.0 --root "$cache/rathole" >>"$cache/install.log" 2>&1 \
        || echo "rathole: build failed; the run records rathole as unavailable" >&2
    fi
  fi
  [[ -x "$rathole" ]] && rathole_args=(--rathole "$rathole")
fi

# Scenario 5 holds 10,000 device connections in the relay and as many in the harness.
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < 10500 )) && [[ "$smoke" == false ]]; then
  echo "warning: open-file limit is $(ulimit -n); scenario 5 needs ~10,100 per process" >&2
fi

# Run copies: other work in this checkout may rebuild target/release while the run is going (the
# harness re-executes itself for the bare TLS baseline and starts tether-relay by path).
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
cp target/release/tether-bench target/release/tether-relay "$bin/"
"$bin/tether-bench" --relay-bin "$bin/tether-relay" "${rathole_args[@]}" "$@"
