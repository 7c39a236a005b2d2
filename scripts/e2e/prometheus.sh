#!/usr/bin/env bash
#! The dashboards and alert rules against a REAL Prometheus scraping real Tether processes.
#!
#! Starts, all on loopback: two standalone relays (pods relays-0, relays-1 of namespace
#! tether-system, as a ServiceMonitor would label them), two agents (one serving metrics),
#! sshd, the real Kubernetes control plane (scripts/k8s-env.sh) with tether-operator reconciling a
#! Device and a DeviceStream, and Debian's Prometheus scraping all of them every second with the
#! generated alert rules loaded. Then real traffic: ssh commands through both relays, scp of
#! $SCP_MIB MiB to the device and back, and refused tokens (wrong port, foreign PKI, port not in
#! the agent's allowlist). Finally tools/observability/check_queries.py runs every panel query of
#! every dashboard and every alert expression against Prometheus' HTTP API (fails on parse
#! errors and empty results) and compares the throughput panels with the relays' byte counters;
#! stopping relays-1 must then make TetherRelayDown pending.
#!
#! Usage (root; needs prometheus/promtool, openssh, curl, python3):
#!   TETHER_BIN_DIR=target/debug scripts/e2e/prometheus.sh
#!   KEEP_WORKDIR=1 ...      keep the work dir (Prometheus data, logs)
#!   E2E_NO_OPERATOR=1 ...   debugging aid: no control plane/operator (operator queries then fail)
#!   PNG_OUT=docs/img/fleet-overview.png ...   also render the Fleet overview (needs matplotlib)
#! Last line: `prometheus: N passed, M failed`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E_NAME=prometheus
# shellcheck source=scripts/e2e/lib.sh
source "$ROOT/scripts/e2e/lib.sh"
SCP_MIB=${SCP_MIB:-50}
NS=tether-system
K8S_UP=0

cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  cleanup_bg
  [[ $K8S_UP == 1 ]] && "$ROOT/scripts/k8s-env.sh" down >/dev/null 2>&1
  [[ $rc != 0 || $FAILED != 0 ]] && dump_logs
  if [[ -n $W && -d $W ]]; then
    if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then log "work dir kept: $W"; else rm -rf "$W"; fi
  fi
  [[ $rc != 0 && $FAILED == 0 ]] && FAILED=1
  echo "prometheus: $PASSED passed, $FAILED failed"
  [[ $FAILED == 0 ]] || exit 1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

install_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return
  log "installing Debian's prometheus (also provides promtool)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || die "apt-get install prometheus failed"
}

start_operator() {
  "$ROOT/scripts/k8s-env.sh" build >/dev/null
  "$ROOT/scripts/k8s-env.sh" up >"$W/logs/k8s-up.log" 2>&1 || die "control plane did not start"
  K8S_UP=1
  eval "$("$ROOT/scripts/k8s-env.sh" env)"
  kubectl apply --server-side -f "$ROOT/crds/" >/dev/null || die "cannot apply the CRDs"
  kubectl create namespace "$NS" >/dev/null
  kubectl create namespace plant-a >/dev/null
  start_bg operator env RUST_LOG=info "$BIN/tether-operator" --namespace "$NS" \
    --admin-addr "127.0.0.1:$OP_PORT" --identity tether-operator-0
  wait_for 60 lcurl -f "http://127.0.0.1:$OP_PORT/ready" || die "operator never became ready"
  kubectl apply -f - >/dev/null <<YAML
apiVersion: tether.dev/v1alpha1
kind: Device
metadata: {name: pump-7, namespace: plant-a}
spec: {allowedPorts: [22]}
---
apiVersion: tether.dev/v1alpha1
kind: DeviceStream
metadata: {name: pump-7-ssh, namespace: plant-a}
spec: {device: pump-7, port: 22, ttl: 30m}
YAML
  local deadline=$((SECONDS + 60))
  until [[ $(metric "http://127.0.0.1:$OP_PORT" 'tether_operator_devices{ready="false"}') == 1 ]] \
    && [[ -n $(metric "http://127.0.0.1:$OP_PORT" tether_operator_device_certificate_earliest_expiry_timestamp_seconds) ]]; do
    ((SECONDS < deadline)) || die "operator never reported the Device (credentials issued)"
    sleep 0.5
  done
  pass "operator leads, issued the Device's credentials and exports its inventory"
}

