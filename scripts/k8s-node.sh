# shellcheck shell=bash
# k8s-node.sh: the single-node cluster of `scripts/k8s-env.sh up --node`, sourced by k8s-env.sh.
#
# Everything (etcd, kube-apiserver, controller-manager, scheduler, containerd, kubelet, kube-proxy,
# the pods, and the tests that talk to them) runs inside a private network + mount namespace that
# `node_up` creates and `node_down` removes. The host's interfaces, routes, firewall, sysctls and
# /etc/hosts are never touched, and nothing on the host network addresses a pod, Service or node IP
# (a packet to such an address would leave by the host's default route). Why each setting is what
# it is: ../shared/notes/k8s-node.md ("Blockers met"), summarised in docs/testing.md.

NODE_IP=10.99.0.2             # the node's address: a /32 on the namespace's lo (no dummy interfaces here)
NODE_NAME=tether-node
API_PORT_NODE=6443            # fixed ports are fine: the namespace has its own port space
POD_CIDR=10.244.0.0/24        # the bridge CNI's range (one node)
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.0.0.0/24      # `kubernetes` Service = 10.0.0.1
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2 # containerd 2.4's default sandbox image name; built locally
# Paths containerd, the CNI plugins and the kubelet use whatever their configuration says. Each is
# bind-mounted from the run directory inside the private mount namespace, so nothing is written to
# the host's copy; only a missing mount point is created on the host (and removed by node_down).
NODE_FIXED_PATHS=(/run/containerd /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers)
# cgroup trees the kubelet (cgroupfs driver) and containerd create under every v1 hierarchy.
NODE_CGROUPS=(kubepods k8s.io)
# The values kubelet's protectKernelDefaults insists on; presented inside the mount namespace
# only (bind-mounted files over the /proc/sys entries), the host's values stay as they are.
NODE_SYSCTLS=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1)
NODE_PACKAGES=(runc containernetworking-plugins nftables iproute2 util-linux)
CNI_BIN_DIR=/usr/lib/cni      # Debian's containernetworking-plugins

node_install_packages() {
  local missing=()
  command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || missing+=(runc)
  [[ -x $CNI_BIN_DIR/bridge && -x $CNI_BIN_DIR/host-local && -x $CNI_BIN_DIR/loopback ]] || missing+=(containernetworking-plugins)
  command -v nft >/dev/null || [[ -x /usr/sbin/nft ]] || missing+=(nftables)
  command -v ip >/dev/null || [[ -x /usr/sbin/ip ]] || missing+=(iproute2)
  command -v nsenter >/dev/null || missing+=(util-linux)
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
  } >&2 || die "could not install ${missing[*]}"
}

# Runs "$@" inside the namespaces held by the holder process.
in_ns() { nsenter -t "$(<"$RUN_DIR/ns.pid")" -n -m -- "$@"; }

