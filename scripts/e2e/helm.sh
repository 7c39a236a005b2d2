#!/usr/bin/env bash
#! The helm suite: Tether installed with `helm install` on a real single-node cluster, operator and
#! relays running as pods from the images scripts/images.sh builds, a device agent and OpenSSH
#! outside the cluster. Runs INSIDE the node's namespace (scripts/test-helm.sh starts the node,
#! imports the images and calls this through `scripts/k8s-env.sh exec --node`).
#!
#! What it proves:
#!   * helm lint; the schema rejects a typo and a wrong type with a readable message;
#!     deploy/ is what the chart renders (no drift), the PrometheusRule carries the rules file;
#!     the Dockerfile matches the images;
#!   * helm install into a namespace enforcing the `restricted` Pod Security profile: the operator
#!     pods become Ready and one holds the Lease; the RelayPool's StatefulSet pods become Ready and
#!     the RelayPool status lists them; `helm template` | server-side dry-run with every toggle;
#!   * a device agent enrols from its Device's Secret, connects through the relays' NodePort, and
#!     a kubectl-applied DeviceStream carries an ssh command and a 50 MiB scp (sha256 compared);
#!   * the leading operator pod is killed: the standby takes over, credentials and tokens are not
#!     re-issued; a relay pod is deleted: it comes back and the device reconnects;
#!   * helm upgrade rolls the relays (new image tag) under a steady ssh setup load: failed setups
#!     are counted and printed;
#!   * helm uninstall: workloads gone, CRDs and user objects kept (crds.keep).
#! Environment: TETHER_IMAGE_TAG (tag of the imported images), TETHER_IMAGE_TAG2 (second tag of
#! the relay image, for the upgrade), TETHER_BIN_DIR (tether, tether-agent), KUBECONFIG, PATH
#! with kubectl and helm. Last line: `helm-e2e: N passed, M failed`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART=$ROOT/charts/tether
TAG=${TETHER_IMAGE_TAG:?TETHER_IMAGE_TAG is required}
TAG2=${TETHER_IMAGE_TAG2:?TETHER_IMAGE_TAG2 is required}
BIN=${TETHER_BIN_DIR:?TETHER_BIN_DIR is required}
NODE_IP=${TETHER_K8S_NODE_IP:?run inside the node (scripts/k8s-env.sh exec --node)}
NS=tether-system
DEV_NS=factory
DOMAIN=relay.tether.test
SCP_MIB=50
LOAD_SECONDS_MAX=240
export NO_COLOR=1

