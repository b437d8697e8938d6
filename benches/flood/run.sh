#!/usr/bin/env bash
# The flood measurement: what a hostile pod can make one sidecar hold.
#
#   attacker addresses --(idle TCP, slow HTTP heads)--> inbound, probe and admin ports
#   client -> outbound sidecar -> mTLS -> inbound sidecar -> nginx (200 "ok")
#
# With the sidecar's default limits, from $SOURCES attacker addresses
# (127.0.1.1, 127.0.1.2, ...; one pod is one address), it opens:
#   - $IDLE TCP connections to the inbound (mTLS) port that never send a
#     byte (no ClientHello), spread over the attacker addresses;
#   - $SLOW connections to each of the inbound, probe and admin ports that
#     send an HTTP request head one byte every 2 s and never finish it;
# and, while they are held, an allowed client sends $REQUESTS requests over
# a connection it opened before the flood, then $REQUESTS more over new
# connections through the outbound sidecar (each needing a new mTLS hop
# only if the pooled one went away). It reports the inbound sidecar's RSS
# before, during and its peak (VmHWM), how many flood connections the
# sidecar held and how many it closed, the client's errors, and the
# refusals by limit from /metrics.
#
# Usage: benches/flood/run.sh [--sources N] [--idle N] [--slow N] [--requests N]
#        (defaults: 1 source, 10000 idle, 1000 slow per port, 2000 requests;
#        --sources 10 is ten attacker pods, enough to reach max_connections)
# Needs: nginx, curl, python3.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
SOURCES=1 IDLE=10000 SLOW=1000 REQUESTS=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --sources) SOURCES=$2; shift ;;
    --idle) IDLE=$2; shift ;;
    --slow) SLOW=$2; shift ;;
    --requests) REQUESTS=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
for tool in nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

(cd "$root" && cargo build --release --quiet --example loadgen)
P=${PORTCULLIS_BIN:-$("$root/scripts/build-release" --quiet)}
LG=$root/target/release/examples/loadgen