# The node's extra PKI: apiserver serving cert naming the node IP, the apiserver's kubelet client
# cert, the kubelet's node client and serving certs, kube-proxy's client cert.
node_pki() {
  local pki=$1
  (
    cd "$pki"
    exec 2>>pki.log
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:%s,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' "$NODE_IP" >server.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile server.ext -out apiserver.crt
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,DNS:%s\n' "$NODE_IP" "$NODE_NAME" >kubelet-server.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$NODE_NAME" -keyout kubelet-server.key -out kubelet-server.csr
    openssl x509 -req -in kubelet-server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile kubelet-server.ext -out kubelet-server.crt
    # The kubelet authorizes the apiserver's logs/exec/port-forward calls by this identity (webhook).
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" -keyout apiserver-kubelet.key -out apiserver-kubelet.csr
    openssl x509 -req -in apiserver-kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out apiserver-kubelet.crt
    # Node authorizer + NodeRestriction identity.
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -keyout kubelet.key -out kubelet.csr
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out kubelet.crt
    # Bound to the bootstrap ClusterRole system:node-proxier.
    openssl req -newkey rsa:2048 -nodes -subj "/CN=system:kube-proxy" -keyout kube-proxy.key -out kube-proxy.csr
    openssl x509 -req -in kube-proxy.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out kube-proxy.crt
    rm -f ./*.csr
  ) || { show_tail "$pki/pki.log"; die "node PKI generation failed"; }
}

node_kubeconfig() { # file user-cert-basename
  local file=$1 who=$2 pki=$RUN_DIR/pki
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tether-node
  cluster:
    server: https://$NODE_IP:$API_PORT_NODE
    certificate-authority: $pki/ca.crt
users:
- name: $who
  user:
    client-certificate: $pki/$who.crt
    client-key: $pki/$who.key
contexts:
- name: tether-node
  context: {cluster: tether-node, user: $who}
current-context: tether-node
EOF
}

node_write_configs() {
  local bin=$1 c=$RUN_DIR/config pki=$RUN_DIR/pki
  mkdir -p "$c" "$RUN_DIR/cni/net.d" "$RUN_DIR/cni/ipam"
  cat >"$c/containerd.toml" <<EOF
version = 3
root = "$RUN_DIR/containerd/root"
state = "$RUN_DIR/containerd/state"
[grpc]
  address = "$RUN_DIR/containerd/containerd.sock"
[ttrpc]
  address = "$RUN_DIR/containerd/containerd.sock.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "$PAUSE_IMAGE"
[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails writing oom_score_adj.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state dir, not the host's /var/run/netns.
  netns_mounts_under_state_dir = true
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["$CNI_BIN_DIR"]
  conf_dir = "$RUN_DIR/cni/net.d"
[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "$(command -v runc || echo /usr/sbin/runc)"
  SystemdCgroup = false
EOF
  cat >"$c/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet-server.crt
tlsPrivateKeyFile: $pki/kubelet-server.key
containerRuntimeEndpoint: unix://$RUN_DIR/containerd/containerd.sock
# cgroup v1 host without systemd as init: cgroupfs, and v1 tolerated (only a warning).
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# Read the kernel sysctls instead of rewriting host-wide values (presented in the mount ns).
protectKernelDefaults: true
resolvConf: $c/resolv.conf
clusterDomain: cluster.local
rotateCertificates: false
serializeImagePulls: false
# Never garbage-collect the locally imported images (there is no registry to pull them back).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
maxPods: 60
nodeStatusUpdateFrequency: 5s
EOF
  # No cluster DNS (nothing needs names; the ring uses EndpointSlice addresses): pods get an
  # empty resolver configuration rather than the host's.
  : >"$c/resolv.conf"
  cat >"$c/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $NODE_NAME
clusterCIDR: $CLUSTER_CIDR
clientConnection: {kubeconfig: $RUN_DIR/kube-proxy.kubeconfig}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
# Leave conntrack sysctls alone (0 = do not set).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  # Written in place (a file mv'd into net.d was not noticed by containerd's watcher).
  cat >"$RUN_DIR/cni/net.d/10-tether.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tether-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$RUN_DIR/cni/ipam"
      }
    }
  ]
}
EOF
  node_kubeconfig "$RUN_DIR/admin.kubeconfig" admin
  node_kubeconfig "$RUN_DIR/kubelet.kubeconfig" kubelet
  node_kubeconfig "$RUN_DIR/kube-proxy.kubeconfig" kube-proxy
  : "$bin"
}

# Starts a component inside the namespaces; nsenter execs it, so $! is the component's PID.
start_in_ns() {
  local name=$1; shift
  nohup nsenter -t "$(<"$RUN_DIR/ns.pid")" -n -m -- "$@" >"$RUN_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  log "started $name (pid $!)"
}

ns_alive() { [[ -f $RUN_DIR/ns.pid ]] && [[ $(readlink "/proc/$(<"$RUN_DIR/ns.pid")/ns/mnt" 2>/dev/null) == "$(cat "$RUN_DIR/ns.mnt" 2>/dev/null)" ]]; }

# Waits until "$@" (run inside the namespaces) succeeds; fails naming COMPONENT's log.
wait_in_ns() {
  local name=$1 deadline=$(( $(date +%s) + START_TIMEOUT )); shift
  until in_ns "$@" >/dev/null 2>&1; do
    if ! kill -0 "$(<"$RUN_DIR/$name.pid")" 2>/dev/null; then
      show_tail "$RUN_DIR/logs/$name.log"; node_down; die "$name exited during start-up"
    fi
    if (( $(date +%s) > deadline )); then
      show_tail "$RUN_DIR/logs/$name.log"; node_down; die "$name not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.3
  done
}

node_up() {
  need curl; need openssl
  node_install_packages
  need nsenter; need unshare
  local bin t0 t_kubelet c cg path kctl
  bin=$(cache_dir)/bin
  [[ -f $bin/.complete ]] || die "binaries not built for the current inputs: run 'scripts/k8s-env.sh build' ($bin)"
  if ns_alive; then log "node already running ($RUN_DIR); 'down --node' first"; return 0; fi
  [[ -d $RUN_DIR ]] && node_down
  # The kubelet's and containerd's cgroup trees are shared with the host: refuse to adopt (and
  # later delete) trees this run did not create.
  for cg in /sys/fs/cgroup/*/; do
    for c in "${NODE_CGROUPS[@]}"; do
      [[ -e $cg$c ]] && die "$cg$c exists (another kubelet/containerd on this host?): not starting the node"
    done
  done
  rm -rf "$RUN_DIR"; mkdir -p "$RUN_DIR/logs" "$RUN_DIR/fixed"
  echo "$bin" >"$RUN_DIR/bin-dir"
  t0=$(date +%s.%N)
  # Mount points for the fixed paths: created on the host only if missing, recorded for removal.
  : >"$RUN_DIR/created-mountpoints"
  for path in "${NODE_FIXED_PATHS[@]}"; do
    if [[ ! -e $path ]]; then mkdir -p "$path"; echo "$path" >>"$RUN_DIR/created-mountpoints"; fi
  done
  # The holder: sleeps in a new network + mount namespace (private propagation: nothing mounted
  # inside shows on the host). No --fork: unshare execs sleep, so $! is the holder itself.
  setsid nohup unshare --net --mount --propagation private -- sleep infinity >/dev/null 2>&1 </dev/null &
  echo $! >"$RUN_DIR/ns.pid"
  for _ in $(seq 50); do
    [[ $(readlink "/proc/$(<"$RUN_DIR/ns.pid")/ns/mnt") != "$(readlink /proc/self/ns/mnt)" ]] && break; sleep 0.1
  done
  readlink "/proc/$(<"$RUN_DIR/ns.pid")/ns/mnt" >"$RUN_DIR/ns.mnt"
  [[ $(<"$RUN_DIR/ns.mnt") != "$(readlink /proc/self/ns/mnt)" ]] || die "could not create the namespaces"
  log "namespaces held by pid $(<"$RUN_DIR/ns.pid") (net $(readlink "/proc/$(<"$RUN_DIR/ns.pid")/ns/net"))"
  mkdir -p "$RUN_DIR/sysctl"
  local mounts="set -e; ip link set lo up; ip addr add $NODE_IP/32 dev lo"
  for path in "${NODE_FIXED_PATHS[@]}"; do
    local src="$RUN_DIR/fixed/${path//\//_}"
    mkdir -p "$src"; mounts+="; mount --bind '$src' '$path'"
  done
  local kv
  for kv in "${NODE_SYSCTLS[@]}"; do
    mkdir -p "$RUN_DIR/sysctl/${kv%%/*}"; echo "${kv#*=}" >"$RUN_DIR/sysctl/${kv%%=*}"
    mounts+="; mount --bind '$RUN_DIR/sysctl/${kv%%=*}' '/proc/sys/${kv%%=*}'"
  done
  in_ns sh -c "$mounts" || { node_down; die "namespace setup failed"; }
  # The sandbox image: a tiny static program, packaged like Tether's own images (crane).
  mkdir -p "$RUN_DIR/images"
  (cd "$TOOLS/pause" && go build -trimpath -ldflags "-s -w" -o "$RUN_DIR/images/pause" .) ||
    { node_down; die "building tools/pause failed"; }
  TETHER_CRANE=$bin/crane "$ROOT/scripts/oci-image.sh" "$PAUSE_IMAGE" "$RUN_DIR/images/pause.tar" \
    /pause "$RUN_DIR/images/pause" >>"$RUN_DIR/logs/images.log" 2>&1 ||
    { show_tail "$RUN_DIR/logs/images.log"; node_down; die "building the pause image failed"; }
  gen_pki "$RUN_DIR/pki"
  node_pki "$RUN_DIR/pki"
  node_write_configs "$bin"
  kctl=("$bin/kubectl" --kubeconfig="$RUN_DIR/admin.kubeconfig")

  start_in_ns etcd "$bin/etcd" --name=tether-node --data-dir="$RUN_DIR/etcd" --unsafe-no-fsync \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=tether-node=http://127.0.0.1:2380 --listen-metrics-urls= --log-level=warn
  wait_in_ns etcd curl -sf http://127.0.0.1:2379/readyz
  start_in_ns kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=$API_PORT_NODE --advertise-address=$NODE_IP \
    --endpoint-reconciler-type=lease \
    --cert-dir="$RUN_DIR/apiserver-certs" \
    --tls-cert-file="$RUN_DIR/pki/apiserver.crt" --tls-private-key-file="$RUN_DIR/pki/apiserver.key" \
    --client-ca-file="$RUN_DIR/pki/ca.crt" \
    --kubelet-client-certificate="$RUN_DIR/pki/apiserver-kubelet.crt" \
    --kubelet-client-key="$RUN_DIR/pki/apiserver-kubelet.key" \
    --kubelet-certificate-authority="$RUN_DIR/pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$RUN_DIR/pki/sa.pub" --service-account-signing-key-file="$RUN_DIR/pki/sa.key" \
    --service-cluster-ip-range=$SERVICE_CIDR --service-node-port-range=30000-32767 \
    --allow-privileged=true --v=1
  wait_in_ns kube-apiserver curl -sf --cacert "$RUN_DIR/pki/ca.crt" "https://$NODE_IP:$API_PORT_NODE/readyz"
  since "$t0" >"$RUN_DIR/apiserver-start-seconds"
  start_in_ns kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$RUN_DIR/admin.kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 \
    --service-account-private-key-file="$RUN_DIR/pki/sa.key" --root-ca-file="$RUN_DIR/pki/ca.crt" \
    --use-service-account-credentials=false --controllers='*' --v=1
  start_in_ns kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$RUN_DIR/admin.kubeconfig" --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --v=1
  start_in_ns containerd env PATH="$bin:$PATH" "$bin/containerd" --config "$RUN_DIR/config/containerd.toml"
  wait_in_ns containerd "$bin/ctr" --address "$RUN_DIR/containerd/containerd.sock" version
  # The sandbox image must exist before the first pod: there is no registry to pull it from.
  in_ns "$bin/ctr" --address "$RUN_DIR/containerd/containerd.sock" -n k8s.io images import \
    "$RUN_DIR/images/pause.tar" >>"$RUN_DIR/logs/images.log" 2>&1 ||
    { show_tail "$RUN_DIR/logs/images.log"; node_down; die "pause image import failed"; }
  t_kubelet=$(date +%s.%N)
  start_in_ns kubelet "$bin/kubelet" --config="$RUN_DIR/config/kubelet.yaml" \
    --kubeconfig="$RUN_DIR/kubelet.kubeconfig" --node-ip=$NODE_IP --hostname-override=$NODE_NAME --v=1
  start_in_ns kube-proxy "$bin/kube-proxy" --config="$RUN_DIR/config/kube-proxy.yaml" --v=1
  wait_in_ns kubelet "${kctl[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  since "$t_kubelet" >"$RUN_DIR/node-ready-seconds"
  wait_in_ns kube-controller-manager "${kctl[@]}" -n default get serviceaccount default
  cat >"$RUN_DIR/env" <<EOF
export TETHER_TEST_KUBECONFIG=$RUN_DIR/admin.kubeconfig
export TETHER_K8S_BIN=$bin
export TETHER_K8S_API=https://$NODE_IP:$API_PORT_NODE
export TETHER_K8S_NODE_IP=$NODE_IP
export TETHER_K8S_NS_PID=$(<"$RUN_DIR/ns.pid")
export KUBECONFIG=$RUN_DIR/admin.kubeconfig
export PATH=$bin:\$PATH
EOF
  since "$t0" >"$RUN_DIR/start-seconds"
  log "node $NODE_NAME Ready ($NODE_IP, apiserver ready in $(<"$RUN_DIR/apiserver-start-seconds")s, node Ready $(<"$RUN_DIR/node-ready-seconds")s after the kubelet started; total $(<"$RUN_DIR/start-seconds")s)"
  log "inside the namespace: scripts/k8s-env.sh --node exec -- kubectl get pods -A"
}

# Every PID whose mount namespace is the holder's: the processes this script started and their
# descendants (shims, pod processes entered by nsenter). Nothing else can be in that namespace.
ns_pids() {
  local want p
  want=$(<"$RUN_DIR/ns.mnt")
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/ns/mnt" 2>/dev/null) == "$want" ]] && echo "${p#/proc/}"
  done
}

# PIDs in the cgroup trees the node created (the containers: their own mount namespaces).
cgroup_pids() {
  local cg c
  for cg in /sys/fs/cgroup/*/; do
    for c in "${NODE_CGROUPS[@]}"; do
      [[ -d $cg$c ]] && find "$cg$c" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
  done | sort -un
}

node_down() {
  local name pid cg c path holder=""
  [[ -d $RUN_DIR ]] || return 0
  # Components first, in reverse start order, by their recorded PIDs.
  for name in kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [[ -f $RUN_DIR/$name.pid ]] || continue
    pid=$(<"$RUN_DIR/$name.pid")
    if pid_ok "$name"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
      log "stopped $name (pid $pid)"
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  # Containers (only ours: the trees did not exist before up), then containerd and the shims.
  if [[ -f $RUN_DIR/ns.mnt ]]; then
    for pid in $(cgroup_pids); do kill -KILL "$pid" 2>/dev/null || true; done
    [[ -f $RUN_DIR/containerd.pid ]] && pid_ok containerd && kill -TERM "$(<"$RUN_DIR/containerd.pid")" 2>/dev/null
    sleep 0.5
    ns_alive && holder=$(<"$RUN_DIR/ns.pid")
    for pid in $(ns_pids); do [[ $pid == "$holder" ]] || kill -KILL "$pid" 2>/dev/null || true; done
    [[ -n $holder ]] && kill -KILL "$holder" 2>/dev/null
    for _ in $(seq 30); do [[ -z $(ns_pids) ]] && break; sleep 0.1; done
    rm -f "$RUN_DIR/containerd.pid" "$RUN_DIR/ns.pid"
  fi
  # cgroups this run created: leaves first (rmdir only removes empty ones).
  for _ in 1 2 3; do
    for cg in /sys/fs/cgroup/*/; do
      for c in "${NODE_CGROUPS[@]}"; do
        [[ -d $cg$c ]] && find "$cg$c" -depth -type d -exec rmdir {} + 2>/dev/null
      done
    done
    [[ -z $(for cg in /sys/fs/cgroup/*/; do for c in "${NODE_CGROUPS[@]}"; do [[ -d $cg$c ]] && echo x; done; done) ]] && break
    sleep 0.5
  done
  if [[ -f $RUN_DIR/created-mountpoints ]]; then
    while read -r path; do rmdir "$path" 2>/dev/null || log "WARNING: could not remove $path"; done \
      <"$RUN_DIR/created-mountpoints"
    rm -f "$RUN_DIR/created-mountpoints"
  fi
  # State (containerd root with overlay snapshots, etcd): keep only the logs.
  find "$RUN_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} + 2>/dev/null || true
  log "node down (logs kept in $RUN_DIR/logs)"
}

node_status() {
  local name pid
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    if pid_ok "$name"; then
      pid=$(<"$RUN_DIR/$name.pid")
      printf '%-24s running  pid %-7s rss %s MiB\n' "$name" "$pid" "$(( $(awk '/VmRSS/{print $2}' "/proc/$pid/status") / 1024 ))"
    else
      printf '%-24s stopped\n' "$name"
    fi
  done
  ns_alive || { echo "namespace: gone"; return 1; }
  printf '%-24s %s MiB in all processes of the namespace and its pods\n' "total rss" \
    "$(( $( { ns_pids; cgroup_pids; } | sort -un | while read -r p; do awk '/VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null; done | awk '{s+=$1} END {print s+0}') / 1024 ))"
  in_ns "$(<"$RUN_DIR/bin-dir")/kubectl" --kubeconfig="$RUN_DIR/admin.kubeconfig" get nodes -o wide
}

# Imports image tarballs (docker-archive or OCI) into the node's containerd, namespace k8s.io
# (the one the kubelet uses), so pods with imagePullPolicy IfNotPresent/Never find them.
node_import() {
  ns_alive || die "node not running: 'scripts/k8s-env.sh up --node' first"
  local f bin
  bin=$(<"$RUN_DIR/bin-dir")
  for f in "$@"; do
    [[ -f $f ]] || die "no such image tarball: $f"
    in_ns "$bin/ctr" --address "$RUN_DIR/containerd/containerd.sock" -n k8s.io images import "$f" >&2 ||
      die "importing $f failed"
  done
}

# Runs "$@" inside the namespaces with the node's environment (KUBECONFIG, PATH with kubectl/helm).
node_exec() {
  ns_alive || die "node not running: 'scripts/k8s-env.sh up --node' first"
  # shellcheck disable=SC1091
  in_ns bash -c 'source "$1"; shift; exec "$@"' node-exec "$RUN_DIR/env" "$@"
}
