#!/usr/bin/env bash
#! Bounded soak (not in CI): a relay and two agents under mixed load for --minutes, then idle;
#! the relay's and agents' RSS, open fds and threads must return to their post-warm-up baseline,
#! the relay's stream and handshake gauges to 0, and no process may panic.
#!
#! Load, all at once in loops until the time is up (loopback, real binaries, real sshd):
#!   * 4 workers running ssh commands through `tether connect --stdio` (one per few 100 ms);
#!   * 1 worker doing scp of 8 MiB to a device and back, checking sha256;
#!   * 1 worker opening streams with bad tokens (wrong port, foreign PKI, port not allowed);
#!   * 1 worker opening and dropping raw TCP connections and half ClientHellos to the data port;
#!   * every 60 s agent 2 is killed (SIGKILL) and restarted: its session must come back.
#! Pass criteria (after load stops and 15 s idle): RSS ≤ baseline + max(16 MiB, 25%), fds ≤
#! baseline + 4, threads ≤ baseline + 2 (tokio's blocking pool may keep a few), active streams 0,
#! pending handshakes 0, zero "panicked" lines in any log, zero failed ssh/scp.
#! "Tasks": tokio has no stable task count; threads plus the relay's gauges stand in for it.
#!
#! Usage: TETHER_BIN_DIR=target/release scripts/soak.sh --minutes 20   (root; openssh, curl, python3)
#! Last line: `soak: N passed, M failed`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
E2E_NAME=soak
# shellcheck source=scripts/e2e/lib.sh
source "$ROOT/scripts/e2e/lib.sh"
export NO_COLOR=1
MINUTES=20
while (($#)); do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N]" >&2; exit 64 ;;
  esac
done

cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  [[ -n ${W:-} ]] && touch "$W/stop"
  local p
  for p in "${WORKERS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  cleanup_bg
  [[ $rc != 0 || $FAILED != 0 ]] && dump_logs
  if [[ -n $W && -d $W ]]; then
    if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then log "work dir kept: $W"; else rm -rf "$W"; fi
  fi
  [[ $rc != 0 && $FAILED == 0 ]] && FAILED=1
  echo "soak: $PASSED passed, $FAILED failed"
  [[ $FAILED == 0 ]] || exit 1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
WORKERS=()

pid_of() { local i p=""; for i in "${!PID_NAMES[@]}"; do [[ ${PID_NAMES[$i]} == "$1" ]] && p=${PIDS[$i]}; done; echo "$p"; }
# sample PID -> "rss_kib fds threads"
sample() {
  local pid=$1
  echo "$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status") $(ls "/proc/$pid/fd" | wc -l) $(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")"
}

ssh_worker() {
  local n=$1 ok=0 bad=0
  while [[ ! -e $W/stop ]]; do
    if out=$(ssh "${SSH_OPTS[@]}" "$SSH_USER@d" "echo soak-$n" 2>>"$W/logs/ssh-$n.err") && [[ $out == "soak-$n" ]]; then
      ok=$((ok + 1))
    else
      bad=$((bad + 1))
    fi
    sleep 0.$((RANDOM % 5))
  done
  echo "$ok $bad" >"$W/ssh-$n.result"
}

scp_worker() {
  local ok=0 bad=0
  head -c $((8 << 20)) /dev/urandom >"$W/soak.bin"
  mkdir -p "$W/remote"
  while [[ ! -e $W/stop ]]; do
    if scp -q "${SSH_OPTS[@]}" "$W/soak.bin" "$SSH_USER@d:$W/remote/soak.bin" 2>>"$W/logs/scp.err" &&
      scp -q "${SSH_OPTS[@]}" "$SSH_USER@d:$W/remote/soak.bin" "$W/back.bin" 2>>"$W/logs/scp.err" &&
      cmp -s "$W/soak.bin" "$W/back.bin"; then
      ok=$((ok + 1))
    else
      bad=$((bad + 1))
    fi
  done
  echo "$ok $bad" >"$W/scp.result"
}

refusal_worker() {
  local n=0
  while [[ ! -e $W/stop ]]; do
    for t in "$W/foreign.token:22" "$W/0-22.token:2222" "$W/0-2222.token:2222"; do
      timeout 15 "$BIN/tether" connect "$DEV0" --port "${t##*:}" --token-file "${t%:*}" \
        --relay "127.0.0.1:$RELAY_PORT" --ca "$W/pki/ca.crt" --stdio </dev/null >/dev/null 2>&1 || n=$((n + 1))
    done
  done
  echo "$n" >"$W/refusals.result"
}

garbage_worker() {
  local hello=$ROOT/proto/fuzz/corpus/client_hello/real_openssl_tether1 n=0
  while [[ ! -e $W/stop ]]; do
    python3 - "$RELAY_PORT" "$hello" <<'PY' || true
import socket, sys, time
port, hello = int(sys.argv[1]), open(sys.argv[2], "rb").read()
socks = []
for i in range(50):
    s = socket.create_connection(("127.0.0.1", port))
    if i % 2:
        s.send(hello[: len(hello) // 2])
    socks.append(s)
time.sleep(0.5)
for s in socks:
    s.close()
PY
    n=$((n + 50))
    sleep 1
  done
  echo "$n" >"$W/garbage.result"
}

main() {
  find_binaries tether tether-relay tether-agent
  W=$(mktemp -d /tmp/tether-soak.XXXXXX)
  mkdir -p "$W/logs"
  read -r RELAY_PORT ADMIN_PORT SSHD_PORT <<<"$(free_ports 3)"
  DEV0=soak/dev-0
  make_pki "$DEV0" soak/dev-1
  start_relay relay "$RELAY_PORT" "$ADMIN_PORT"
  start_sshd
  start_agent agent0 0 "$RELAY_PORT" ""
  start_agent agent1 1 "$RELAY_PORT" ""
  wait_for 30 bash -c "[[ \$(curl -s http://127.0.0.1:$ADMIN_PORT/metrics | awk '\$1 == \"tether_relay_connected_devices\" { print \$2 }') == 2 ]]" ||
    die "agents did not connect"
  ssh_opts "$DEV0" "$W/0-22.token" "$RELAY_PORT"
  local admin="http://127.0.0.1:$ADMIN_PORT"
  # Warm-up: a few of each kind, so lazily allocated pools are counted in the baseline.
  local i
  for i in 1 2 3 4 5; do ssh "${SSH_OPTS[@]}" "$SSH_USER@d" true 2>/dev/null || true; done
  sleep 3
  local relay_pid agent0_pid base_relay base_agent0
  relay_pid=$(pid_of relay) agent0_pid=$(pid_of agent0)
  base_relay=$(sample "$relay_pid") base_agent0=$(sample "$agent0_pid")
  log "baseline relay (rss KiB, fds, threads): $base_relay; agent0: $base_agent0"

  for i in 1 2 3 4; do ssh_worker "$i" & WORKERS+=("$!"); done
  scp_worker & WORKERS+=("$!")
  refusal_worker & WORKERS+=("$!")
  garbage_worker & WORKERS+=("$!")
  local end=$((SECONDS + MINUTES * 60)) next_restart=$((SECONDS + 60)) restarts=0 peak_relay=0 s
  while ((SECONDS < end)); do
    sleep 5
    s=$(sample "$relay_pid")
    ((${s%% *} > peak_relay)) && peak_relay=${s%% *}
    if ((SECONDS >= next_restart)); then
      kill -KILL "$(pid_of agent1)"
      start_agent agent1 1 "$RELAY_PORT" ""
      restarts=$((restarts + 1))
      next_restart=$((SECONDS + 60))
    fi
  done
  touch "$W/stop"
  log "load stopped; waiting for workers"
  for i in "${WORKERS[@]}"; do wait "$i" || true; done
  WORKERS=()
  sleep 15
  local end_relay end_agent0
  end_relay=$(sample "$relay_pid") end_agent0=$(sample "$agent0_pid")
  log "after: relay $end_relay (peak RSS $peak_relay KiB); agent0 $end_agent0"

  local ok=0 bad=0 r
  for i in 1 2 3 4; do read -r a b <"$W/ssh-$i.result"; ok=$((ok + a)); bad=$((bad + b)); done
  read -r a b <"$W/scp.result"
  local streams setups
  setups=$(metric "$admin" 'tether_relay_stream_setups_total{result="ok"}')
  streams=$(metric "$admin" tether_relay_active_streams)
  log "ssh ok $ok failed $bad; scp round trips ok $a failed $b; refusals $(cat "$W/refusals.result"); garbage connections $(cat "$W/garbage.result"); agent restarts $restarts; stream setups ok $setups"
  ((bad == 0 && b == 0 && ok > 0 && a > 0)) && pass "mixed load for $MINUTES min: $ok ssh, $a scp round trips (8 MiB), none failed" ||
    fail "failures under load: ssh $bad, scp $b"
  check_return relay "$base_relay" "$end_relay"
  check_return agent0 "$base_agent0" "$end_agent0"
  [[ $streams == 0 && $(metric "$admin" tether_relay_pending_handshakes) == 0 ]] &&
    pass "relay gauges back to 0 (active streams, pending handshakes)" || fail "relay gauges not back to 0: streams $streams"
  [[ $(metric "$admin" tether_relay_connected_devices) == 2 ]] && pass "both devices connected after $restarts agent restarts" ||
    fail "devices connected: $(metric "$admin" tether_relay_connected_devices)"
  if grep -l "panicked" "$W"/logs/*.log >/dev/null 2>&1; then
    fail "panics: $(grep -h panicked "$W"/logs/*.log | head -3)"
  else
    pass "zero panics in $(ls "$W"/logs/*.log | wc -l) logs"
  fi
}

check_return() { # NAME "rss fds threads" "rss fds threads"
  local name=$1 b e
  read -r -a b <<<"$2"
  read -r -a e <<<"$3"
  local slack=$((b[0] / 4 > 16384 ? b[0] / 4 : 16384))
  if ((e[0] <= b[0] + slack && e[1] <= b[1] + 4 && e[2] <= b[2] + 2)); then
    pass "$name back to baseline: RSS ${b[0]} → ${e[0]} KiB, fds ${b[1]} → ${e[1]}, threads ${b[2]} → ${e[2]}"
  else
    fail "$name did not return to baseline: RSS ${b[0]} → ${e[0]} KiB (slack $slack), fds ${b[1]} → ${e[1]}, threads ${b[2]} → ${e[2]}"
  fi
}

main "$@"
