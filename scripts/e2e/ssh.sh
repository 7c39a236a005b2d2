#!/usr/bin/env bash
#! End-to-end test of Tether with REAL components: SSH, SCP and HTTP through a tunnel.
#!
#! What it proves, with the release binaries and no mocks:
#!   * standalone PKI: `tether ca init`, `tether device issue`, `tether token` produce files the
#!     relay and agent accept;
#!   * `tether-agent` (TOML config, allowlist with targets) reaches `tether-relay` through an
#!     authenticating HTTP CONNECT proxy (tinyproxy, BasicAuth) given only HTTPS_PROXY;
#!   * OpenSSH works through `tether connect --stdio` as ProxyCommand: a command runs, and a
#!     50 MiB random file survives scp to the device and back (sha256 compared; MiB/s printed);
#!   * `tether connect --listen` forwards plain HTTP (curl against a python http.server);
#!   * three concurrent OpenSSH sessions through one `tether connect --listen` share one TLS
#!     connection to the relay (HTTP/2; the relay's accepted-connections counter grows by 1);
#!   * refusals carry their reason to the CLI: token_wrong_port, token_signature (token from a
#!     foreign PKI), device_port_not_allowed (port not in the agent's allowlist);
#!   * `tether-relay` with an empty token key exits 64 with one line naming the file;
#!   * relay metrics count the traffic (bytes service_to_device, stream_setups ok).
#!
#! Usage (as root on Debian; installs openssh-server, openssh-client, curl, python3, tinyproxy
#! when absent):
#!   scripts/e2e/ssh.sh                       # builds target/release/{tether,tether-relay,tether-agent}
#!   TETHER_BIN_DIR=/path/to/bins scripts/e2e/ssh.sh
#!   KEEP_WORKDIR=1 scripts/e2e/ssh.sh        # keep the temp dir (logs, keys) for inspection
#!   E2E_NO_PROXY=1 scripts/e2e/ssh.sh        # skip tinyproxy (agent dials directly; warns)
#! Under CI=true (or TETHER_REQUIRE_PROXY=1) a missing or unusable tinyproxy, or E2E_NO_PROXY,
#! is a failure, not a warning.
#! Last line: `e2e: N passed, M failed`; the exit status is non-zero on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEVICE="e2e/sensor-1"
SCP_MIB=50
PROXY_USER="e2e-user"
# tinyproxy's BasicAuth takes only [-A-Za-z0-9._]; the agent gets it percent-encoded (below).
PROXY_PASS="e2e.Pa55-w_rd"
export NO_COLOR=1 # plain logs from the tracing-based binaries

PASSED=0
FAILED=0
PIDS=()       # every background process this script started (killed by PID on exit)
PID_NAMES=()  # parallel to PIDS: the log name of each
W=""

# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS: %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$*" >&2; }
die() { fail "$*"; exit 1; }
warn() {
  printf '\n%s\n' "################################################################" >&2
  printf 'WARNING: %s\n' "$*" >&2
  printf '%s\n\n' "################################################################" >&2
}

cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  local i
  # One SIGTERM starts a graceful drain in relay and agent; a second one makes them exit at once.
  for i in "${!PIDS[@]}"; do kill -TERM "${PIDS[$i]}" 2>/dev/null; done
  sleep 0.2
  for i in "${!PIDS[@]}"; do kill -TERM "${PIDS[$i]}" 2>/dev/null; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local alive=0
    for i in "${!PIDS[@]}"; do kill -0 "${PIDS[$i]}" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.3
  done
  for i in "${!PIDS[@]}"; do kill -KILL "${PIDS[$i]}" 2>/dev/null; wait "${PIDS[$i]}" 2>/dev/null; done
  if [[ $rc != 0 || $FAILED != 0 ]] && [[ -n $W && -d $W/logs ]]; then
    local f
    for f in "$W"/logs/*.log; do
      [[ -s $f ]] || continue
      printf '\n----- tail of %s -----\n' "$f" >&2
      tail -n 30 "$f" >&2
    done
  fi
  if [[ -n $W && -d $W ]]; then
    if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then log "work dir kept: $W"; else rm -rf "$W"; fi
  fi
  [[ $rc != 0 && $FAILED == 0 ]] && FAILED=1
  echo "e2e: $PASSED passed, $FAILED failed"
  [[ $FAILED == 0 ]] || exit 1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

# Starts "$@" in the background with output in $W/logs/NAME.log; remembers its PID.
start_bg() {
  local name=$1
  shift
  "$@" >"$W/logs/$name.log" 2>&1 &
  PIDS+=("$!")
  PID_NAMES+=("$name")
  log "started $name (pid $!)"
}

# Is the background process started under NAME still running?
alive() {
  local i
  for i in "${!PID_NAMES[@]}"; do
    [[ ${PID_NAMES[$i]} == "$1" ]] && kill -0 "${PIDS[$i]}" 2>/dev/null && return 0
  done
  return 1
}

# Prints N distinct free loopback TCP ports (bound to :0 together, so they differ).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Retries "$@" every 0.25 s for up to $1 seconds.
wait_for() {
  local secs=$1
  shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.25
  done
}

# curl that never uses a proxy from the environment.
lcurl() { curl --noproxy '*' -sS --max-time 10 "$@"; }

# The `tether` CLI with no proxy settings (only the agent goes through the proxy).
tether() { env -u HTTPS_PROXY -u https_proxy "$BIN/tether" "$@"; }

metric() { # NAME_WITH_LABELS -> value (empty if absent)
  lcurl "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

now() { date +%s.%N; }

# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------

install_deps() {
  local missing=()
  command -v /usr/sbin/sshd >/dev/null || missing+=(openssh-server)
  command -v ssh >/dev/null && command -v scp >/dev/null && command -v ssh-keygen >/dev/null \
    || missing+=(openssh-client)
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3)
  command -v tinyproxy >/dev/null || [[ -x /usr/bin/tinyproxy || -x /usr/sbin/tinyproxy ]] \
    || missing+=(tinyproxy)
  if ((${#missing[@]} == 0)); then
    log "all dependencies present"
    return
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  local required=() pkg
  for pkg in "${missing[@]}"; do [[ $pkg == tinyproxy ]] || required+=("$pkg"); done
  if ((${#required[@]})); then
    apt-get install -y -qq --no-install-recommends "${required[@]}" >/dev/null \
      || die "apt-get install ${required[*]} failed"
  fi
  # tinyproxy is optional outside CI: without it the test runs without a proxy (loud warning
  # below; a failure under CI).
  if [[ " ${missing[*]} " == *" tinyproxy "* ]]; then
    apt-get install -y -qq --no-install-recommends tinyproxy >/dev/null || true
  fi
}

find_binaries() {
  if [[ -n ${TETHER_BIN_DIR:-} ]]; then
    BIN=$TETHER_BIN_DIR
  else
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --quiet -p tether-cli -p tether-relay -p tether-agent) \
      || die "cargo build failed"
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
  fi
  local b
  for b in tether tether-relay tether-agent; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing"
  done
  log "binaries: $BIN"
}

make_pki() {
  tether ca init --dir "$W/pki" >/dev/null
  tether device issue "$DEVICE" --dir "$W/pki" --out "$W/dev" >/dev/null
  local port
  for port in 22 8080 2222; do
    tether token --dir "$W/pki" --device "$DEVICE" --port "$port" --ttl 10m --out "$W/p$port.token"
  done
  # A second, unrelated standalone PKI: its tokens must not verify at our relay.
  tether ca init --dir "$W/pki2" >/dev/null
  tether token --dir "$W/pki2" --device "$DEVICE" --port 22 --ttl 10m --out "$W/foreign.token"
  pass "standalone PKI: CA, device credentials and tokens created"
}

start_relay() {
  start_bg relay "$BIN/tether-relay" \
    --listen "127.0.0.1:$RELAY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --tls-cert "$W/pki/relay.crt" --tls-key "$W/pki/relay.key" \
    --client-ca "$W/pki/ca.crt" --token-public-key "$W/pki/token.pub"
  wait_for 20 lcurl -f "http://127.0.0.1:$ADMIN_PORT/ready" || die "relay never became ready"
  pass "relay ready on 127.0.0.1:$RELAY_PORT (admin $ADMIN_PORT)"
}

start_sshd() {
  mkdir -p /run/sshd 2>/dev/null || die "cannot create /run/sshd (run as root)"
  ssh-keygen -q -t ed25519 -N '' -C e2e-host -f "$W/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C e2e-client -f "$W/client_key"
  cp "$W/client_key.pub" "$W/authorized_keys"
  cat >"$W/sshd_config" <<EOF
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
EOF
  /usr/sbin/sshd -t -f "$W/sshd_config" || die "sshd rejects its config"
  start_bg sshd /usr/sbin/sshd -D -e -f "$W/sshd_config"
  wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSHD_PORT" || die "sshd did not listen on $SSHD_PORT"
}

start_portal() {
  mkdir -p "$W/portal"
  PORTAL_TEXT="tether diagnostics portal: sensor-1 status OK $RANDOM"
  printf '%s\n' "$PORTAL_TEXT" >"$W/portal/status.txt"
  start_bg portal python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$W/portal"
  wait_for 10 lcurl -f "http://127.0.0.1:$HTTP_PORT/status.txt" || die "http.server did not start"
}

# The proxy path cannot be tested: a failure when CI (or TETHER_REQUIRE_PROXY) requires it,
# else a loud warning (the agent then dials the relay directly).
no_proxy_path() {
  if [[ ${CI:-} == true || -n ${TETHER_REQUIRE_PROXY:-} ]]; then
    die "$* (the proxy path is required under CI=true / TETHER_REQUIRE_PROXY)"
  fi
  warn "$*: the agent dials the relay WITHOUT a proxy; proxy path untested"
}

# Every byte of $1 as %XX: the agent's URL only works if it percent-decodes the credentials.
percent_encode_all() { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n' | sed 's/../%&/g'; }

# Starts tinyproxy with BasicAuth on [::1] only, allowing CONNECT to the relay port only. Sets
# AGENT_PROXY (empty when no usable tinyproxy, after a loud warning).
start_proxy() {
  AGENT_PROXY=""
  local tp
  tp=$(command -v tinyproxy || true)
  [[ -z $tp && -x /usr/sbin/tinyproxy ]] && tp=/usr/sbin/tinyproxy
  if [[ ${E2E_NO_PROXY:-0} == 1 ]]; then
    no_proxy_path "E2E_NO_PROXY=1"
    return
  fi
  if [[ -z $tp ]]; then
    no_proxy_path "tinyproxy is not installed"
    return
  fi
  # IPv6 loopback: the agent must pass the address to connect() without the URL's brackets.
  cat >"$W/tinyproxy.conf" <<EOF
Port $PROXY_PORT
Listen ::1
Timeout 600
LogFile "$W/logs/tinyproxy.log"
LogLevel Info
MaxClients 20
Allow ::1
ConnectPort $RELAY_PORT
BasicAuth $PROXY_USER $PROXY_PASS
EOF
  # tinyproxy drops root to `nobody` when started as root; it must be able to write its log.
  if [[ $(id -u) == 0 ]]; then
    printf 'User nobody\nGroup nogroup\n' >>"$W/tinyproxy.conf"
    : >"$W/logs/tinyproxy.log"
    chmod 0666 "$W/logs/tinyproxy.log"
    chmod 0755 "$W" "$W/logs"
  fi
  start_bg tinyproxy-stdout "$tp" -d -c "$W/tinyproxy.conf"
  if ! wait_for 10 bash -c "exec 3<>/dev/tcp/::1/$PROXY_PORT"; then
    no_proxy_path "tinyproxy did not start on [::1]:$PROXY_PORT (BasicAuth unsupported? no IPv6 loopback?)"
    return
  fi
  # Without credentials the proxy must answer 407: proves BasicAuth is really enforced.
  local code
  code=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -x "http://[::1]:$PROXY_PORT" \
    "http://127.0.0.1:$HTTP_PORT/status.txt" 2>/dev/null || true)
  if [[ $code != 407 ]]; then
    no_proxy_path "tinyproxy answered HTTP $code (not 407) without credentials: BasicAuth unsupported"
    return
  fi
  pass "tinyproxy on [::1]:$PROXY_PORT enforces BasicAuth (407 without credentials)"
  PROXY_LOG_MARK=$(wc -l <"$W/logs/tinyproxy.log")
  AGENT_PROXY="http://$(percent_encode_all "$PROXY_USER"):$(percent_encode_all "$PROXY_PASS")@[::1]:$PROXY_PORT"
}

start_agent() {
  cat >"$W/agent.toml" <<EOF
relay = "127.0.0.1:$RELAY_PORT"
relay-domain = "tether.local"
cert = "$W/dev/device.crt"
key = "$W/dev/device.key"
ca = "$W/dev/ca.crt"
allow = [
  { port = 22, target = "127.0.0.1:$SSHD_PORT" },
  { port = 8080, target = "127.0.0.1:$HTTP_PORT" },
]
backoff-base = "200ms"
backoff-cap = "2s"
log-level = "info"
EOF
  local envs=(env -u NO_PROXY -u no_proxy -u https_proxy -u HTTPS_PROXY)
  [[ -n $AGENT_PROXY ]] && envs+=("HTTPS_PROXY=$AGENT_PROXY")
  start_bg agent "${envs[@]}" "$BIN/tether-agent" --config "$W/agent.toml"
  local deadline=$((SECONDS + 30))
  until [[ $(metric tether_relay_connected_devices 2>/dev/null) == 1 ]]; do
    alive agent || die "tether-agent exited"
    ((SECONDS < deadline)) || die "relay never reported tether_relay_connected_devices 1"
    sleep 0.25
  done
  pass "agent connected: tether_relay_connected_devices 1"
  if [[ -n $AGENT_PROXY ]]; then
    # tinyproxy logs `Request (file descriptor 5): CONNECT 127.0.0.1:PORT HTTP/1.1`, then
    # `Established connection to host "127.0.0.1" ...` once the tunnel is up.
    local since
    since=$(tail -n +"$((PROXY_LOG_MARK + 1))" "$W/logs/tinyproxy.log")
    if grep -q "Request .*: CONNECT 127.0.0.1:$RELAY_PORT HTTP/1.1" <<<"$since" \
      && grep -q 'Established connection to host "127.0.0.1"' <<<"$since"; then
      pass "agent reached the relay through the proxy (CONNECT 127.0.0.1:$RELAY_PORT in tinyproxy log)"
    else
      fail "no CONNECT to the relay port in the tinyproxy log"
    fi
  fi
}

# ssh/scp options shared by every OpenSSH invocation.
ssh_opts() {
  SSH_OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$W/known_hosts"
    -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=20 -i "$W/client_key"
    -o "ProxyCommand=env -u HTTPS_PROXY -u https_proxy $BIN/tether connect $DEVICE --port 22 --token-file $W/p22.token --relay 127.0.0.1:$RELAY_PORT --ca $W/pki/ca.crt --stdio")
  SSH_USER=$(id -un)
}

test_ssh_command() {
  local out
  if ! out=$(ssh "${SSH_OPTS[@]}" "$SSH_USER@sensor-1" 'echo tether-e2e-ok; uname -s' 2>"$W/logs/ssh.log"); then
    fail "ssh through the tunnel failed"
    return
  fi
  if [[ $out == $'tether-e2e-ok\nLinux' ]]; then
    pass "ssh through tether connect --stdio ran a command"
  else
    fail "unexpected ssh output: $out"
  fi
}

test_scp() {
  mkdir -p "$W/device"
  head -c "$((SCP_MIB * 1024 * 1024))" /dev/urandom >"$W/up.bin"
  local t0 t1 t2
  t0=$(now)
  scp -q "${SSH_OPTS[@]}" "$W/up.bin" "$SSH_USER@sensor-1:$W/device/up.bin" 2>>"$W/logs/scp.log" \
    || { fail "scp to the device failed"; return; }
  t1=$(now)
  scp -q "${SSH_OPTS[@]}" "$SSH_USER@sensor-1:$W/device/up.bin" "$W/down.bin" 2>>"$W/logs/scp.log" \
    || { fail "scp from the device failed"; return; }
  t2=$(now)
  local a b c
  a=$(sha256sum <"$W/up.bin" | cut -d' ' -f1)
  b=$(sha256sum <"$W/device/up.bin" | cut -d' ' -f1)
  c=$(sha256sum <"$W/down.bin" | cut -d' ' -f1)
  if [[ $a == "$b" && $b == "$c" ]]; then
    pass "scp ${SCP_MIB} MiB to the device and back: sha256 matches"
  else
    fail "sha256 mismatch: sent $a, device $b, back $c"
  fi
  awk -v m="$SCP_MIB" -v t0="$t0" -v t1="$t1" -v t2="$t2" 'BEGIN {
    printf "scp throughput: up %.1f MiB/s (%.2f s), down %.1f MiB/s (%.2f s)\n",
      m / (t1 - t0), t1 - t0, m / (t2 - t1), t2 - t1 }'
}

# Three ssh sessions at once through one `tether connect --listen`: each is its own stream on
# one multiplexed connection, so the relay accepts one TCP connection for all three.
test_ssh_listen() {
  local before after i ok=0 pids=()
  # Counted before the forwarder starts: its readiness probe below is already a tunnelled
  # connection (the forwarder opens a stream for every local connection), the first on the
  # multiplexed connection.
  before=$(metric tether_relay_connections_accepted_total)
  start_bg ssh-forward "$BIN/tether" connect "$DEVICE" --port 22 --token-file "$W/p22.token" \
    --relay "127.0.0.1:$RELAY_PORT" --ca "$W/pki/ca.crt" --listen "127.0.0.1:$SSH_FWD_PORT"
  wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SSH_FWD_PORT" || { fail "ssh forwarder did not listen"; return; }
  local opts=(-F /dev/null -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$W/known_hosts_fwd"
    -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=20 -i "$W/client_key" -p "$SSH_FWD_PORT")
  for i in 1 2 3; do
    ssh "${opts[@]}" "$SSH_USER@127.0.0.1" "sleep 1; echo session-$i" >"$W/ssh-fwd-$i.out" 2>>"$W/logs/ssh-fwd.log" &
    pids+=($!)
  done
  for i in 1 2 3; do
    wait "${pids[$((i - 1))]}" && [[ $(cat "$W/ssh-fwd-$i.out") == "session-$i" ]] && ok=$((ok + 1))
  done
  after=$(metric tether_relay_connections_accepted_total)
  if ((ok == 3)) && ((after - before == 1)); then
    pass "3 concurrent ssh sessions through tether connect --listen on 1 relay connection (HTTP/2)"
  else
    fail "ssh through --listen: $ok of 3 sessions ok, relay accepted $((after - before)) connections (want 1)"
  fi
}

test_http_forward() {
  start_bg forward "$BIN/tether" connect "$DEVICE" --port 8080 --token-file "$W/p8080.token" \
    --relay "127.0.0.1:$RELAY_PORT" --ca "$W/pki/ca.crt" --listen "127.0.0.1:$FWD_PORT"
  local body="" i
  for i in $(seq 1 40); do
    body=$(lcurl -f "http://127.0.0.1:$FWD_PORT/status.txt" 2>/dev/null) && break
    alive forward || break
    sleep 0.25
  done
  if [[ $body == "$PORTAL_TEXT" ]]; then
    pass "HTTP portal through tether connect --listen returned the expected content"
  else
    fail "HTTP through the forwarder returned: ${body:-<nothing>}"
  fi
}

# Runs `tether connect --stdio` with TOKEN for PORT; expects failure with REASON on stderr.
expect_refusal() {
  local what=$1 token=$2 port=$3 reason=$4 rc=0
  timeout 30 env -u HTTPS_PROXY -u https_proxy "$BIN/tether" connect "$DEVICE" --port "$port" \
    --token-file "$token" --relay "127.0.0.1:$RELAY_PORT" --ca "$W/pki/ca.crt" --stdio \
    </dev/null >/dev/null 2>"$W/logs/refusal-$reason.log" || rc=$?
  if [[ $rc != 0 ]] && grep -q "$reason" "$W/logs/refusal-$reason.log"; then
    pass "$what refused with $reason (exit $rc)"
  else
    fail "$what: expected a refusal with $reason, got exit $rc: $(head -c 300 "$W/logs/refusal-$reason.log")"
  fi
}

test_refusals() {
  expect_refusal "port-22 token used for port 8080" "$W/p22.token" 8080 token_wrong_port
  expect_refusal "token from another PKI" "$W/foreign.token" 22 token_signature
  expect_refusal "port 2222 (not in the agent's allowlist)" "$W/p2222.token" 2222 device_port_not_allowed
}

test_relay_empty_token_key() {
  : >"$W/empty-token.pub"
  local ports rc=0 err
  read -r -a ports <<<"$(free_ports 2)"
  timeout 15 "$BIN/tether-relay" \
    --listen "127.0.0.1:${ports[0]}" --admin-listen "127.0.0.1:${ports[1]}" \
    --tls-cert "$W/pki/relay.crt" --tls-key "$W/pki/relay.key" \
    --client-ca "$W/pki/ca.crt" --token-public-key "$W/empty-token.pub" \
    >"$W/logs/relay-empty-key.stdout.log" 2>"$W/logs/relay-empty-key.log" || rc=$?
  err=$(cat "$W/logs/relay-empty-key.log")
  if [[ $rc == 64 && $(wc -l <"$W/logs/relay-empty-key.log") == 1 && $err == *"$W/empty-token.pub"* ]]; then
    pass "relay with an empty token key exits 64: $err"
  else
    fail "relay with an empty token key: exit $rc, stderr: $err"
  fi
}

test_metrics() {
  local bytes ok
  bytes=$(metric 'tether_relay_bytes_total{direction="service_to_device"}')
  ok=$(metric 'tether_relay_stream_setups_total{result="ok"}')
  if awk -v b="${bytes:-0}" -v o="${ok:-0}" 'BEGIN { exit !(b + 0 > 0 && o + 0 > 0) }'; then
    pass "relay metrics: bytes service_to_device=$bytes, stream_setups ok=$ok"
  else
    fail "relay metrics: bytes service_to_device=${bytes:-absent}, stream_setups ok=${ok:-absent}"
  fi
}

# ---------------------------------------------------------------------------------------------

main() {
  local started=$SECONDS
  install_deps
  find_binaries
  W=$(mktemp -d /tmp/tether-e2e.XXXXXX)
  mkdir -p "$W/logs"
  log "work dir: $W"
  read -r RELAY_PORT ADMIN_PORT SSHD_PORT HTTP_PORT PROXY_PORT FWD_PORT SSH_FWD_PORT <<<"$(free_ports 7)"
  log "ports: relay=$RELAY_PORT admin=$ADMIN_PORT sshd=$SSHD_PORT http=$HTTP_PORT proxy=$PROXY_PORT forward=$FWD_PORT"

  make_pki
  start_relay
  start_sshd
  start_portal
  start_proxy
  start_agent
  ssh_opts
  test_ssh_command
  test_scp
  test_http_forward
  test_ssh_listen
  test_refusals
  test_relay_empty_token_key
  test_metrics
  log "finished in $((SECONDS - started)) s"
}

main "$@"
