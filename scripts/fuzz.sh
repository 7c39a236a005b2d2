#!/usr/bin/env bash
#! Runs every cargo-fuzz target for a bounded time and reports executions and crashes per target.
#!
#! Targets: proto/fuzz (client_hello, connect_head, preface, proxy_header, token) and agent/fuzz
#! (config_file). Each starts from its committed seed corpus (read only: new inputs go to a temp
#! corpus, so the tree stays clean). cargo-fuzz is built once into
#! ~/.cache/tether/cargo-fuzz-<version>; the nightly toolchain must be installed (rustup).
#!
#! Usage: scripts/fuzz.sh [--seconds N] [target...]   (default 20 s each, every target)
#!   scripts/test.sh fuzz      the CI smoke (20 s each)
#!   scripts/fuzz.sh --seconds 300 > fuzz.log &      a longer local run
#! A crash (libFuzzer exit status ≠ 0) fails the run; its input is kept in <crate>/fuzz/artifacts/.
#! Last line: `fuzz: N targets passed, M failed`.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO_FUZZ_VERSION=0.13.1
SECONDS_EACH=20
SELECTED=()
while (($#)); do
  case $1 in
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    -*) echo "usage: $0 [--seconds N] [target...]" >&2; exit 64 ;;
    *) SELECTED+=("$1"); shift ;;
  esac
done
# target -> crate directory holding fuzz/
declare -A CRATE=([client_hello]=proto [connect_head]=proto [preface]=proto [proxy_header]=proto
  [token]=proto [config_file]=agent)
ORDER=(client_hello connect_head preface proxy_header token config_file)
((${#SELECTED[@]})) || SELECTED=("${ORDER[@]}")
# Largest input per target: a ClientHello can be several records; the rest are small.
declare -A MAX_LEN=([client_hello]=20000)

log() { printf '[fuzz %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

ensure_cargo_fuzz() {
  local root=$HOME/.cache/tether/cargo-fuzz-$CARGO_FUZZ_VERSION
  if [[ ! -x $root/bin/cargo-fuzz ]]; then
    log "building cargo-fuzz $CARGO_FUZZ_VERSION into $root (once per machine)"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$root" \
      --target-dir "$HOME/.cache/tether/cargo-fuzz-build" || return 1
    rm -rf "$HOME/.cache/tether/cargo-fuzz-build"
  fi
  export PATH="$root/bin:$PATH"
}

ensure_cargo_fuzz || { echo "fuzz: cannot build cargo-fuzz"; exit 1; }
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is not installed (rustup toolchain install nightly); cargo-fuzz needs it" >&2
  echo "fuzz: 0 targets passed, ${#SELECTED[@]} failed"
  exit 1
fi
# Sanitizer builds outside the clone: CI starts from a fresh clone each time, and a cold build of
# the agent's dependencies under ASan takes minutes; cargo rebuilds what changed.
FUZZ_TARGET=${TETHER_FUZZ_TARGET_DIR:-$HOME/.cache/tether/fuzz-target}
WORK=$(mktemp -d /tmp/tether-fuzz.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
passed=0 failed=0
# Build each crate's targets once, before the clock of any target starts.
for crate in $(for t in "${SELECTED[@]}"; do echo "${CRATE[$t]}"; done | sort -u); do
  t0=$SECONDS
  (cd "$ROOT/$crate" && cargo +nightly fuzz build --release --target-dir "$FUZZ_TARGET/$crate") \
    >"$WORK/build-$crate.log" 2>&1 ||
    { tail -n 30 "$WORK/build-$crate.log"; echo "fuzz: build of $crate/fuzz failed"; exit 1; }
  log "built $crate/fuzz targets in $((SECONDS - t0)) s"
done
for t in "${SELECTED[@]}"; do
  crate=${CRATE[$t]:?unknown target $t}
  mkdir -p "$WORK/corpus-$t"
  (cd "$ROOT/$crate" && cargo +nightly fuzz run --release --target-dir "$FUZZ_TARGET/$crate" "$t" \
    "$WORK/corpus-$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len="${MAX_LEN[$t]:-4096}" -print_final_stats=1) \
    >"$WORK/$t.log" 2>&1
  rc=$?
  execs=$(awk '/stat::number_of_executed_units:/ { print $2 }' "$WORK/$t.log")
  cov=$(grep -o 'cov: [0-9]*' "$WORK/$t.log" | tail -n 1)
  if [[ $rc == 0 ]]; then
    passed=$((passed + 1))
    log "$t: ${execs:-?} executions in ${SECONDS_EACH} s, 0 crashes (${cov:-cov: ?}, corpus $(ls "$WORK/corpus-$t" | wc -l) new inputs)"
  else
    failed=$((failed + 1))
    log "$t: CRASH or error (exit $rc) after ${execs:-?} executions:"
    grep -E "ERROR|panicked|SUMMARY|artifact" "$WORK/$t.log" | head -n 10
    tail -n 20 "$WORK/$t.log"
  fi
done
echo "fuzz: $passed targets passed, $failed failed"
((failed == 0))