PASSED=0 FAILED=0 PIDS=()
W=$(mktemp -d)
mkdir -p "$W/logs"
log() { printf '[helm-e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$*" >&2; }
die() { fail "$*"; exit 1; }

cleanup() {
  local rc=$? p
  trap - EXIT
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [[ $rc != 0 || $FAILED != 0 ]]; then
    log "cluster state at the end:"
    kubectl get pods,sts,svc,relaypools,devices,devicestreams -A -o wide 2>&1 | tail -n 40
    kubectl -n "$NS" logs -l app.kubernetes.io/name=tether-operator --tail=30 --prefix 2>&1 | tail -n 60
    kubectl -n "$NS" logs -l app.kubernetes.io/name=tether-relay --tail=20 --prefix 2>&1 | tail -n 40
    for f in "$W"/logs/*.log; do [[ -s $f ]] && { printf -- '--- tail of %s\n' "$f"; tail -n 20 "$f"; }; done
  fi
  [[ ${KEEP_WORKDIR:-0} == 1 ]] && log "work dir kept: $W" || rm -rf "$W"
  [[ $rc != 0 && $FAILED == 0 ]] && FAILED=1
  echo "helm-e2e: $PASSED passed, $FAILED failed"
  [[ $FAILED == 0 ]] || exit 1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Retries "$@" every 0.5 s for up to $1 seconds.
wait_for() {
  local secs=$1 deadline; shift
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || return 1; sleep 0.5; done
}
jp() { kubectl "$@" 2>/dev/null; } # kubectl ... -o jsonpath=..., empty on error
secret() { kubectl -n "$1" get secret "$2" -o jsonpath="{.data.${3//./\\.}}" | base64 -d; }

# Common install values: local images, NodePort relays (the device and clients are outside the
# cluster, on the node's address), two relays.
# The device namespace gets the operator's device-Secrets RoleBinding (rbac.deviceNamespaces).
VALUES=(--set "operator.image.tag=$TAG" --set "relay.image.tag=$TAG" --set "rbac.deviceNamespaces={$DEV_NS}"
  --set "relayPool.relayDomain=$DOMAIN" --set relayPool.service.type=NodePort
  --set relayPool.minReplicas=2 --set relayPool.maxReplicas=2)

# ---------------------------------------------------------------------------------------------
test_static_checks() {
  local out
  if out=$(helm lint --strict "$CHART" "${VALUES[@]}" 2>&1); then pass "helm lint --strict"; else fail "helm lint: $out"; fi
  out=$(helm template t "$CHART" --set relayPool.serviceType=NodePort 2>&1) && fail "typo relayPool.serviceType accepted" ||
    { grep -q "serviceType" <<<"$out" && grep -qi "additional propert" <<<"$out" &&
        pass "schema rejects a typo: $(grep -o "additional propert[^\n]*" <<<"$out" | head -n1)" ||
        fail "typo rejected without naming it: $out"; }
  out=$(helm template t "$CHART" --set operator.replicas=two 2>&1) && fail "operator.replicas=two accepted" ||
    { grep -q "replicas" <<<"$out" && grep -qi "integer" <<<"$out" &&
        pass "schema rejects a wrong type: $(grep -io "replicas.*" <<<"$out" | head -n1)" ||
        fail "wrong type rejected without naming it: $out"; }
  if out=$(HELM=$(command -v helm) "$ROOT/scripts/gen-deploy.sh" --check 2>&1); then
    pass "deploy/operator/ matches the chart"
  else fail "deploy/ drift: $out"; fi
  # The PrometheusRule carries the rules promtool tests (obs suite) unchanged, {{ $labels }} and all.
  if helm template t "$CHART" --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml |
    python3 -c 'import sys, yaml; rendered = yaml.safe_load(sys.stdin); rules = yaml.safe_load(open(sys.argv[1]))
assert rendered["kind"] == "PrometheusRule" and rendered["spec"] == rules, "rendered rules differ from the file"' \
      "$CHART/rules/tether.rules.yaml"; then pass "prometheusRule.enabled renders rules/tether.rules.yaml unchanged"
  else fail "the PrometheusRule template does not carry the rules file"; fi
  # The Dockerfile builds the same images: same entrypoint and user per binary.
  local n cfg
  for n in tether-operator tether-relay tether-agent; do
    cfg=$(tar -xOf "$ROOT/target/images/$n.tar" "$(tar -xOf "$ROOT/target/images/$n.tar" manifest.json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Config"])')")
    if python3 - "$cfg" "$n" "$ROOT/Dockerfile" <<'EOF'
import json, re, sys
cfg, name, dockerfile = json.loads(sys.argv[1])["config"], sys.argv[2], open(sys.argv[3]).read()
stage = re.search(r"FROM scratch AS %s\n(.*?)(\n\n|\Z)" % re.escape(name), dockerfile, re.S).group(1)
assert cfg["Entrypoint"] == ["/" + name], cfg
assert f'ENTRYPOINT ["/{name}"]' in stage, stage
user = re.search(r"USER (\S+)", stage).group(1)
assert cfg["User"] == user, (cfg["User"], user)
assert f"/{name} /{name}" in stage.replace("release/", "/"), stage
EOF
    then pass "$n: image entrypoint and user match the Dockerfile"; else fail "$n: image and Dockerfile differ"; fi
  done
}

# ---------------------------------------------------------------------------------------------
install() {
  kubectl create namespace "$NS" >/dev/null
  kubectl create namespace "$DEV_NS" >/dev/null
  kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/warn=restricted >/dev/null
  local t0=$SECONDS out
  out=$(helm install tether "$CHART" -n "$NS" "${VALUES[@]}" --wait --timeout 3m 2>&1) ||
    die "helm install failed: $out"
  pass "helm install into a namespace enforcing restricted Pod Security ($((SECONDS - t0)) s)"
  # First install with the CRDs: the RelayPool kind did not exist yet; NOTES says what to do.
  grep -q "helm upgrade" <<<"$out" && pass "NOTES.txt explains the RelayPool needs one helm upgrade" ||
    fail "NOTES.txt lacks the RelayPool hint: $out"
  kubectl -n "$NS" rollout status deploy/tether-operator --timeout=2m >/dev/null ||
    die "operator Deployment not rolled out"
  local ready
  ready=$(jp -n "$NS" get deploy tether-operator -o 'jsonpath={.status.readyReplicas}')
  [[ $ready == 2 ]] && pass "operator: 2/2 pods Ready" || fail "operator ready replicas: $ready"
  wait_for 30 leader || die "no operator pod holds the Lease"
  pass "operator $(leader) holds Lease tether-operator"
  t0=$SECONDS
  out=$(helm upgrade tether "$CHART" -n "$NS" --reuse-values --wait --timeout 3m 2>&1) ||
    die "helm upgrade (RelayPool) failed: $out"
  wait_for 180 relays_ready 2 || die "relay StatefulSet not 2/2 Ready"
  pass "RelayPool relays: StatefulSet 2/2 Ready ($((SECONDS - t0)) s after helm upgrade)"
  wait_for 60 bash -c "[[ \$(kubectl -n $NS get relaypool relays -o jsonpath='{.status.readyReplicas}') == 2 ]]" &&
    pass "RelayPool status: readyReplicas 2, members $(jp -n "$NS" get relaypool relays -o 'jsonpath={.status.members[*].name}')" ||
    fail "RelayPool status: $(jp -n "$NS" get relaypool relays -o 'jsonpath={.status}')"
  echo "helm-e2e figure: RSS of the 4 Tether pods (2 operators, 2 relays, shims excluded): $(pods_rss) MiB"
  local image
  image=$(jp -n "$NS" get sts relays -o 'jsonpath={.spec.template.spec.containers[0].image}')
  [[ $image == "ghcr.io/tether-dev/tether-relay:$TAG" ]] && pass "relays run the chart's relay image ($image)" ||
    fail "relay image is $image"
}

# The pod holding the Lease (empty if none or not a current pod).
leader() {
  local h
  h=$(jp -n "$NS" get lease tether-operator -o 'jsonpath={.spec.holderIdentity}')
  [[ -n $h ]] && kubectl -n "$NS" get pod "$h" >/dev/null 2>&1 && echo "$h"
}

# MiB of RSS of every process in the pods (the kubepods cgroup tree of the memory hierarchy).
pods_rss() {
  find /sys/fs/cgroup/memory/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un |
    while read -r p; do awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null; done |
    awk '{s += $1} END {printf "%d", s / 1024}'
}

relays_ready() {
  [[ $(jp -n "$NS" get sts relays -o 'jsonpath={.status.readyReplicas}') == "$1" &&
     $(jp -n "$NS" get sts relays -o 'jsonpath={.status.updatedReplicas}') == "$1" ]]
}

test_dry_run() {
  # Every toggle on (ServiceMonitor needs the Prometheus Operator CRDs: rendered, not applied).
  local out
  out=$(helm template tether "$CHART" -n "$NS" "${VALUES[@]}" --api-versions tether.dev/v1alpha1/RelayPool \
    --set networkPolicy.enabled=true --set dashboards.enabled=true 2>&1 |
    kubectl apply --server-side --force-conflicts --dry-run=server --field-manager=dry-run -f - 2>&1) &&
    pass "helm template (network policies, dashboards, RelayPool) passes a server-side dry-run ($(grep -c . <<<"$out") objects)" ||
    fail "server-side dry-run: $out"
  local want got
  want=$( (find "$CHART/dashboards" "$CHART/files/dashboards" -name '*.json' 2>/dev/null || true) | wc -l)
  got=$(helm template tether "$CHART" -n "$NS" --set dashboards.enabled=true | grep -c 'grafana_dashboard: "1"' || true)
  [[ $got == "$want" ]] && pass "dashboards.enabled: $got ConfigMap(s) labelled grafana_dashboard=1 for $want dashboard file(s)" ||
    fail "dashboards: $got ConfigMaps for $want files"
  out=$(helm template tether "$CHART" -n "$NS" --set serviceMonitor.enabled=true 2>&1) &&
    [[ $(grep -c "kind: ServiceMonitor" <<<"$out") == 2 ]] && pass "serviceMonitor.enabled renders 2 ServiceMonitors" ||
    fail "serviceMonitor rendering: $out"
}

# ---------------------------------------------------------------------------------------------
start_sshd() {
  SSHD_PORT=2222
  mkdir -p /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$W/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$W/client_key"
  cp "$W/client_key.pub" "$W/authorized_keys"
  cat >"$W/sshd_config" <<EOF
ListenAddress 127.0.0.1:$SSHD_PORT
HostKey $W/host_key
PidFile $W/sshd.pid
AuthorizedKeysFile $W/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxStartups 100:30:200
Subsystem sftp internal-sftp
EOF
  /usr/sbin/sshd -D -e -f "$W/sshd_config" >"$W/logs/sshd.log" 2>&1 &
  PIDS+=($!)
  wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSHD_PORT" || die "sshd did not start"
}

connected_devices() { # sum of tether_relay_connected_devices over the relay pods
  local ip sum=0 v
  for ip in $(jp -n "$NS" get pods -l app.kubernetes.io/name=tether-relay -o 'jsonpath={.items[*].status.podIP}'); do
    v=$(curl -s --max-time 2 "http://$ip:9090/metrics" | awk '$1 == "tether_relay_connected_devices" {print $2}')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
devices_connected_is() { [[ $(connected_devices) == "$1" ]]; }

test_device_and_stream() {
  NODE_PORT=$(jp -n "$NS" get svc relays -o 'jsonpath={.spec.ports[0].nodePort}')
  [[ -n $NODE_PORT ]] || die "relays Service has no nodePort"
  # No session affinity: the NodePort picks a relay at random for the device and for each client
  # connection, and a relay that does not own the device forwards to the owner (DESIGN §4).
  kubectl apply -f - >/dev/null <<EOF
apiVersion: tether.dev/v1alpha1
kind: Device
metadata: {name: pump-7, namespace: $DEV_NS}
spec: {allowedPorts: [22]}
EOF
  wait_for 60 bash -c "kubectl -n $DEV_NS get secret pump-7-tether-credentials -o jsonpath='{.data.relay-domain}' | grep -q ." ||
    die "Device credentials Secret never got relay-domain"
  local k
  mkdir -p "$W/dev"
  for k in tls.crt tls.key ca.crt relay-domain device; do secret "$DEV_NS" pump-7-tether-credentials "$k" >"$W/dev/$k"; done
  [[ $(<"$W/dev/relay-domain") == "$DOMAIN" ]] || fail "relay-domain in the Secret: $(<"$W/dev/relay-domain")"
  cat >"$W/agent.toml" <<EOF
relay = "$NODE_IP:$NODE_PORT"
relay-domain = "$(<"$W/dev/relay-domain")"
device = "$(<"$W/dev/device")"
cert = "$W/dev/tls.crt"
key = "$W/dev/tls.key"
ca = "$W/dev/ca.crt"
allow = [{ port = 22, target = "127.0.0.1:$SSHD_PORT" }]
backoff-base = "200ms"
backoff-cap = "2s"
EOF
  "$BIN/tether-agent" --config "$W/agent.toml" >"$W/logs/agent.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  wait_for 30 devices_connected_is 1 || die "device never connected to a relay"
  pass "agent enrolled from Secret pump-7-tether-credentials and connected through NodePort $NODE_IP:$NODE_PORT"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: tether.dev/v1alpha1
kind: DeviceStream
metadata: {name: pump-7-ssh, namespace: $DEV_NS}
spec: {device: pump-7, port: 22, ttl: 30m, maxConnections: 16}
EOF
  wait_for 60 bash -c "kubectl -n $DEV_NS get secret pump-7-ssh-tether-token >/dev/null" || die "no token Secret"
  secret "$DEV_NS" pump-7-ssh-tether-token token >"$W/stream.token"
  secret "$DEV_NS" pump-7-ssh-tether-token ca.crt >"$W/stream-ca.crt"
  chmod 600 "$W/stream.token"
  SSH_OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o "UserKnownHostsFile=/dev/null" -o BatchMode=yes
    -o ServerAliveInterval=5 -o ServerAliveCountMax=3
    -o LogLevel=ERROR -o ConnectTimeout=20 -i "$W/client_key"
    -o "ProxyCommand=$BIN/tether connect $DEV_NS/pump-7 --port 22 --token-file $W/stream.token --relay $NODE_IP:$NODE_PORT --relay-domain $DOMAIN --ca $W/stream-ca.crt --stdio")
  local out
  out=$(ssh "${SSH_OPTS[@]}" root@pump-7 'echo tether-helm-ok' 2>"$W/logs/ssh.log") &&
    [[ $out == tether-helm-ok ]] && pass "ssh through the DeviceStream ran a command" ||
    die "ssh through the DeviceStream failed: $out $(cat "$W/logs/ssh.log")"
  head -c "$((SCP_MIB * 1024 * 1024))" /dev/urandom >"$W/up.bin"
  local t0=$SECONDS
  scp -q "${SSH_OPTS[@]}" "$W/up.bin" "root@pump-7:$W/device.bin" 2>>"$W/logs/scp.log" &&
    scp -q "${SSH_OPTS[@]}" "root@pump-7:$W/device.bin" "$W/down.bin" 2>>"$W/logs/scp.log" ||
    die "scp failed: $(cat "$W/logs/scp.log")"
  if [[ $(sha256sum <"$W/up.bin") == "$(sha256sum <"$W/down.bin")" && $(sha256sum <"$W/up.bin") == "$(sha256sum <"$W/device.bin")" ]]; then
    pass "scp $SCP_MIB MiB to the device and back through the relay pods: sha256 matches ($((SECONDS - t0)) s)"
  else fail "scp sha256 mismatch"; fi
}

# ---------------------------------------------------------------------------------------------
test_leader_failover() {
  local old new crt tok
  old=$(leader)
  crt=$(kubectl -n "$DEV_NS" get secret pump-7-tether-credentials -o jsonpath='{.data.tls\.crt}' | sha256sum)
  tok=$(kubectl -n "$DEV_NS" get secret pump-7-ssh-tether-token -o jsonpath='{.data.token}' | sha256sum)
  local t0=$SECONDS
  # No grace: the Lease is not released, the standby must wait it out (15 s).
  kubectl -n "$NS" delete pod "$old" --grace-period=0 --force >/dev/null 2>&1
  wait_for 60 bash -c "h=\$(kubectl -n $NS get lease tether-operator -o jsonpath='{.spec.holderIdentity}'); [[ -n \$h && \$h != $old ]]" ||
    { fail "no new leader after killing $old"; return; }
  new=$(jp -n "$NS" get lease tether-operator -o 'jsonpath={.spec.holderIdentity}')
  pass "killed leader $old: $new took over in $((SECONDS - t0)) s"
  # The new leader reconciles everything once: nothing valid is re-issued.
  sleep 5
  [[ $(kubectl -n "$DEV_NS" get secret pump-7-tether-credentials -o jsonpath='{.data.tls\.crt}' | sha256sum) == "$crt" &&
     $(kubectl -n "$DEV_NS" get secret pump-7-ssh-tether-token -o jsonpath='{.data.token}' | sha256sum) == "$tok" ]] &&
    pass "after the takeover the device certificate and the stream token are unchanged" ||
    fail "credentials or token re-issued by the new leader"
  kubectl -n "$NS" rollout status deploy/tether-operator --timeout=2m >/dev/null &&
    pass "operator back to 2/2 Ready" || fail "operator not back to 2 replicas"
}

test_relay_pod_deleted() {
  local victim t0=$SECONDS
  victim=relays-0
  kubectl -n "$NS" delete pod "$victim" --wait=false >/dev/null
  wait_for 120 relays_ready 2 && pass "deleted $victim: StatefulSet back to 2/2 Ready in $((SECONDS - t0)) s" ||
    { fail "relays not back after deleting $victim"; return; }
  wait_for 60 devices_connected_is 1 && pass "device connected again ($((SECONDS - t0)) s)" ||
    fail "device did not reconnect"
  wait_for 60 ssh "${SSH_OPTS[@]}" root@pump-7 true && pass "ssh works again after the relay restart" ||
    fail "ssh fails after the relay restart"
}

test_upgrade_under_load() {
  local n=0 bad=0 t0 out
  : >"$W/logs/load.log"
  # Steady setup load: one ssh session after another (each a new tunnelled connection).
  (
    while [[ ! -f $W/stop-load ]]; do
      # Bounded: a setup that hangs counts as failed (it did once during a roll, 2026-12-01).
      if timeout 30 ssh "${SSH_OPTS[@]}" root@pump-7 true 2>>"$W/logs/load.log"; then echo ok; else echo failed; fi
    done >"$W/load.results"
  ) &
  local load_pid=$!
  PIDS+=("$load_pid")
  sleep 3
  t0=$SECONDS
  out=$(helm upgrade tether "$CHART" -n "$NS" --reuse-values --set "relay.image.tag=$TAG2" --wait --timeout 3m 2>&1) ||
    fail "helm upgrade failed: $out"
  wait_for "$LOAD_SECONDS_MAX" bash -c "[[ \$(kubectl -n $NS get sts relays -o jsonpath='{.status.updatedReplicas}') == 2 && \$(kubectl -n $NS get sts relays -o jsonpath='{.status.readyReplicas}') == 2 && \$(kubectl -n $NS get sts relays -o jsonpath='{.status.currentRevision}') == \$(kubectl -n $NS get sts relays -o jsonpath='{.status.updateRevision}') ]]" ||
    fail "relays not rolled to $TAG2"
  local rolled=$((SECONDS - t0))
  wait_for 60 devices_connected_is 1 || fail "device not connected after the upgrade"
  sleep 3
  touch "$W/stop-load"; wait "$load_pid" 2>/dev/null || true
  n=$(grep -c . "$W/load.results" || true); bad=$(grep -c failed "$W/load.results" || true)
  local image
  image=$(jp -n "$NS" get sts relays -o 'jsonpath={.spec.template.spec.containers[0].image}')
  [[ $image == *":$TAG2" ]] && pass "helm upgrade rolled the relays to $image in $rolled s" || fail "relays run $image"
  ((n > 0)) && pass "setups during the rolling upgrade: $n, failed: $bad" || fail "no setups ran during the upgrade"
  echo "helm-e2e figure: rolling relay upgrade under load: $n ssh setups, $bad failed ($rolled s roll)"
}

test_uninstall() {
  local out
  out=$(helm uninstall tether -n "$NS" --wait --timeout 2m 2>&1) || fail "helm uninstall: $out"
  wait_for 90 bash -c "[[ -z \$(kubectl -n $NS get deploy,sts,pods -o name 2>/dev/null) ]]" &&
    pass "helm uninstall: operator and relays gone" ||
    fail "left after uninstall: $(kubectl -n "$NS" get deploy,sts,pods -o name 2>&1)"
  [[ $(kubectl get crd -o name | grep -c tether.dev) == 3 ]] && pass "CRDs kept (crds.keep)" || fail "CRDs removed"
  kubectl -n "$DEV_NS" get device pump-7 >/dev/null 2>&1 && kubectl -n "$DEV_NS" get dstream pump-7-ssh >/dev/null 2>&1 &&
    pass "Device and DeviceStream kept" || fail "user objects removed"
}

log "helm $(helm version --short), kubectl $(kubectl version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), node $NODE_IP"
test_static_checks
install
test_dry_run
start_sshd
test_device_and_stream
test_leader_failover
test_relay_pod_deleted
test_upgrade_under_load
test_uninstall
