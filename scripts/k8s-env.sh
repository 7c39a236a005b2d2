#!/usr/bin/env bash
# k8s-env.sh: a real Kubernetes control plane for Tether's tests (etcd + kube-apiserver
# + optionally kube-controller-manager), built from the Go module proxy and cached outside the repo.
#
#   scripts/k8s-env.sh build [--detach]  build (or reuse) etcd, kube-apiserver, kube-controller-manager,
#                                        kubectl (tools/k8s-testenv) and helm; prints the bin directory
#   scripts/k8s-env.sh up                start the control plane on loopback ports picked at run time
#   scripts/k8s-env.sh up --node         a whole single-node cluster (scheduler, containerd, kubelet,
#                                        kube-proxy, bridge CNI) inside a private network + mount
#                                        namespace; every command takes --node to act on it
#   scripts/k8s-env.sh exec --node -- CMD  run CMD inside that namespace (KUBECONFIG, PATH set)
#   scripts/k8s-env.sh import --node TAR...  load image tarballs into the node's containerd
#   scripts/k8s-env.sh env               print `export ...` lines (eval "$(scripts/k8s-env.sh env)")
#   scripts/k8s-env.sh status            show PIDs, ports, readiness, RSS
#   scripts/k8s-env.sh down              stop exactly the PIDs `up` started (never by name)
#   scripts/k8s-env.sh bin-dir           print the cache bin directory for the current inputs
#
# Environment:
#   TETHER_CACHE       cache root (default ~/.cache/tether); binaries go to
#                      $TETHER_CACHE/k8s/<k8s version>-<hash of go.mod/go.sum/main.go/versions>/bin
#   TETHER_K8S_DIR     runtime directory: PKI, data, logs, kubeconfig (default <repo>/.testenv/k8s,
#                      <repo>/.testenv/node with --node)
#   TETHER_K8S_NODE    1 = as if --node were given
#   TETHER_K8S_KCM     1 (default) also runs kube-controller-manager (GC, namespace deletion,
#                      default ServiceAccounts); 0 runs etcd + kube-apiserver only
#   TETHER_K8S_START_TIMEOUT  seconds to wait for readiness (default 180)
# See docs/testing.md.
set -euo pipefail

# --- pinned versions: change here (and in tools/*/go.mod) only -------------------------------------
K8S_VERSION=v1.36.3          # tools/k8s-testenv/go.mod requires k8s.io/kubernetes at this tag
K8S_BUILD_DATE=2026-07-22T18:07:38Z # the tag's time on the module proxy (reproducible version stamp)
HELM_MODULE=helm.sh/helm/v3  # helm v3: stable CLI, go-installable (its go.mod has no replace)
HELM_VERSION=v3.21.4
HELM_K8S_MINOR=36            # helm v3.21.4's client-go is v0.36.x (its Makefile stamps this)
# The test node (up --node): containerd and its runc shim, and crane to build images without Docker.
CONTAINERD_MODULE=github.com/containerd/containerd/v2
CONTAINERD_VERSION=v2.4.2
CONTAINERD_TAGS="no_btrfs no_devmapper no_zfs no_aufs" # snapshotters we never use (overlayfs/native)
CRANE_MODULE=github.com/google/go-containerregistry
CRANE_VERSION=v0.22.1
RECIPE=5                     # bump when the build commands below change (invalidates the cache)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$ROOT/tools
NODE=${TETHER_K8S_NODE:-0}
ARGS=()
for a in "$@"; do if [[ $a == --node ]]; then NODE=1; else ARGS+=("$a"); fi; done
set -- "${ARGS[@]}"
if [[ $NODE == 1 ]]; then RUN_DIR=${TETHER_K8S_DIR:-$ROOT/.testenv/node}; else RUN_DIR=${TETHER_K8S_DIR:-$ROOT/.testenv/k8s}; fi
START_TIMEOUT=${TETHER_K8S_START_TIMEOUT:-180}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=readonly

log() { printf '[k8s-env] %s\n' "$*" >&2; }
die() { printf '[k8s-env] ERROR: %s\n' "$*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }'; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not on PATH"; }

