#!/usr/bin/env bash
# Tether's benchmark harness (issues 5 and 14): builds tether-bench and the Tether binaries,
# installs the peers (rathole 0.5.0 from crates.io; frp and chisel from the Go module proxy),
# raises the file-descriptor limit and runs every scenario, on loopback and (as root) across the
# WAN profile's impaired link (scripts/netem/wire.py between two network namespaces).
#
#   scripts/bench.sh            full run (~20 min on 2 cores); writes docs/benchmarks.{json,md}
#   scripts/bench.sh --smoke    ~1 min; CI: asserts every scenario ran and produced sane figures
#
# Extra arguments go to tether-bench (e.g. `--only 1,3`, `--idle-devices 2000`).
# TETHER_BENCH_CACHE (default ~/.cache/tether-bench) holds the peers' installs, outside the repo,
# keyed by version. The smoke run uses the peers only when they are already installed.
set -euo pipefail

cd "$(dirname "$0")/.."
cache="${TETHER_BENCH_CACHE:-$HOME/.cache/tether-bench}"
RATHOLE_VERSION=0.5.0
FRP_VERSION=v0.65.0
CHISEL_VERSION=v1.10.1
smoke=false
for arg in "$@"; do
  [[ "$arg" == "--smoke" ]] && smoke=true
done
export PATH=$PATH:/usr/local/go/bin

cargo build --release --locked -p tether-bench -p tether-relay -p tether-agent -p tether-cli

peer_args=()
rathole="$cache/rathole/bin/rathole"
if [[ "$smoke" == false || -x "$rathole" ]]; then
  if [[ ! -x "$rathole" ]]; then
    mkdir -p "$cache"
    echo "installing rathole $RATHOLE_VERSION into $cache/rathole (a few minutes) ..." >&2
    # rathole 0.5.0's lock file pins time 0.3.29, which newer compilers reject (E0282); fall back
    # to fresh dependency resolution within rathole's own semver ranges when --locked fails.
    if ! cargo install rathole --version "$RATHOLE_VERSION" --locked --root "$cache/rathole" >"$cache/install.log" 2>&1; then
      echo "rathole: --locked build failed (see $cache/install.log); retrying without --locked" >&2
      cargo install rathole --version "$RATHOLE_VERSION" --root "$cache/rathole" >>"$cache/install.log" 2>&1 \
        || echo "rathole: build failed; the run records rathole as unavailable" >&2
    fi
  fi
  [[ -x "$rathole" ]] && peer_args+=(--rathole "$rathole")
fi

# Builds Go peer binaries from the module proxy into $cache/<name>-<version>/bin: a throw-away
# module that requires the peer, then `go build` of its commands (`go install pkg@version` asks
# the proxy for the module's version list, which it refuses for these modules; an exact version
# is served).
go_peer() { # name module version package...
  local name=$1 module=$2 version=$3
  shift 3
  local out="$cache/$name-$version"
  local pkg missing=false
  for pkg in "$@"; do [[ -x "$out/bin/${pkg##*/}" ]] || missing=true; done
  [[ $missing == false ]] && return 0
  [[ $smoke == true ]] && return 1
  command -v go >/dev/null || { echo "$name: no Go toolchain; not measured" >&2; return 1; }
  echo "building $name $version into $out (a few minutes) ..." >&2
  rm -rf "$out/src" && mkdir -p "$out/src" "$out/bin"
  (
    cd "$out/src" && go mod init tether-bench-peer >/dev/null 2>&1 &&
      go get "${@/%/@$version}" && go build -trimpath -o "$out/bin/" "$@"
  ) >"$out/build.log" 2>&1 || { echo "$name: build failed (see $out/build.log); not measured" >&2; return 1; }
}
if go_peer frp github.com/fatedier/frp "$FRP_VERSION" github.com/fatedier/frp/cmd/frps github.com/fatedier/frp/cmd/frpc; then
  peer_args+=(--frps "$cache/frp-$FRP_VERSION/bin/frps" --frpc "$cache/frp-$FRP_VERSION/bin/frpc")
fi
if go_peer chisel github.com/jpillora/chisel "$CHISEL_VERSION" github.com/jpillora/chisel; then
  peer_args+=(--chisel "$cache/chisel-$CHISEL_VERSION/bin/chisel")
fi

# The WAN profile needs network namespaces (root) and a TUN device.
wan_args=()
if [[ $(id -u) == 0 && -c /dev/net/tun ]] && command -v ip >/dev/null; then
  wan_args=(--wan-wire "$PWD/scripts/netem/wire.py")
else
  echo "warning: WAN profile skipped (needs root, ip and /dev/net/tun)" >&2
fi

# Scenario 5 holds 10,000 device connections in the relay and as many in the harness.
ulimit -n 400000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < 10500 )) && [[ "$smoke" == false ]]; then
  echo "warning: open-file limit is $(ulimit -n); scenario 5 needs ~10,100 per process" >&2
fi

# Run copies: other work in this checkout may rebuild target/release while the run is going (the
# harness re-executes itself for the bare TLS baseline and starts the Tether binaries by path).
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
cp target/release/tether-bench target/release/tether-relay target/release/tether-agent target/release/tether "$bin/"
"$bin/tether-bench" --relay-bin "$bin/tether-relay" --agent-bin "$bin/tether-agent" --cli-bin "$bin/tether" \
  "${peer_args[@]}" "${wan_args[@]}" "$@"
