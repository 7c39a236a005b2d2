#!/usr/bin/env bash
#! The factory floor: a device behind a firewall that admits nothing and lets out only an
#! authenticating HTTP proxy, reached over SSH through Tether; and the relay, in a namespace of its
#! own, dials nothing at all (no open relay); and a device whose link dies is found dead within
#! three keepalive intervals.
#!
#! Three network namespaces joined by veth pairs (`ip netns`, nothing on the host changes):
#!
#!   dev  10.77.1.2 ──veth── 10.77.1.1  hub  10.77.2.1 ──veth── 10.77.2.2  relay
#!   sshd (0.0.0.0:22),       tinyproxy (BasicAuth, 10.77.1.1:3128),       tether-relay
#!   tether-agent             ssh + `tether connect`, routes between       (10.77.2.2:8443)
#!
#! The hub forwards IP between dev and relay, so routing alone would let anything through: only
#! dev's nftables ruleset (input: policy drop, loopback and replies only; output: policy drop,
#! loopback, replies and TCP to the proxy only) keeps the device unreachable. Checks:
#!   * tinyproxy answers 407 without credentials; the agent connects through it (CONNECT in its log);
#!   * ssh (remote command) and scp of $SCP_MIB MiB each way (sha256) through `tether connect`;
#!   * a direct ssh from the hub to 10.77.1.2:22 fails and dev's inbound-drop counter went up,
#!     while sshd does answer on 10.77.1.2:22 from inside dev (so the firewall is what stops it);
#!     the device cannot dial the relay directly either;
#!   * no open relay: nftables counters in the relay namespace count every TCP SYN and UDP
#!     datagram the relay sends to anything but loopback over the whole run, including open-relay
#!     probes (HTTP CONNECT and absolute-URI requests for the device's sshd, a TLS ClientHello with
#!     an IP address as SNI, a service request for a device that is not connected): all zero. A
#!     standalone relay has no ring peers and no API server, so its allowed set is empty;
#!   * dead peer: with `--keepalive-interval 1s --keepalive-timeout 1s` (relay and agent), 100%
#!     loss on the device leg (an nft drop rule in dev) while an ssh session runs: the relay
#!     declares the device dead within 3 intervals, the ssh session's stream ends with a reason in
#!     the relay log, the agent logs its own keepalive verdict; lifting the rule brings the device
#!     back.
#!
#! Usage (root; Debian with iproute2, nftables, openssh, tinyproxy, curl, python3):
#!   TETHER_BIN_DIR=target/release scripts/e2e/factory.sh
#!   KEEP_WORKDIR=1 ...            keep the work dir (logs, rulesets)
#!   FACTORY_NO_FIREWALL=1 ...     self-check: no dev ruleset; the direct-ssh check must then FAIL
#!   FACTORY_IMPAIR=1 ...          not in CI (minutes): the dev–hub link is scripts/netem/wire.py
#!                                 with 100 ms ± 20 ms each way, 1% loss, 0.5% reorder, and
#!                                 $IMPAIR_MIB MiB (default 100) go to the device and back by scp
#!                                 with equal SHA-256; replaces the dead-peer part
#! Last line: `factory: N passed, M failed`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E_NAME=factory
# shellcheck source=scripts/e2e/lib.sh
source "$ROOT/scripts/e2e/lib.sh"
export NO_COLOR=1
SCP_MIB=${SCP_MIB:-20}
DEVICE=factory/press-7
PROXY_USER=floor PROXY_PASS="uplink-$RANDOM"
# Namespace names carry the PID: parallel runs (several engineers, CI) never collide.
NS_DEV="tf$$-dev" NS_HUB="tf$$-hub" NS_RELAY="tf$$-relay"
DEV_IP=10.77.1.2 HUB_DEV_IP=10.77.1.1 HUB_RELAY_IP=10.77.2.1 RELAY_IP=10.77.2.2
RELAY_PORT=8443 ADMIN=127.0.0.1:9090 PROXY_PORT=3128
# 1 s finds a dead link fast; on the impaired link a PING can wait longer than that behind bulk
# data in the TCP send queue (200 ms RTT, retransmissions), so that run keeps the 20 s default.
KEEPALIVE=1
[[ ${FACTORY_IMPAIR:-0} == 1 ]] && KEEPALIVE=20

cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  cleanup_bg
  [[ $rc != 0 || $FAILED != 0 ]] && dump_logs
  local ns
  for ns in "$NS_DEV" "$NS_HUB" "$NS_RELAY"; do ip netns del "$ns" 2>/dev/null; done
  if [[ -n $W && -d $W ]]; then
    if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then log "work dir kept: $W"; else rm -rf "$W"; fi
  fi
  [[ $rc != 0 && $FAILED == 0 ]] && FAILED=1
  echo "factory: $PASSED passed, $FAILED failed"
  [[ $FAILED == 0 ]] || exit 1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# dev ─ hub ─ relay, each namespace with its own loopback; the hub routes between the two links.
make_namespaces() {
  local ns
  for ns in "$NS_DEV" "$NS_HUB" "$NS_RELAY"; do
    ip netns add "$ns"
    in_ns "$ns" ip link set lo up
  done
  ip link add "tf$$r" netns "$NS_RELAY" type veth peer name "tf$$hr" netns "$NS_HUB"
  if [[ ${FACTORY_IMPAIR:-0} == 1 ]]; then
    # The device's link is the userspace impairment wire (the kernel has no netem).
    start_bg wire python3 "$ROOT/scripts/netem/wire.py" --ns-a "$NS_DEV" --ip-a "$DEV_IP" \
      --ns-b "$NS_HUB" --ip-b "$HUB_DEV_IP" --dev "tf$$d" \
      --delay-ms 100 --jitter-ms 20 --loss 1 --reorder 0.5
    wait_for 20 grep -q ready "$W/logs/wire.log" || die "wire.py did not come up"
    in_ns "$NS_DEV" ip route add default dev "tf$$d"
  else
    ip link add "tf$$d" netns "$NS_DEV" type veth peer name "tf$$hd" netns "$NS_HUB"
    in_ns "$NS_DEV" ip addr add "$DEV_IP/24" dev "tf$$d"
    in_ns "$NS_HUB" ip addr add "$HUB_DEV_IP/24" dev "tf$$hd"
    in_ns "$NS_DEV" ip link set "tf$$d" up
    in_ns "$NS_HUB" ip link set "tf$$hd" up
    in_ns "$NS_DEV" ip route add default via "$HUB_DEV_IP"
  fi
  in_ns "$NS_HUB" ip addr add "$HUB_RELAY_IP/24" dev "tf$$hr"
  in_ns "$NS_RELAY" ip addr add "$RELAY_IP/24" dev "tf$$r"
  in_ns "$NS_HUB" ip link set "tf$$hr" up
  in_ns "$NS_RELAY" ip link set "tf$$r" up
  in_ns "$NS_RELAY" ip route add default via "$HUB_RELAY_IP"
  # A per-namespace sysctl (the hub's own), not the host's.
  in_ns "$NS_HUB" sysctl -qw net.ipv4.ip_forward=1
  pass "namespaces $NS_DEV, $NS_HUB, $NS_RELAY joined by veth; the hub routes between them"
}

# The device's firewall: nothing in, only the proxy out. Counters show what it dropped.
dev_firewall() {
  if [[ ${FACTORY_NO_FIREWALL:-0} == 1 ]]; then
    printf '\nWARNING: FACTORY_NO_FIREWALL=1: the device has no firewall (self-check run)\n\n' >&2
    return
  fi
  cat >"$W/dev.nft" <<NFT
table inet floor {
  chain input {
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    counter name dropped_in
  }
  chain output {
    type filter hook output priority 0; policy drop;
    oif lo accept
    ct state established,related accept
    ip daddr $HUB_DEV_IP tcp dport $PROXY_PORT accept
    counter name dropped_out
  }
  counter dropped_in {}
  counter dropped_out {}
}
NFT
  in_ns "$NS_DEV" nft -f "$W/dev.nft"
  pass "device firewall: input policy drop, output only to the proxy $HUB_DEV_IP:$PROXY_PORT"
}

# Every packet the relay sends that opens something: TCP SYN (not SYN-ACK) and UDP, anywhere but
# loopback (the test's own admin scrapes run on the relay namespace's loopback).
relay_counters() {
  cat >"$W/relay.nft" <<NFT
table inet egress {
  counter syn_out {}
  counter udp_out {}
  chain output {
    type filter hook output priority 0; policy accept;
    oif lo accept
    tcp flags & (syn | ack) == syn counter name syn_out
    meta l4proto udp counter name udp_out
  }
}
NFT
  in_ns "$NS_RELAY" nft -f "$W/relay.nft"
}

