# Shared set-up for scripts/demo and scripts/test. Sourced, not run.
# Idempotent: a second run installs nothing and returns in a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
DOCKERD_LOG=/var/log/dockmesh-dockerd.log
export DEBIAN_FRONTEND=noninteractive

log() { if [ -t 2 ]; then printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi; }

_apt_updated=0
apt_install() {
    # apt_install PKG... : installs the packages that are missing.
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$_apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        _apt_updated=1
    fi
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

find_python() {
    local c
    for c in python3.13 python3.12 python3.11 python3; do
        if command -v "$c" >/dev/null 2>&1 &&
            "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}

setup_python() {
    local py stamp want
    py=$(find_python) || { apt_install python3; py=$(find_python); }
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        if ! "$py" -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            apt_install python3-venv
            "$py" -m venv "$VENV"
        fi
    fi
    stamp="$VENV/.dockmesh-installed"
    want=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "installing dockmesh and its dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
        echo "$want" > "$stamp"
    fi
    # Byte-compiled once: where PYTHONDONTWRITEBYTECODE is set, every command would compile
    # the project's sources again (a sixth of a command's start).
    "$VENV/bin/python" -m compileall -q "$ROOT/src" >/dev/null
    export PATH="$VENV/bin:$PATH"
}

engine_answers() {
    # Asks the engine's socket directly: a machine may carry a docker CLI without an engine.
    local sock=${DOCKER_HOST:-unix:///var/run/docker.sock}
    sock=${sock#unix://}
    [ -S "$sock" ] && "$VENV/bin/python" - "$sock" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
sys.exit(0 if b" 200 " in s.recv(256) else 1)
PY
}

setup_engine() {
    if engine_answers; then return 0; fi
    # An engine that is starting or shutting down: let it finish before deciding.
    local pid i
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        log "waiting for dockerd (pid $pid) to start or stop"
        for i in $(seq 1 120); do
            engine_answers && return 0
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
        apt_install docker.io
    fi
    # A kernel with AppArmor on needs the parser, or the engine cannot start containers.
    if [ -d /sys/module/apparmor ]; then apt_install apparmor; fi
    apt_install iptables
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: the engine outlives this script (the demo stack stays up).
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 < /dev/null &
    for i in $(seq 1 60); do
        engine_answers && return 0
        sleep 0.5
    done
    echo "dockerd did not answer within 30 s; see $DOCKERD_LOG" >&2
    tail -20 "$DOCKERD_LOG" >&2
    return 1
}

setup_tools() {
    # What the image builder and the tests call on the host.
    apt_install busybox-static debootstrap iproute2 nftables ca-certificates
    # DNS: dig for the tests, dnsperf and dnsmasq (a C peer) for benchmarks/dns.py.
    apt_install dnsutils dnsperf dnsmasq-base
    # The proxy: HAProxy and nginx (peers and backends for benchmarks/proxy.py), wrk (the load).
    apt_install haproxy nginx wrk
    # h2load (nghttp2-client): the load of the proxy benchmark's HTTP/2 row.
    apt_install nghttp2-client
    # Observability: iperf3 is the peer of `bench bandwidth` (and its --tool iperf3), run
    # from the host inside the namespaces; curl drives traffic in the tests.
    apt_install iperf3 curl
    # conntrack-tools: the peer of `flows` in benchmarks/flows.py (`conntrack -L`).
    apt_install conntrack
    # Graphviz: the test that `dot` reads `topology --dot` (names of any characters).
    apt_install graphviz
    # Compose alongside: the agent registers what Debian's docker-compose starts.
    apt_install docker-compose curl
    # etcd (3.4): the store of the catalog shared between hosts (`agent --store etcd://…`),
    # run by `dockmesh lab`; the tests start their own member on a free loopback port, never
    # the packaged service.
    # etcdctl (etcd-client): what the lab's failure tests read and change the store with.
    apt_install etcd-server etcd-client
    # Caddy 2.6: a real Go client of the agent's SRV records (tests/integration/test_hostdns.py).
    apt_install caddy
}

setup_all() {
    setup_python
    setup_tools
    setup_engine
    log "building images"
    dockmesh images build
}