work=$(mktemp -d /tmp/portcullis-flood.XXXXXX)
pids=()
cleanup() {
  rm -f "$work"/*.ready
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

BACKEND=22080 IN=22011 OUT=22001 PROBE=22021 ADMIN_IN=22100 ADMIN_OUT=22101
TD=flood.example.org
"$P" cert ca --trust-domain $TD --out ca.pem --key-out ca-key.pem >/dev/null
"$P" cert issue --id spiffe://$TD/in --out in.pem --key-out in-key.pem >/dev/null
"$P" cert issue --id spiffe://$TD/out --out out.pem --key-out out-key.pem >/dev/null

cat > backend.conf <<EOF
daemon off; master_process off; worker_processes 1;
pid $work/backend.pid; error_log $work/backend.err crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 127.0.0.1:$BACKEND; default_type text/plain; location / { return 200 "ok\n"; } }
}
EOF
nginx -c "$work/backend.conf" & pids+=($!)

cat > policy.yaml <<EOF
default: deny
services:
  web: { rules: [ { name: out, action: allow, from: [spiffe://$TD/out] } ] }
EOF
cat > in.yaml <<EOF
identity: { cert: in.pem, key: in-key.pem, trust_bundle: ca.pem }
policy: policy.yaml
audit: { sink: off }
log: { level: error }
runtime: { worker_threads: 2 }
inbound:
  - { name: web, listen: 127.0.0.1:$IN, forward: 127.0.0.1:$BACKEND, protocol: http }
probes: { listen: 127.0.0.1:$PROBE, forward: 127.0.0.1:$BACKEND, paths: [/healthz] }
admin: { listen: 127.0.0.1:$ADMIN_IN }
EOF
cat > out.yaml <<EOF
identity: { cert: out.pem, key: out-key.pem, trust_bundle: ca.pem }
audit: { sink: off }
log: { level: error }
runtime: { worker_threads: 1 }
outbound:
  - { name: web, listen: 127.0.0.1:$OUT, endpoints: [127.0.0.1:$IN], identity: spiffe://$TD/in, protocol: http }
admin: { listen: 127.0.0.1:$ADMIN_OUT }
EOF
"$P" run --config in.yaml > in.log 2>&1 & IN_PID=$!; pids+=($IN_PID)
"$P" run --config out.yaml > out.log 2>&1 & pids+=($!)

wait_ok() {
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.05
  done
  echo "run.sh: $1 does not answer 200" >&2; exit 1
}
wait_ok http://127.0.0.1:$ADMIN_IN/ready
wait_ok http://127.0.0.1:$ADMIN_OUT/ready
wait_ok http://127.0.0.1:$OUT/
kib() { awk "/^$1/ {print \$2}" "/proc/$IN_PID/status"; }
before=$(kib VmRSS)
log "inbound sidecar RSS before the flood: $before KiB"

addrs=$(python3 -c "print(','.join('127.0.1.%d' % (i + 1) for i in range($SOURCES)))")
flood() { # name addr conns [--slow]
  local name=$1 addr=$2 n=$3; shift 3
  "$LG" flood --addr "$addr" --conns "$n" --from "$addrs" --ready "$work/$name.ready" "$@" > "$name.out" 2> "$name.err" &
  pids+=($!)
}
flood idle 127.0.0.1:$IN "$IDLE"
flood slow-in 127.0.0.1:$IN "$SLOW" --slow
flood slow-probe 127.0.0.1:$PROBE "$SLOW" --slow
flood slow-admin 127.0.0.1:$ADMIN_IN "$SLOW" --slow
for f in idle slow-in slow-probe slow-admin; do
  for _ in $(seq 1200); do [ -f "$f.ready" ] && break; sleep 0.05; done
  [ -f "$f.ready" ] || { echo "run.sh: the $f flood never finished opening" >&2; cat "$f.err" >&2; exit 1; }
done
during=$(kib VmRSS)
log "flood open: inbound sidecar RSS $during KiB"

# The allowed client, while the flood is held.
"$LG" count --addr 127.0.0.1:$OUT --requests "$REQUESTS" --conns 4 > client.json
# Five new mTLS connections (full handshakes) from the allowed identity,
# straight to the inbound port, each proven by one request.
newtls=failed
"$LG" idle --addr 127.0.0.1:$IN --conns 5 --probe http --cert out.pem --key out-key.pem \
  --bundle ca.pem --server-id spiffe://$TD/in --ready "$work/tls.ready" > tls.out 2> tls.err &
tls_pid=$!
for _ in $(seq 200); do [ -f tls.ready ] && break; kill -0 $tls_pid 2>/dev/null || break; sleep 0.05; done
[ -f tls.ready ] && newtls="$(cat tls.ready) of 5 held"
rm -f tls.ready; wait $tls_pid 2>/dev/null || newtls="failed: $(cat tls.err)"
ok_new=0
for _ in $(seq 20); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:$OUT/)" = 200 ] && ok_new=$((ok_new + 1))
done
probe=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:$PROBE/healthz || true)
metrics=$(curl -s --max-time 5 http://127.0.0.1:$ADMIN_IN/metrics || echo "admin unreachable")
after=$(kib VmRSS)
peak=$(kib VmHWM)
rm -f "$work"/*.ready
sleep 1

echo "flood from $SOURCES address(es): $IDLE idle TCP at the inbound port, $SLOW slow heads at each of inbound, probe, admin"
for f in idle slow-in slow-probe slow-admin; do
  printf '  %-11s %s\n' "$f" "$(cat "$f.out" 2>/dev/null || echo '(no report)')"
done
echo "allowed client through its sidecar (the sidecars' pooled mTLS hop predates the flood):"
echo "  $REQUESTS requests over 4 new app connections: $(cat client.json)"
echo "  20 requests each on a new app connection: $ok_new answered 200"
echo "  5 new mTLS connections straight to the inbound port: $newtls"
echo "  kubelet's probe from 127.0.0.1: $probe"
echo "inbound sidecar RSS: before $before KiB, during $during KiB, after the client $after KiB, peak (VmHWM) $peak KiB"
echo "refusals (from /metrics):"
printf '%s\n' "$metrics" | grep -E '^portcullis_(listener_rejected_connections_total|plaintext_refused_total|tls_handshakes_total\{.*result="timeout")' | grep -v ' 0$' | sed 's/^/  /' || true