start_prometheus() {
  cat >"$W/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/charts/tether/rules/tether.rules.yaml
scrape_configs:
  - job_name: tether-relays
    static_configs:
      - targets: ["127.0.0.1:$ADMIN0"]
        labels: {namespace: $NS, pod: relays-0}
      - targets: ["127.0.0.1:$ADMIN1"]
        labels: {namespace: $NS, pod: relays-1}
  - job_name: tether-agent
    static_configs:
      - targets: ["127.0.0.1:$AGENT_METRICS"]
        labels: {device: plant-a/pump-7}
  - job_name: tether-operator
    static_configs:
      - targets: ["127.0.0.1:$OP_PORT"]
        labels: {namespace: $NS, pod: tether-operator-0}
YAML
  promtool check config "$W/prometheus.yml" >"$W/logs/promtool-config.log" 2>&1 \
    || die "promtool rejects the config: $(cat "$W/logs/promtool-config.log")"
  start_bg prometheus prometheus --config.file="$W/prometheus.yml" --storage.tsdb.path="$W/prom" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --storage.tsdb.retention.time=1d
  PROM="http://127.0.0.1:$PROM_PORT"
  wait_for 30 lcurl -f "$PROM/-/ready" || die "prometheus never became ready"
  local deadline=$((SECONDS + 30)) up
  local want=4
  [[ ${E2E_NO_OPERATOR:-0} == 1 ]] && want=3
  until up=$(lcurl "$PROM/api/v1/query?query=count(up==1)" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)') && [[ $up == "$want" ]]; do
    ((SECONDS < deadline)) || die "prometheus scrapes $up of $want targets"
    sleep 0.5
  done
  pass "prometheus $(prometheus --version 2>&1 | head -n1 | awk '{print $3}') scrapes 2 relays, the agent and the operator"
}

relay_bytes() { # ADMIN_PORT DIRECTION
  local v
  v=$(metric "http://127.0.0.1:$1" "tether_relay_bytes_total{direction=\"$2\"}")
  echo "${v:-0}"
}

refusals() {
  expect_refusal plant-a/pump-7 "$W/0-22.token" 2222 "$RELAY0" token_wrong_port
  expect_refusal plant-a/pump-7 "$W/foreign.token" 22 "$RELAY0" token_signature
  expect_refusal plant-a/pump-7 "$W/0-2222.token" 2222 "$RELAY0" device_port_not_allowed
  expect_refusal plant-a/pump-8 "$W/foreign.token" 22 "$RELAY1" token_signature
}

traffic() {
  local out
  # A counter's first sample shows no increase to rate(): refuse once early, again at the end.
  refusals
  ssh_opts plant-a/pump-7 "$W/0-22.token" "$RELAY0"
  out=$(ssh "${SSH_OPTS[@]}" "$SSH_USER@pump-7" 'echo tether-ok' 2>>"$W/logs/ssh.log") \
    && [[ $out == tether-ok ]] && pass "ssh through relays-0" || fail "ssh through relays-0: $out"
  head -c "$((SCP_MIB * 1024 * 1024))" /dev/urandom >"$W/up.bin"
  mkdir -p "$W/device"
  local to0 from0
  to0=$(relay_bytes "$ADMIN0" service_to_device)
  from0=$(relay_bytes "$ADMIN0" device_to_service)
  scp -q "${SSH_OPTS[@]}" "$W/up.bin" "$SSH_USER@pump-7:$W/device/up.bin" 2>>"$W/logs/scp.log" \
    && scp -q "${SSH_OPTS[@]}" "$SSH_USER@pump-7:$W/device/up.bin" "$W/down.bin" 2>>"$W/logs/scp.log" \
    && cmp -s "$W/up.bin" "$W/down.bin" && pass "scp $SCP_MIB MiB to the device and back" \
    || fail "scp through relays-0"
  local sent=$((SCP_MIB * 1024 * 1024)) to1 from1
  to1=$(relay_bytes "$ADMIN0" service_to_device)
  from1=$(relay_bytes "$ADMIN0" device_to_service)
  SCP_TO=$(awk -v a="$to0" -v b="$to1" 'BEGIN { printf "%d", b - a }')
  SCP_FROM=$(awk -v a="$from0" -v b="$from1" 'BEGIN { printf "%d", b - a }')
  # SSH adds its own framing and MACs (a few %); the relay must count at least the file.
  if awk -v s="$sent" -v u="$SCP_TO" -v d="$SCP_FROM" 'BEGIN { exit !(u >= s && d >= s && u < 1.1 * s && d < 1.1 * s) }'; then
    pass "relays-0 counted the scp: $SCP_TO bytes to the device, $SCP_FROM back (file $sent)"
  else
    fail "relays-0 counted $SCP_TO / $SCP_FROM bytes for a $sent-byte file each way"
  fi
  ssh_opts plant-a/pump-8 "$W/1-22.token" "$RELAY1"
  out=$(ssh "${SSH_OPTS[@]}" "$SSH_USER@pump-8" 'echo tether-ok' 2>>"$W/logs/ssh.log") \
    && [[ $out == tether-ok ]] && pass "ssh through relays-1" || fail "ssh through relays-1: $out"
  sleep 2
  refusals
  # Hostile bytes instead of a ClientHello: a handshake failure (side unknown, bad_client_hello).
  printf 'GET / HTTP/1.0\r\n\r\n' | timeout 5 bash -c "cat > /dev/tcp/127.0.0.1/$RELAY0" || true
  local deadline=$((SECONDS + 10))
  until [[ -n $(metric "http://127.0.0.1:$ADMIN0" 'tether_relay_handshake_failures_total{reason="bad_client_hello",side="unknown"}') ]]; do
    ((SECONDS < deadline)) || { fail "relays-0 did not count the garbage connection"; return; }
    sleep 0.25
  done
  pass "relays-0 counted a garbage connection as a handshake failure"
}