nft_packets() { # NS COUNTER -> packets
  in_ns "$1" nft -j list counter inet "$2" "$3" |
    python3 -c 'import json,sys; print([o["counter"]["packets"] for o in json.load(sys.stdin)["nftables"] if "counter" in o][0])'
}

devices_are() { [[ $(rmetric tether_relay_connected_devices) == "$1" ]]; }
rmetric() { in_ns "$NS_RELAY" curl --noproxy '*' -sS --max-time 5 "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

start_relay_ns() {
  start_bg relay ip netns exec "$NS_RELAY" "$BIN/tether-relay" \
    --listen "$RELAY_IP:$RELAY_PORT" --admin-listen "$ADMIN" \
    --tls-cert "$W/pki/relay.crt" --tls-key "$W/pki/relay.key" \
    --client-ca "$W/pki/ca.crt" --token-public-key "$W/pki/token.pub" \
    --keepalive-interval "${KEEPALIVE}s" --keepalive-timeout "${KEEPALIVE}s" \
    --device-connect-timeout 3s
  wait_for 30 in_ns "$NS_RELAY" curl --noproxy '*' -sf "http://$ADMIN/ready" || die "relay never became ready"
  pass "relay ready on $RELAY_IP:$RELAY_PORT in $NS_RELAY"
}

start_proxy_hub() {
  cat >"$W/tinyproxy.conf" <<CFG
Port $PROXY_PORT
Listen $HUB_DEV_IP
Timeout 600
LogFile "$W/logs/tinyproxy.log"
LogLevel Info
MaxClients 20
Allow 10.77.1.0/24
ConnectPort $RELAY_PORT
BasicAuth $PROXY_USER $PROXY_PASS
User nobody
Group nogroup
CFG
  : >"$W/logs/tinyproxy.log"
  chmod 0666 "$W/logs/tinyproxy.log"
  chmod 0755 "$W" "$W/logs"
  start_bg tinyproxy-stdout ip netns exec "$NS_HUB" tinyproxy -d -c "$W/tinyproxy.conf"
  wait_for 10 in_ns "$NS_HUB" bash -c "exec 3<>/dev/tcp/$HUB_DEV_IP/$PROXY_PORT" || die "tinyproxy did not listen"
  local code
  code=$(in_ns "$NS_DEV" curl -sS --max-time 5 -o /dev/null -w '%{http_connect}' -p \
    -x "http://$HUB_DEV_IP:$PROXY_PORT" "https://$RELAY_IP:$RELAY_PORT/" 2>/dev/null || true)
  [[ $code == 407 ]] && pass "the proxy refuses the device without credentials (HTTP $code)" ||
    fail "proxy without credentials answered '$code', expected 407"
}

start_sshd_dev() {
  ssh-keygen -q -t ed25519 -N '' -C factory-host -f "$W/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C factory-client -f "$W/client_key"
  cp "$W/client_key.pub" "$W/authorized_keys"
  mkdir -p /run/sshd
  cat >"$W/sshd_config" <<CFG
ListenAddress 0.0.0.0:22
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
  start_bg sshd ip netns exec "$NS_DEV" /usr/sbin/sshd -D -e -f "$W/sshd_config"
  wait_for 10 in_ns "$NS_DEV" bash -c "exec 3<>/dev/tcp/127.0.0.1/22" || die "sshd did not listen in $NS_DEV"
}

start_agent_dev() {
  cat >"$W/agent.toml" <<CFG
relay = "$RELAY_IP:$RELAY_PORT"
relay-domain = "tether.local"
cert = "$W/dev-0/device.crt"
key = "$W/dev-0/device.key"
ca = "$W/dev-0/ca.crt"
allow = [{ port = 22, target = "127.0.0.1:22" }]
backoff-base = "200ms"
backoff-cap = "1s"
keepalive-interval = "${KEEPALIVE}s"
keepalive-timeout = "${KEEPALIVE}s"
CFG
  start_bg agent ip netns exec "$NS_DEV" env -u NO_PROXY -u no_proxy \
    "HTTPS_PROXY=http://$PROXY_USER:$PROXY_PASS@$HUB_DEV_IP:$PROXY_PORT" \
    "$BIN/tether-agent" --config "$W/agent.toml"
  wait_for 30 devices_are 1 || die "the agent never connected"
  if grep -q "CONNECT $RELAY_IP:$RELAY_PORT" "$W/logs/tinyproxy.log"; then
    pass "agent connected through the proxy (CONNECT $RELAY_IP:$RELAY_PORT in tinyproxy's log)"
  else
    fail "no CONNECT to the relay in tinyproxy's log"
  fi
}

ssh_hub() { # ssh args... (from the hub, through tether connect)
  in_ns "$NS_HUB" ssh -F /dev/null -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$W/known_hosts" \
    -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=20 -i "$W/client_key" \
    -o "ProxyCommand=$BIN/tether connect $DEVICE --port 22 --token-file $W/0-22.token --relay $RELAY_IP:$RELAY_PORT --ca $W/pki/ca.crt --stdio" \
    "$@"
}

test_ssh_through_tether() {
  local out user
  user=$(id -un)
  out=$(ssh_hub "$user@press-7" 'echo factory-ok; ip -4 -o addr show' 2>"$W/logs/ssh.log") || true
  if [[ ${out%%$'\n'*} == factory-ok && $out == *"inet $DEV_IP"[/\ ]* ]]; then
    pass "ssh through tether connect → relay → proxy → agent ran a command in the device namespace ($DEV_IP)"
  else
    fail "ssh through Tether failed: $out $(head -c 300 "$W/logs/ssh.log")"
  fi
  head -c "$((SCP_MIB << 20))" /dev/urandom >"$W/up.bin"
  mkdir -p "$W/device"
  local t0=$SECONDS
  scp_hub "$W/up.bin" "$user@press-7:$W/device/up.bin" && scp_hub "$user@press-7:$W/device/up.bin" "$W/down.bin" ||
    { fail "scp through Tether failed"; return; }
  if [[ $(sha256sum <"$W/up.bin") == "$(sha256sum <"$W/down.bin")" ]]; then
    pass "scp $SCP_MIB MiB to the device and back through the proxy: sha256 equal ($((SECONDS - t0)) s)"
  else
    fail "scp: sha256 differs"
  fi
}

scp_hub() {
  in_ns "$NS_HUB" scp -q -F /dev/null -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$W/known_hosts" \
    -o BatchMode=yes -o LogLevel=ERROR -i "$W/client_key" \
    -o "ProxyCommand=$BIN/tether connect $DEVICE --port 22 --token-file $W/0-22.token --relay $RELAY_IP:$RELAY_PORT --ca $W/pki/ca.crt --stdio" \
    "$@" 2>>"$W/logs/scp.log"
}

test_direct_ssh_fails() {
  local user rc=0
  user=$(id -un)
  # Positive control: sshd does answer on the device's address, from inside the device.
  if in_ns "$NS_DEV" ssh -F /dev/null -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$W/known_hosts.local" \
    -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=5 -i "$W/client_key" "$user@$DEV_IP" true 2>"$W/logs/ssh-local.log"; then
    pass "sshd answers on $DEV_IP:22 inside the device namespace"
  else
    fail "sshd does not answer on $DEV_IP:22 even locally: $(head -c 200 "$W/logs/ssh-local.log")"
  fi
  local before after
  before=$(nft_packets "$NS_DEV" floor dropped_in 2>/dev/null || echo 0)
  in_ns "$NS_HUB" ssh -F /dev/null -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$W/known_hosts.direct" \
    -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=4 -i "$W/client_key" "$user@$DEV_IP" true \
    2>"$W/logs/ssh-direct.log" || rc=$?
  after=$(nft_packets "$NS_DEV" floor dropped_in 2>/dev/null || echo 0)
  if [[ $rc != 0 ]] && ((after > before)); then
    pass "direct ssh from the hub to $DEV_IP:22 fails (exit $rc: $(tr -d '\r\n' <"$W/logs/ssh-direct.log" | head -c 80)); device dropped $((after - before)) inbound packets"
  else
    fail "direct ssh to the device: exit $rc, inbound drops $before → $after (expected failure and drops)"
  fi
  rc=0
  in_ns "$NS_DEV" timeout 5 bash -c "exec 3<>/dev/tcp/$RELAY_IP/$RELAY_PORT" 2>/dev/null || rc=$?
  [[ $rc != 0 ]] && pass "the device cannot dial the relay without the proxy" ||
    fail "the device reached $RELAY_IP:$RELAY_PORT directly"
}

# Requests an open relay would act on. Each must end without the relay dialling anything.
open_relay_probes() {
  local hub=(ip netns exec "$NS_HUB")
  "${hub[@]}" curl --noproxy '*' -sS --max-time 5 -o /dev/null -p -x "http://$RELAY_IP:$RELAY_PORT" \
    "http://$DEV_IP:22/" 2>/dev/null || true
  "${hub[@]}" curl --noproxy '*' -sS --max-time 5 -o /dev/null -x "http://$RELAY_IP:$RELAY_PORT" \
    "http://$HUB_DEV_IP:$PROXY_PORT/" 2>/dev/null || true
  "${hub[@]}" curl --noproxy '*' -sSk --max-time 5 -o /dev/null --resolve "$DEV_IP:$RELAY_PORT:$RELAY_IP" \
    "https://$DEV_IP:$RELAY_PORT/" 2>/dev/null || true
  printf 'CONNECT %s:22 HTTP/1.1\r\nHost: %s:22\r\n\r\n' "$DEV_IP" "$DEV_IP" |
    "${hub[@]}" timeout 5 openssl s_client -quiet -connect "$RELAY_IP:$RELAY_PORT" -servername "$DEV_IP" \
      >/dev/null 2>&1 || true
  local rc=0
  tether token --dir "$W/pki" --device factory/absent --port 22 --ttl 10m --out "$W/absent.token"
  "${hub[@]}" timeout 20 "$BIN/tether" connect factory/absent --port 22 --token-file "$W/absent.token" \
    --relay "$RELAY_IP:$RELAY_PORT" --ca "$W/pki/ca.crt" --stdio </dev/null >/dev/null 2>"$W/logs/absent.log" || rc=$?
  [[ $rc != 0 ]] && pass "open-relay probes refused (HTTP CONNECT, absolute URI, IP SNI, absent device: $(grep -o '[a-z]*_[a-z_]*' "$W/logs/absent.log" | head -1))" ||
    fail "a service request for an absent device succeeded"
}

check_no_egress() {
  local syn udp
  syn=$(nft_packets "$NS_RELAY" egress syn_out)
  udp=$(nft_packets "$NS_RELAY" egress udp_out)
  if [[ $syn == 0 && $udp == 0 ]]; then
    pass "no open relay: over the whole run the relay sent 0 TCP SYNs and 0 UDP datagrams off loopback ($1)"
  else
    fail "the relay dialled out: $syn TCP SYNs, $udp UDP datagrams off loopback ($1)"
    in_ns "$NS_RELAY" nft list ruleset >&2
  fi
}

# 100% loss on the device leg while an ssh session is open: found within 3 keepalive intervals.
test_dead_peer() {
  local user
  user=$(id -un)
  ssh_hub "$user@press-7" 'echo session-up; exec sleep 300' >"$W/logs/long-ssh.out" 2>"$W/logs/long-ssh.log" &
  local ssh_pid=$!
  PIDS+=("$ssh_pid")
  PID_NAMES+=(long-ssh)
  wait_for 20 grep -q session-up "$W/logs/long-ssh.out" || { fail "long ssh session did not start"; return; }
  local mark_relay mark_agent
  mark_relay=$(wc -l <"$W/logs/relay.log")
  mark_agent=$(wc -l <"$W/logs/agent.log")
  in_ns "$NS_DEV" nft -f - <<NFT
table inet blackhole {
  chain input { type filter hook input priority -10; policy accept; iifname "tf$$d" drop; }
  chain output { type filter hook output priority -10; policy accept; oifname "tf$$d" drop; }
}
NFT
  local t0 gone=""
  t0=$(date +%s.%N)
  local deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    if [[ $(rmetric tether_relay_connected_devices) == 0 ]]; then gone=$(date +%s.%N); break; fi
    sleep 0.05
  done
  local took
  [[ -n $gone ]] && took=$(awk -v a="$t0" -v b="$gone" 'BEGIN { printf "%.2f", b - a }')
  if [[ -n $gone ]] && awk -v t="$took" -v k="$KEEPALIVE" 'BEGIN { exit !(t <= 3 * k) }'; then
    pass "100% loss on the device leg: the relay dropped the device after $took s (≤ 3 × ${KEEPALIVE}s keepalive)"
  else
    fail "the relay did not drop the dead device within $((3 * KEEPALIVE)) s (took ${took:-> 30} s)"
  fi
  local relay_new
  wait_for 10 bash -c "tail -n +$((mark_relay + 1)) '$W/logs/relay.log' | grep -q 'stream ended with an error\|stream closed'" || true
  relay_new=$(tail -n +"$((mark_relay + 1))" "$W/logs/relay.log")
  if grep -q 'device disconnected.*keepalive' <<<"$relay_new" && grep -q 'stream ended with an error\|stream closed' <<<"$relay_new"; then
    pass "relay log: $(grep -o 'reason=keepalive[^"]*' <<<"$relay_new" | head -1 | cut -c1-80); the ssh stream: $(grep -o 'stream ended with an error.*\|stream closed.*' <<<"$relay_new" | head -1 | cut -c1-120)"
  else
    fail "relay log lacks the keepalive verdict or the stream's end: $(tail -c 600 <<<"$relay_new")"
  fi
  if wait_for 10 bash -c "tail -n +$((mark_agent + 1)) '$W/logs/agent.log' | grep -q 'keepalive'"; then
    pass "agent log: $(tail -n +"$((mark_agent + 1))" "$W/logs/agent.log" | grep -o '[^ ]*keepalive.*' | head -1 | cut -c1-120)"
  else
    fail "the agent did not log a keepalive verdict"
  fi
  # Our own child stays a zombie until reaped, and kill -0 succeeds on zombies: ask ps.
  if wait_for 15 bash -c "[[ \$(ps -o stat= -p $ssh_pid) != [^Z]* ]]"; then
    pass "the ssh session through the dead device ended ($(tr -d '\r' <"$W/logs/long-ssh.log" | head -c 100))"
  else
    pkill -TERM -P "$ssh_pid" # by parent PID: the ssh this function started
    fail "the ssh session through the dead device is still open 15 s after the loss began: $(ps -eo pid,ppid,stat,args | grep -E 'ssh|tether connect' | grep -v grep | cut -c1-60 | tr '\n' ';')"
  fi
  local m
  m=$(rmetric 'tether_relay_stream_setups_total{result="ok"}')
  in_ns "$NS_DEV" nft delete table inet blackhole
  if wait_for 20 devices_are 1; then
    pass "loss lifted: the device reconnected through the proxy (stream setups ok so far: $m)"
  else
    fail "the device did not come back after the loss was lifted"
  fi
}