# Tail of a log file, loudly, for failures.
show_tail() {
  local f=$1 n=${2:-40}
  printf '[k8s-env] ---- last %s lines of %s ----\n' "$n" "$f" >&2
  tail -n "$n" "$f" >&2 || true
  printf '[k8s-env] ---- end of %s ----\n' "$f" >&2
}

# --- build -----------------------------------------------------------------------------------------
input_hash() {
  need go
  {
    echo "recipe=$RECIPE k8s=$K8S_VERSION helm=$HELM_MODULE@$HELM_VERSION/$HELM_K8S_MINOR $(go env GOVERSION GOOS GOARCH)"
    echo "containerd=$CONTAINERD_MODULE@$CONTAINERD_VERSION tags=$CONTAINERD_TAGS crane=$CRANE_MODULE@$CRANE_VERSION"
    cat "$TOOLS"/k8s-testenv/{go.mod,go.sum,main.go} "$TOOLS"/etcd/{go.mod,go.sum,main.go}
  } | sha256sum | cut -c1-12
}
cache_dir() { echo "${TETHER_CACHE:-$HOME/.cache/tether}/k8s/$K8S_VERSION-$(input_hash)"; }

# The build itself; runs detached (setsid nohup) with all output in build.log. It must be called as
# a plain statement, not in an && / || list, or bash silently disables `set -e` inside it.
do_build() {
  local out=$1 ldf="-s -w" kv t0 t
  t0=$(date +%s)
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  # Version stamping as upstream hack/lib/version.sh: without it the binaries report
  # v0.0.0-master+$Format:%H$ and kubectl/helm version checks misbehave.
  for kv in gitVersion=$K8S_VERSION gitMajor=1 gitMinor="$minor" gitTreeState=clean \
            gitCommit=unknown buildDate=$K8S_BUILD_DATE; do
    ldf="$ldf -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  echo "== $(date -u +%T) etcd ($TOOLS/etcd)"
  (cd "$TOOLS/etcd" && go build -v -trimpath -ldflags "-s -w" -o "$out/etcd" .)
  echo "== $(date -u +%T) containerd $CONTAINERD_VERSION: containerd, containerd-shim-runc-v2, ctr"
  # containerd's go.mod has no replace directives, so `go install pkg@version` works. GOFLAGS=-mod=readonly
  # does not apply to `go install pkg@version`; clear it for these steps.
  GOFLAGS='' GOBIN=$out go install -v -trimpath -tags "$CONTAINERD_TAGS" \
    -ldflags "-s -w -X $CONTAINERD_MODULE/version.Version=$CONTAINERD_VERSION" \
    "$CONTAINERD_MODULE/cmd/containerd@$CONTAINERD_VERSION" \
    "$CONTAINERD_MODULE/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$CONTAINERD_MODULE/cmd/ctr@$CONTAINERD_VERSION"
  echo "== $(date -u +%T) crane $CRANE_VERSION"
  GOFLAGS='' GOBIN=$out go install -v -trimpath -ldflags "-s -w" "$CRANE_MODULE/cmd/crane@$CRANE_VERSION"
  echo "== $(date -u +%T) k8s-testenv $K8S_VERSION: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl"
  (cd "$TOOLS/k8s-testenv" && go build -v -trimpath -ldflags "$ldf" -o "$out/k8s-testenv" .)
  for r in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do ln -sf k8s-testenv "$out/$r"; done
  echo "== $(date -u +%T) helm $HELM_VERSION"
  # As helm's Makefile: the Kubernetes version `helm template`/`lint` assume without a cluster is
  # that of helm's client-go (v0.36 -> 1.36); unset it is 1.20 and kubeVersion checks fail.
  local hv="" k
  for k in pkg/chartutil pkg/lint/rules; do hv="$hv -X $HELM_MODULE/$k.k8sVersionMajor=1 -X $HELM_MODULE/$k.k8sVersionMinor=$HELM_K8S_MINOR"; done
  GOFLAGS='' GOBIN=$out go install -v -trimpath \
    -ldflags "-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION$hv" "$HELM_MODULE/cmd/helm@$HELM_VERSION"
  "$out/kube-apiserver" --version
  "$out/kubectl" version --client
  "$out/etcd" --version
  "$out/helm" version --short
  "$out/containerd" --version
  "$out/ctr" --version
  "$out/crane" version
  t=$(( $(date +%s) - t0 ))
  echo "== $(date -u +%T) build finished in ${t}s"
}

