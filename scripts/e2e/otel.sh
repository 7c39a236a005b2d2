#!/usr/bin/env bash
#! OpenTelemetry traces of a stream setup, received by a REAL OTLP receiver.
#!
#! tools/otlp-sink (the OpenTelemetry Collector's otlpreceiver, built from the Go module proxy and
#! cached under ~/.cache/tether/otlp-sink/<hash>) listens on loopback; a relay, an agent (built with
#! its `otel` feature) and `tether connect` as ssh's ProxyCommand run with only the standard
#! variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME left to the defaults). One ssh
#! session must yield one trace with spans from all three processes, parented correctly
#! (tools/observability/check_traces.py), without the token anywhere. Then the same session with
#! the variables unset must export nothing at all.
#!
#! Usage (root): TETHER_BIN_DIR=target/debug scripts/e2e/otel.sh
#! Last line: `otel: N passed, M failed`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E_NAME=otel
# shellcheck source=scripts/e2e/lib.sh
source "$ROOT/scripts/e2e/lib.sh"

cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  cleanup_bg
  [[ $rc != 0 || $FAILED != 0 ]] && dump_logs
  if [[ -n $W && -d $W ]]; then
    if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then log "work dir kept: $W"; else rm -rf "$W"; fi
  fi
  [[ $rc != 0 && $FAILED == 0 ]] && FAILED=1
  echo "otel: $PASSED passed, $FAILED failed"
  [[ $FAILED == 0 ]] || exit 1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Builds tools/otlp-sink once per input hash; prints the binary's path.
build_sink() {
  local src=$ROOT/tools/otlp-sink hash dir
  hash=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)
  dir=${TETHER_CACHE:-$HOME/.cache/tether}/otlp-sink/$hash
  if [[ ! -x $dir/otlp-sink ]]; then
    mkdir -p "$dir"
    local t0=$SECONDS
    (cd "$src" && GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "-s -w" -o "$dir/otlp-sink.tmp" .) >&2 || die "building otlp-sink failed"
    mv "$dir/otlp-sink.tmp" "$dir/otlp-sink"
    log "built otlp-sink in $((SECONDS - t0)) s" >&2
  fi
  echo "$dir/otlp-sink"
}

main() {
  export PATH=$PATH:/usr/local/go/bin
  find_binaries tether tether-relay tether-agent
  local sink
  sink=$(build_sink)
  W=$(mktemp -d /tmp/tether-otel.XXXXXX)
  mkdir -p "$W/logs"
  read -r RELAY ADMIN SSHD_PORT OTLP <<<"$(free_ports 4)"
  make_pki plant-a/pump-7
  start_bg otlp-sink "$sink" -http "127.0.0.1:$OTLP" -out "$W/traces.jsonl"
  wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$OTLP" || die "otlp-sink did not listen"
  # Standard variables only; a short batch delay so the test need not wait 5 s per process.
  local otel=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP" OTEL_BSP_SCHEDULE_DELAY=200)
  start_relay relay "$RELAY" "$ADMIN" "${otel[@]}"
  start_sshd
  start_agent agent 0 "$RELAY" "" "${otel[@]}"
  local deadline=$((SECONDS + 30))
  until [[ $(metric "http://127.0.0.1:$ADMIN" tether_relay_connected_devices) == 1 ]]; do
    ((SECONDS < deadline)) || die "agent never connected"
    sleep 0.25
  done
  ssh_opts plant-a/pump-7 "$W/0-22.token" "$RELAY" "${otel[@]}"
  local out
  out=$(ssh "${SSH_OPTS[@]}" "$(id -un)@pump-7" 'echo traced' 2>>"$W/logs/ssh.log") && [[ $out == traced ]] \
    && pass "ssh through the tunnel with tracing on" || fail "ssh with tracing on: $out"
  # The relay's and agent's stream spans end with the stream; give the batches time to arrive.
  deadline=$((SECONDS + 20))
  until python3 "$ROOT/tools/observability/check_traces.py" "$W/traces.jsonl" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || break
    sleep 0.5
  done
  local rc=0 report
  report=$(python3 "$ROOT/tools/observability/check_traces.py" "$W/traces.jsonl" --forbid "$W/0-22.token") || rc=$?
  printf '%s\n' "$report"
  PASSED=$((PASSED + $(grep -c '^PASS' <<<"$report" || true)))
  FAILED=$((FAILED + $(grep -c '^FAIL' <<<"$report" || true)))
  [[ $rc == 0 ]] || [[ $(grep -c '^FAIL' <<<"$report") != 0 ]] || fail "check_traces.py exited $rc"

  # Variables unset: relay, agent and client restarted without them; nothing may arrive.
  stop_bg agent
  stop_bg relay
  local before
  before=$(wc -c <"$W/traces.jsonl")
  start_relay relay-plain "$RELAY" "$ADMIN"
  start_agent agent-plain 0 "$RELAY" ""
  deadline=$((SECONDS + 30))
  until [[ $(metric "http://127.0.0.1:$ADMIN" tether_relay_connected_devices) == 1 ]]; do
    ((SECONDS < deadline)) || die "agent never reconnected"
    sleep 0.25
  done
  ssh_opts plant-a/pump-7 "$W/0-22.token" "$RELAY"
  out=$(ssh "${SSH_OPTS[@]}" "$(id -un)@pump-7" 'echo untraced' 2>>"$W/logs/ssh.log") && [[ $out == untraced ]] \
    && pass "ssh through the tunnel with tracing off" || fail "ssh with tracing off: $out"
  stop_bg agent-plain
  stop_bg relay-plain
  sleep 1
  if [[ $(wc -c <"$W/traces.jsonl") == "$before" ]]; then
    pass "with OTEL_* unset nothing was exported ($before bytes before and after)"
  else
    fail "spans arrived with OTEL_* unset"
  fi
}

main "$@"
