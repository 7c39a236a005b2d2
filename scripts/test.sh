#!/usr/bin/env bash
# The project's one test command (README, .ci/run). On a fresh Debian machine it installs what the
# suites need, then runs every suite and prints one summary line:
#
#   1. lint       cargo fmt --check, cargo clippy -D warnings
#   1b. deny      cargo deny: licences, bans, sources (advisories when the RustSec DB is reachable);
#                 cargo-deny is built once into ~/.cache/tether, in the background from the start
#   2. unit+int   cargo test for every crate (proto parsers, relay/agent/cli in-process tunnels)
#   3. e2e        real OpenSSH (ssh + scp) and curl through real relay/agent/tether binaries,
#                 the agent behind an authenticating HTTP CONNECT proxy (scripts/e2e/ssh.sh);
#                 the userspace impairment wire's self-test (scripts/netem/wire.py); the
#                 factory floor: the device in a network namespace behind nftables, the relay in
#                 its own with egress counters, a dead device link (scripts/e2e/factory.sh)
#   4. k8s        tests against a real etcd + kube-apiserver + controller-manager, kubectl and helm
#                 built from the Go module proxy and cached outside the repo (scripts/test-k8s.sh)
#   5. helm       Tether installed with helm on a real single-node cluster (kubelet, containerd,
#                 kube-proxy in a private network namespace): operator and relays as pods from
#                 locally built images, ssh/scp through them, failover, upgrade, uninstall
#                 (scripts/test-helm.sh, scripts/e2e/helm.sh)
#   6. bench      a smoke run of the benchmark harness (scripts/bench.sh --smoke), then the
#                 instruction-count gate: the relay's hot paths under callgrind against the
#                 committed baseline (scripts/icount.sh; bench/icount-baseline.json)
#   7. obs        dashboards/alert rules: drift + structure tests, promtool check/test rules; a real
#                 Prometheus scraping relays, an agent and the operator runs every panel query and
#                 alert (scripts/e2e/prometheus.sh); OTLP traces into a real receiver
#                 (scripts/e2e/otel.sh)
#   8. fuzz       every cargo-fuzz target (proto/fuzz, agent/fuzz) for 20 s from its committed
#                 seeds, nightly toolchain, cargo-fuzz cached in ~/.cache/tether (scripts/fuzz.sh)
#
# The Kubernetes build (8-17 min cold) starts in the background first so it overlaps the Rust build.
# Usage: scripts/test.sh [suite...]   (default: all; names as above)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TERM_COLOR=never RUST_BACKTRACE=1
# A one-off build (CI) gains nothing from incremental artifacts: they only cost disk and time.
[[ -n ${CI:-} ]] && export CARGO_INCREMENTAL=0
SUITES=("$@")
((${#SUITES[@]})) || SUITES=(lint deny unit+int e2e k8s helm bench obs fuzz)
passed=0 failed=0 failed_names=()

log() { printf '\n[test.sh] %s\n' "$*"; }
wants() { local s; for s in "${SUITES[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

install_system_packages() {
  local missing=()
  command -v sshd >/dev/null || [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
  command -v ssh >/dev/null || missing+=(openssh-client)
  command -v curl >/dev/null || missing+=(curl)
  command -v tinyproxy >/dev/null || [[ -x /usr/bin/tinyproxy ]] || missing+=(tinyproxy)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v nft >/dev/null || [[ -x /usr/sbin/nft ]] || missing+=(nftables)
  command -v ip >/dev/null || [[ -x /usr/sbin/ip ]] || missing+=(iproute2)
  command -v promtool >/dev/null || missing+=(prometheus) # Debian's; also brings promtool
  command -v callgrind_control >/dev/null || missing+=(valgrind) # the instruction-count gate
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# Each suite's output goes to the terminal and to $LOG_DIR/<suite>.log; the summary at the end
# repeats the lines that explain a failure, so the tail of a long CI log still says why.
LOG_DIR=${TETHER_TEST_LOG_DIR:-$ROOT/target/test-logs}
mkdir -p "$LOG_DIR"

run_suite() {
  local name=$1; shift
  log "suite $name: $*"
  local t0=$SECONDS
  if "$@" 2>&1 | tee "$LOG_DIR/$name.log"; then
    passed=$((passed + 1)); log "suite $name passed in $((SECONDS - t0)) s"
  else
    failed=$((failed + 1)); failed_names+=("$name"); log "suite $name FAILED after $((SECONDS - t0)) s"
  fi
}

# For a failed suite: the lines that usually name the cause, then the suite's last lines.
explain_failure() {
  local f=$LOG_DIR/$1.log
  log "---- why suite $1 failed (full log: $f) ----"
  grep -n -E "panicked at|^test .* FAILED|^---- .* stdout ----|error(\[E[0-9]+\])?:|ERROR|Error:|failed|FAIL:|timed out" "$f" |
    grep -v -E "^[0-9]+:test result: ok" | head -n 60
  printf -- '---- last 40 lines of %s ----\n' "$f"
  tail -n 40 "$f"
  printf -- '---- free disk: %s\n' "$(df -h "$ROOT" | tail -n 1)"
}

# cargo-deny, built once per machine into ~/.cache/tether keyed by version (a cold build takes
# minutes; the cached binary none).
CARGO_DENY_VERSION=0.18.3
ensure_cargo_deny() {
  local root=$HOME/.cache/tether/cargo-deny-$CARGO_DENY_VERSION
  if [[ ! -x $root/bin/cargo-deny ]]; then
    log "building cargo-deny $CARGO_DENY_VERSION into $root (once per machine)"
    cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION" --root "$root" \
      --target-dir "$HOME/.cache/tether/cargo-deny-build" || return 1
    rm -rf "$HOME/.cache/tether/cargo-deny-build"
  fi
  export PATH="$root/bin:$PATH"
}

# Dependency policy (deny.toml): licences, bans, sources, offline (--disable-fetch). Advisories
# need the RustSec database, a GitHub repository: fetched when reachable; where it is not (this
# project's machines reach only package registries), the suite says so loudly and passes on the
# other three checks rather than pretending advisories were checked.
deny() {
  if [[ -n ${DENY_BUILD_PID:-} ]]; then
    log "waiting for the background cargo-deny build (log: $LOG_DIR/cargo-deny-build.log)"
    # Polled, not `wait`ed: suites run in a pipeline subshell, of which the build is no child.
    while kill -0 "$DENY_BUILD_PID" 2>/dev/null; do sleep 5; done
    [[ -x $HOME/.cache/tether/cargo-deny-$CARGO_DENY_VERSION/bin/cargo-deny ]] ||
      { cat "$LOG_DIR/cargo-deny-build.log"; return 1; }
  fi
  ensure_cargo_deny || return 1
  cargo deny --locked check --disable-fetch licenses bans sources || return 1
  local out
  if out=$(timeout 120 cargo deny --locked check advisories 2>&1); then
    printf '%s\n' "$out" | tail -n 3
  elif grep -q "failed to fetch advisory database" <<<"$out"; then
    log "WARNING: advisories NOT checked: the RustSec advisory database is unreachable from here"
  else
    printf '%s\n' "$out"
    return 1
  fi
}

lint() {
  cargo fmt --all -- --check && cargo clippy --workspace --all-targets --locked -- -D warnings
}

unit_and_integration() {
  # tether-tests and the operator's tests need the API server: they run in the k8s suite.
  cargo test --workspace --locked --exclude tether-tests --exclude tether-operator
}

e2e() {
  # The impairment wire (delay/loss/rate between namespaces; the kernel has no netem) checks
  # itself first: the tests that rely on it are only as good as its impairment.
  python3 scripts/netem/wire.py --self-test &&
    cargo build --release --locked -p tether-cli -p tether-relay -p tether-agent &&
    TETHER_BIN_DIR="$ROOT/target/release" scripts/e2e/ssh.sh &&
    TETHER_BIN_DIR="$ROOT/target/release" scripts/e2e/factory.sh
}

k8s() {
  # Waits for the background build started below, then runs the Kubernetes suites.
  local args=(-p tether-tests)
  [[ -d operator/tests ]] && args+=(-p tether-operator)
  [[ -d plugin/tests ]] && args+=(-p tether-plugin)
  scripts/test-k8s.sh "${args[@]}"
}

helm_suite() {
  scripts/test-helm.sh
}

bench() {
  scripts/bench.sh --smoke && scripts/icount.sh
}

obs() {
  # Debug binaries: dependencies are optimised in the dev profile, and the k8s suite has built
  # most of them already. The agent gets its optional metrics endpoint and trace export.
  python3 -m unittest tools/observability/test_dashboards.py &&
    promtool check rules charts/tether/rules/tether.rules.yaml &&
    promtool test rules tools/observability/rules.test.yaml &&
    cargo build --locked -p tether-cli -p tether-relay -p tether-operator -p tether-agent \
      --features tether-agent/metrics,tether-agent/otel &&
    TETHER_BIN_DIR="$ROOT/target/debug" scripts/e2e/otel.sh &&
    TETHER_BIN_DIR="$ROOT/target/debug" scripts/e2e/prometheus.sh
}

export PATH=$PATH:/usr/local/go/bin:$HOME/.cargo/bin
install_system_packages
log "disk: $(df -h "$ROOT" | tail -n 1); $(nproc) cores"
# cargo-deny's cold build takes minutes: start it now so it overlaps lint.
if wants deny && [[ ! -x $HOME/.cache/tether/cargo-deny-$CARGO_DENY_VERSION/bin/cargo-deny ]]; then
  log "building cargo-deny in the background"
  (renice -n 10 "$BASHPID" >/dev/null; ensure_cargo_deny) >"$LOG_DIR/cargo-deny-build.log" 2>&1 &
  DENY_BUILD_PID=$!
fi
if wants k8s || wants helm || wants obs; then
  log "starting the Kubernetes control-plane build in the background (cached when unchanged)"
  scripts/k8s-env.sh build --detach || log "WARNING: could not start the background build; the k8s suite will build in the foreground"
fi

wants lint && run_suite lint lint
wants deny && run_suite deny deny
wants unit+int && run_suite unit+int unit_and_integration
wants e2e && run_suite e2e e2e
wants k8s && run_suite k8s k8s
wants helm && run_suite helm helm_suite
wants bench && run_suite bench bench
wants obs && run_suite obs obs
wants fuzz && run_suite fuzz scripts/fuzz.sh --seconds "${TETHER_FUZZ_SECONDS:-20}"

for name in "${failed_names[@]}"; do explain_failure "$name"; done
log "failed suites: ${failed_names[*]:-none}"
echo "suites: $passed passed, $failed failed"
((failed == 0))