cmd_build() {
  local detach=0 dir bin lockfd pid t0
  [[ ${1:-} == --detach ]] && detach=1
  dir=$(cache_dir); bin=$dir/bin
  if [[ -f $bin/.complete ]]; then log "cached: $bin"; echo "$bin"; return 0; fi
  mkdir -p "$dir"
  exec {lockfd}>"$dir/.lock"
  if ! flock -n "$lockfd"; then
    log "another build of $dir is running (log: $dir/build.log); waiting for it"
    flock "$lockfd"
    if [[ -f $bin/.complete ]]; then echo "$bin"; return 0; fi
    # A transient failure (module proxy hiccup, a full disk since cleaned) should not fail the
    # run: show why, keep its log, and build once more while holding the lock.
    show_tail "$dir/build.log"
    mv -f "$dir/build.log" "$dir/build.failed.log" 2>/dev/null || true
    log "the other build failed (log kept: $dir/build.failed.log); building again"
  fi
  rm -rf "$dir/bin.tmp"; mkdir -p "$dir/bin.tmp"
  log "building into $dir (cold: ~8-10 min on 2 cores); log: $dir/build.log"
  # Detached so a killed foreground shell does not kill the build; the lock fd is inherited so a
  # second `build` waits for this one.
  t0=$(date +%s)
  setsid nohup bash -c "$(declare -f do_build); set -euo pipefail; RECIPE=$RECIPE K8S_VERSION=$K8S_VERSION \
    K8S_BUILD_DATE=$K8S_BUILD_DATE HELM_MODULE=$HELM_MODULE HELM_VERSION=$HELM_VERSION HELM_K8S_MINOR=$HELM_K8S_MINOR TOOLS='$TOOLS'; \
    CONTAINERD_MODULE=$CONTAINERD_MODULE CONTAINERD_VERSION=$CONTAINERD_VERSION CONTAINERD_TAGS='$CONTAINERD_TAGS'; \
    CRANE_MODULE=$CRANE_MODULE CRANE_VERSION=$CRANE_VERSION; \
    do_build '$dir/bin.tmp'; for b in etcd k8s-testenv helm containerd containerd-shim-runc-v2 ctr crane; do test -x '$dir/bin.tmp/'\$b; done; \
    touch '$dir/bin.tmp/.complete'; rm -rf '$bin'; mv '$dir/bin.tmp' '$bin'" \
    >"$dir/build.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/build.pid"
  if ((detach)); then
    log "build running in the background (pid $pid); follow: tail -f $dir/build.log"
    return 0
  fi
  # Progress: every 20 s, the elapsed time and the package being compiled (go build -v).
  local n=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    (( ++n % 20 )) || log "build running $(( $(date +%s) - t0 ))s, $(grep -c . "$dir/build.log" || true) lines: $(tail -n1 "$dir/build.log" | cut -c1-100)"
  done
  wait "$pid" || true
  if [[ ! -f $bin/.complete ]]; then show_tail "$dir/build.log" 60; die "build failed (full log: $dir/build.log)"; fi
  log "built in $(( $(date +%s) - t0 ))s: $bin"
  echo "$bin"
}

# --- run -------------------------------------------------------------------------------------------
pick_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null && return
  local p
  while :; do
    p=$(( 20000 + RANDOM % 40000 ))
    ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