main() {
  install_prometheus
  if [[ ${E2E_NO_OPERATOR:-0} == 1 ]]; then
    # Debugging aid only: operator panels and alerts then fail for lack of data.
    find_binaries tether tether-relay tether-agent
  else
    find_binaries tether tether-relay tether-agent tether-operator
  fi
  W=$(mktemp -d /tmp/tether-prom.XXXXXX)
  mkdir -p "$W/logs"
  read -r RELAY0 ADMIN0 RELAY1 ADMIN1 SSHD_PORT AGENT_METRICS OP_PORT PROM_PORT <<<"$(free_ports 8)"
  make_pki plant-a/pump-7 plant-a/pump-8
  start_relay relays-0 "$RELAY0" "$ADMIN0"
  start_relay relays-1 "$RELAY1" "$ADMIN1"
  start_sshd
  start_agent agent-0 0 "$RELAY0" "metrics-listen = \"127.0.0.1:$AGENT_METRICS\""
  start_agent agent-1 1 "$RELAY1" ""
  wait_for 30 lcurl -f "http://127.0.0.1:$AGENT_METRICS/ready" || die "agent-0 never connected"
  [[ ${E2E_NO_OPERATOR:-0} == 1 ]] || start_operator
  start_prometheus
  T0=$(date +%s)
  traffic
  # Let the last samples land (1 s scrapes) and the rate windows (4 s) cover the end.
  sleep 6
  T1=$(date +%s)
  local out rc=0
  out=$(python3 "$ROOT/tools/observability/check_queries.py" --prometheus "$PROM" \
    --start "$((T0 - 10))" --end "$T1" --namespace "$NS" --relays relays-0,relays-1 \
    --throughput-to-device "$SCP_TO" --throughput-from-device "$SCP_FROM") || rc=$?
  printf '%s\n' "$out" | tee "$W/logs/check_queries.log"
  local p f
  p=$(grep -c '^PASS' <<<"$out" || true)
  f=$(grep -c '^FAIL' <<<"$out" || true)
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
  [[ $rc == 0 || $f != 0 ]] || fail "check_queries.py exited $rc"
  if [[ -n ${PNG_OUT:-} ]]; then
    python3 "$ROOT/tools/observability/render_png.py" --prometheus "$PROM" --start "$((T0 - 10))" \
      --end "$T1" --out "$PNG_OUT" && pass "rendered $PNG_OUT" || fail "rendering $PNG_OUT"
  fi
  # A real alert: stop relays-1 and TetherRelayDown must go pending for it (for: 2m).
  stop_bg relays-1
  local deadline=$((SECONDS + 30)) state=""
  until state=$(lcurl "$PROM/api/v1/query?query=ALERTS%7Balertname%3D%22TetherRelayDown%22%7D" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(",".join(x["metric"]["pod"]+"="+x["metric"]["alertstate"] for x in r))') \
    && [[ $state == relays-1=pending ]]; do
    ((SECONDS < deadline)) || break
    sleep 1
  done
  [[ $state == relays-1=pending ]] && pass "stopping relays-1 makes TetherRelayDown pending for it alone" \
    || fail "TetherRelayDown after stopping relays-1: '${state}'"
}

main "$@"
