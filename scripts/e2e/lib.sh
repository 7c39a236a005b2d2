# Shared helpers of scripts/e2e/{prometheus,otel}.sh (sourced, not run). Processes started with
# start_bg are remembered by PID and stopped by PID in cleanup_bg; never by name.

PIDS=()
PID_NAMES=()
PASSED=0
FAILED=0
W=""

log() { printf '[%s %s] %s\n' "$E2E_NAME" "$(date -u +%H:%M:%S)" "$*"; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$*" >&2; }
die() { fail "$*"; exit 1; }

# Starts "$@" in the background, output in $W/logs/NAME.log.
start_bg() {
  local name=$1
  shift
  "$@" >"$W/logs/$name.log" 2>&1 &
  PIDS+=("$!")
  PID_NAMES+=("$name")
  log "started $name (pid $!)"
}

# Stops the background process started as NAME (SIGTERM, then SIGKILL after 5 s).
stop_bg() {
  local i
  for i in "${!PID_NAMES[@]}"; do
    [[ ${PID_NAMES[$i]} == "$1" ]] || continue
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
}

cleanup_bg() {
  local i
  for i in "${!PIDS[@]}"; do kill -TERM "${PIDS[$i]}" 2>/dev/null; done
  sleep 0.3
  for i in "${!PIDS[@]}"; do kill -TERM "${PIDS[$i]}" 2>/dev/null; done
  for _ in $(seq 1 20); do
    local alive=0
    for i in "${!PIDS[@]}"; do kill -0 "${PIDS[$i]}" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.25
  done
  for i in "${!PIDS[@]}"; do kill -KILL "${PIDS[$i]}" 2>/dev/null; wait "${PIDS[$i]}" 2>/dev/null; done
}

# On failure: the tail of every log.
dump_logs() {
  [[ -n $W && -d $W/logs ]] || return 0
  local f
  for f in "$W"/logs/*.log; do
    [[ -s $f ]] || continue
    printf '\n----- tail of %s -----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}

free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_for() {
  local secs=$1
  shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.25
  done
}

lcurl() { curl --noproxy '*' -sS --max-time 10 "$@"; }

# metric URL SERIES -> value of that exact series (empty if absent).
metric() { lcurl "$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'; }

# Binaries: $TETHER_BIN_DIR must hold tether, tether-relay, tether-agent (built with the agent's
# `metrics` and `otel` features) and, for prometheus.sh, tether-operator.
find_binaries() {
  BIN=${TETHER_BIN_DIR:?set TETHER_BIN_DIR (scripts/test.sh obs builds the binaries)}
  local b
  for b in "$@"; do [[ -x $BIN/$b ]] || die "$BIN/$b is missing"; done
}

tether() { env -u HTTPS_PROXY -u https_proxy "$BIN/tether" "$@"; }

# Standalone PKI in $W/pki, device credentials in $W/dev-N, tokens $W/N-PORT.token.
make_pki() {
  tether ca init --dir "$W/pki" >/dev/null
  local n=0 d
  for d in "$@"; do
    tether device issue "$d" --dir "$W/pki" --out "$W/dev-$n" >/dev/null
    local port
    for port in 22 2222; do
      tether token --dir "$W/pki" --device "$d" --port "$port" --ttl 20m --out "$W/$n-$port.token"
    done
    n=$((n + 1))
  done
  tether ca init --dir "$W/pki2" >/dev/null
  tether token --dir "$W/pki2" --device "$1" --port 22 --ttl 20m --out "$W/foreign.token"
}

# start_relay NAME PORT ADMIN_PORT [env...]
start_relay() {
  local name=$1 port=$2 admin=$3
  shift 3
  start_bg "$name" env "$@" "$BIN/tether-relay" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --tls-cert "$W/pki/relay.crt" --tls-key "$W/pki/relay.key" \
    --client-ca "$W/pki/ca.crt" --token-public-key "$W/pki/token.pub"
  wait_for 30 lcurl -f "http://127.0.0.1:$admin/ready" || die "relay $name never became ready"
}

start_sshd() {
  mkdir -p /run/sshd 2>/dev/null || die "cannot create /run/sshd (run as root)"
  ssh-keygen -q -t ed25519 -N '' -C e2e-host -f "$W/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C e2e-client -f "$W/client_key"
  cp "$W/client_key.pub" "$W/authorized_keys"
  cat >"$W/sshd_config" <<CFG
ListenAddress 127.0.0.1:$SSHD_PORT
HostKey $W/ssh_host_ed25519_key
PidFile $W/sshd.pid
AuthorizedKeysFile $W/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
CFG
  start_bg sshd /usr/sbin/sshd -D -e -f "$W/sshd_config"
  wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSHD_PORT" || die "sshd did not listen on $SSHD_PORT"
}

# start_agent NAME DEVICE_INDEX RELAY_PORT [extra TOML line] [env...]
start_agent() {
  local name=$1 n=$2 relay=$3 extra=${4:-}
  shift 4 || shift $#
  cat >"$W/$name.toml" <<CFG
relay = "127.0.0.1:$relay"
relay-domain = "tether.local"
cert = "$W/dev-$n/device.crt"
key = "$W/dev-$n/device.key"
ca = "$W/dev-$n/ca.crt"
allow = [{ port = 22, target = "127.0.0.1:$SSHD_PORT" }]
backoff-base = "200ms"
backoff-cap = "2s"
$extra
CFG
  start_bg "$name" env -u HTTPS_PROXY -u https_proxy "$@" "$BIN/tether-agent" --config "$W/$name.toml"
}

# ssh_via DEVICE TOKEN RELAY_PORT [env...] -- ssh args...
ssh_opts() { # DEVICE TOKEN RELAY_PORT [env assignments...]
  local device=$1 token=$2 relay=$3
  shift 3
  SSH_OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$W/known_hosts"
    -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=20 -i "$W/client_key"
    -o "ProxyCommand=env -u HTTPS_PROXY -u https_proxy $* $BIN/tether connect $device --port 22 --token-file $token --relay 127.0.0.1:$relay --ca $W/pki/ca.crt --stdio")
  SSH_USER=$(id -un)
}

# expect_refusal DEVICE TOKEN PORT RELAY_PORT REASON
expect_refusal() {
  local device=$1 token=$2 port=$3 relay=$4 reason=$5 rc=0
  timeout 30 env -u HTTPS_PROXY -u https_proxy "$BIN/tether" connect "$device" --port "$port" \
    --token-file "$token" --relay "127.0.0.1:$relay" --ca "$W/pki/ca.crt" --stdio \
    </dev/null >/dev/null 2>"$W/logs/refusal.log" || rc=$?
  if [[ $rc != 0 ]] && grep -q "$reason" "$W/logs/refusal.log"; then
    pass "refused with $reason"
  else
    fail "expected a refusal with $reason, got exit $rc: $(head -c 300 "$W/logs/refusal.log")"
  fi
}