gen_pki() {
  local pki=$1
  mkdir -p "$pki"
  (
    cd "$pki"
    exec 2>pki.log
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=tether-test-ca" -keyout ca.key -out ca.crt
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' >server.ext
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >client.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile server.ext -out apiserver.crt
    # Admin: group system:masters (bypasses RBAC); used by tests' setup, kubectl, helm and KCM.
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=tether-admin" -keyout admin.key -out admin.csr
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out admin.crt
    # ServiceAccount token signing key (TokenRequest) and its public half for verification.
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    rm -f ./*.csr
  ) || { show_tail "$pki/pki.log"; die "PKI generation failed"; }
}

write_kubeconfig() {
  local file=$1 port=$2 pki=$3
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tether-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $pki/ca.crt
users:
- name: tether-admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: tether-test
  context: {cluster: tether-test, user: tether-admin}
current-context: tether-test
EOF
}

# Start a component in the background; its PID goes to $RUN_DIR/<name>.pid.
start_proc() {
  local name=$1; shift
  nohup "$@" >"$RUN_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  log "started $name (pid $!)"
}

# Is the PID in <name>.pid alive and still the binary we started (guards against PID reuse)?
pid_ok() {
  local f=$RUN_DIR/$1.pid pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$RUN_DIR"
}

wait_ready() {
  local name=$1 url=$2 deadline=$(( $(date +%s) + START_TIMEOUT )); shift 2
  until curl -sf -o /dev/null "$@" "$url"; do
    # kill -0, not pid_ok: right after `nohup ... &` the child may not have exec'd yet, so its
    # cmdline is still this script's and pid_ok's check would report a live process as gone.
    if ! kill -0 "$(<"$RUN_DIR/$name.pid")" 2>/dev/null; then
      show_tail "$RUN_DIR/logs/$name.log"; stop_all; die "$name exited during start-up"
    fi
    if (( $(date +%s) > deadline )); then
      show_tail "$RUN_DIR/logs/$name.log"; stop_all; die "$name not ready at $url after ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
}

stop_all() {
  local name pid
  for name in kube-controller-manager kube-apiserver etcd; do
    [[ -f $RUN_DIR/$name.pid ]] || continue
    pid=$(<"$RUN_DIR/$name.pid")
    if pid_ok "$name"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then log "$name (pid $pid) ignored TERM; sending KILL"; kill -KILL "$pid" || true; fi
      log "stopped $name (pid $pid)"
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
}

cmd_up() {
  need curl; need openssl
  local bin pki etcd_port etcd_peer api_port t0 t_api kcm=${TETHER_K8S_KCM:-1} admission=()
  if pid_ok kube-apiserver; then log "already running; 'down' first to restart"; cmd_status; return 0; fi
  bin=$(cache_dir)/bin
  [[ -f $bin/.complete ]] || die "binaries not built for the current inputs: run 'scripts/k8s-env.sh build' ($bin)"
  stop_all # leftovers of a crashed run (only PIDs we recorded and that still match)
  rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR/logs"
  pki=$RUN_DIR/pki
  gen_pki "$pki"
  etcd_port=$(pick_port); etcd_peer=$(pick_port); api_port=$(pick_port)
  echo "$bin" >"$RUN_DIR/bin-dir"
  t0=$(date +%s.%N)
  start_proc etcd "$bin/etcd" --name=tether-test --data-dir="$RUN_DIR/etcd" --unsafe-no-fsync \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="tether-test=http://127.0.0.1:$etcd_peer" --listen-metrics-urls= --log-level=warn
  wait_ready etcd "http://127.0.0.1:$etcd_port/readyz"
  # Without kube-controller-manager nothing creates the "default" ServiceAccount, and the
  # ServiceAccount admission plugin would then reject every Pod (envtest does the same).
  [[ $kcm == 1 ]] || admission=(--disable-admission-plugins=ServiceAccount)
  start_proc kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --secure-port="$api_port" --advertise-address=127.0.0.1 \
    --endpoint-reconciler-type=none \
    --cert-dir="$RUN_DIR/apiserver-certs" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --allow-privileged=true \
    "${admission[@]}" --v=1
  t_api=$(date +%s.%N)
  wait_ready kube-apiserver "https://127.0.0.1:$api_port/readyz" --cacert "$pki/ca.crt"
  since "$t_api" >"$RUN_DIR/apiserver-start-seconds"
  write_kubeconfig "$RUN_DIR/admin.kubeconfig" "$api_port" "$pki"
  if [[ $kcm == 1 ]]; then
    start_proc kube-controller-manager "$bin/kube-controller-manager" \
      --kubeconfig="$RUN_DIR/admin.kubeconfig" --leader-elect=false \
      --bind-address=127.0.0.1 --secure-port=0 \
      --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
      --use-service-account-credentials=false --controllers='*' --v=1
    # KCM has no health endpoint with --secure-port=0: wait until its serviceaccount controller
    # has created the "default" ServiceAccount, which tests (and Pods) rely on.
    local deadline=$(( $(date +%s) + START_TIMEOUT ))
    until "$bin/kubectl" --kubeconfig="$RUN_DIR/admin.kubeconfig" -n default get serviceaccount default \
          >/dev/null 2>&1; do
      pid_ok kube-controller-manager || { show_tail "$RUN_DIR/logs/kube-controller-manager.log"; stop_all; die "kube-controller-manager exited"; }
      (( $(date +%s) < deadline )) || { show_tail "$RUN_DIR/logs/kube-controller-manager.log"; stop_all; die "kube-controller-manager not working after ${START_TIMEOUT}s"; }
      sleep 0.3
    done
  fi
  cat >"$RUN_DIR/env" <<EOF
export TETHER_TEST_KUBECONFIG=$RUN_DIR/admin.kubeconfig
export TETHER_K8S_BIN=$bin
export TETHER_K8S_API=https://127.0.0.1:$api_port
export KUBECONFIG=$RUN_DIR/admin.kubeconfig
export PATH=$bin:\$PATH
EOF
  log "kube-apiserver $K8S_VERSION ready on https://127.0.0.1:$api_port in $(<"$RUN_DIR/apiserver-start-seconds")s (total $(since "$t0")s)"
  log "use it: eval \"\$(scripts/k8s-env.sh env)\"; kubectl --kubeconfig \$TETHER_TEST_KUBECONFIG get ns"
}

cmd_env() {
  { [[ -f $RUN_DIR/env ]] && pid_ok kube-apiserver; } || die "not running: 'scripts/k8s-env.sh up' first"
  cat "$RUN_DIR/env"
}

cmd_status() {
  local name pid rc=0 api
  for name in etcd kube-apiserver kube-controller-manager; do
    if pid_ok "$name"; then
      pid=$(<"$RUN_DIR/$name.pid")
      printf '%-24s running  pid %-7s rss %s MiB\n' "$name" "$pid" "$(( $(awk '/VmRSS/{print $2}' "/proc/$pid/status") / 1024 ))"
    else
      printf '%-24s stopped\n' "$name"; [[ $name == kube-controller-manager ]] || rc=1
    fi
  done
  if ((rc == 0)); then
    api=$(sed -n 's/^export TETHER_K8S_API=//p' "$RUN_DIR/env")
    printf '%-24s %s\n' "readyz ($api)" "$(curl -s --cacert "$RUN_DIR/pki/ca.crt" "$api/readyz" || echo unreachable)"
    printf '%-24s %s\n' kubeconfig "$RUN_DIR/admin.kubeconfig"
  fi
  return "$rc"
}

# shellcheck source=scripts/k8s-node.sh
source "$ROOT/scripts/k8s-node.sh"

case ${1:-}/$NODE in
  build/*) shift; cmd_build "$@" ;;
  bin-dir/*) echo "$(cache_dir)/bin" ;;
  up/0) cmd_up ;;
  up/1) node_up ;;
  down/0) stop_all; log "down (logs kept in $RUN_DIR/logs)" ;;
  down/1) node_down ;;
  env/0) cmd_env ;;
  env/1) ns_alive || die "node not running: 'scripts/k8s-env.sh up --node' first"; cat "$RUN_DIR/env" ;;
  status/0) cmd_status ;;
  status/1) node_status ;;
  import/1) shift; node_import "$@" ;;
  exec/1) shift; [[ ${1:-} == -- ]] && shift; node_exec "$@" ;;
  *) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