# A large transfer over the impaired device link: every byte arrives, in order.
test_impaired_transfer() {
  local user mib=${IMPAIR_MIB:-100}
  user=$(id -un)
  head -c "$((mib << 20))" /dev/urandom >"$W/big.bin"
  local t0=$SECONDS
  if scp_hub "$W/big.bin" "$user@press-7:$W/device/big.bin"; then
    local took=$((SECONDS - t0))
    if [[ $(sha256sum <"$W/big.bin") == "$(sha256sum <"$W/device/big.bin")" ]]; then
      pass "$mib MiB over 100 ms ± 20 ms, 1% loss, 0.5% reorder: sha256 equal in $took s ($(awk -v m="$mib" -v t="$took" 'BEGIN { printf "%.2f", m / (t > 0 ? t : 1) }') MiB/s)"
    else
      fail "impaired transfer: sha256 differs"
    fi
  else
    fail "scp over the impaired link failed after $((SECONDS - t0)) s"
  fi
  log "wire counters: $(stop_bg wire; tail -n 3 "$W/logs/wire.log" | tr '\n' ' ')"
}

main() {
  local started=$SECONDS
  find_binaries tether tether-relay tether-agent
  command -v nft >/dev/null && command -v tinyproxy >/dev/null || die "needs nft and tinyproxy"
  W=$(mktemp -d /tmp/tether-factory.XXXXXX)
  mkdir -p "$W/logs"
  make_pki "$DEVICE"
  make_namespaces
  dev_firewall
  relay_counters
  start_relay_ns
  start_proxy_hub
  start_sshd_dev
  start_agent_dev
  test_ssh_through_tether
  test_direct_ssh_fails
  open_relay_probes
  check_no_egress "ssh, scp, probes"
  if [[ ${FACTORY_IMPAIR:-0} == 1 ]]; then
    test_impaired_transfer
    check_no_egress "after the impaired transfer"
  else
    test_dead_peer
    check_no_egress "after the dead-peer run"
  fi
  log "finished in $((SECONDS - started)) s"
}

main "$@"
