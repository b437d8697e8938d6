#!/usr/bin/env bash
# The mesh load benchmark: one topology, every sidecar.
#
#   load generator -> outbound sidecar -> mTLS 1.3 -> inbound sidecar -> nginx (200 "ok")
#
# Targets: direct (no sidecars), portcullis, haproxy (its usual config: a
# pooled HTTP/1.1 hop between the sidecars), haproxy-h2 (the hop in HTTP/2,
# as portcullis does it), nginx (pairs of each) and stunnel (L4 pair). Every pair: TLS 1.3 only, P-256 certificates,
# client certificates required and verified, one worker thread per sidecar
# (stunnel has no such setting: it runs a thread per connection), logging
# off. Per target it measures:
#
#   max rps          wrk -t1 -c32, closed loop, keep-alive
#   cpu/1k           CPU-seconds of both sidecars per 1,000 requests during that run
#   p50/p99/p99.9    open loop at $RATE rps over 32 connections, latency from when
#                    each request was due (loadgen rate)
#   rss              each sidecar's RSS idle (started, one request through), and warm
#                    (after a second of load over 32 connections)
#   syscalls/req     strace -c -f on each sidecar over exactly $COUNT requests,
#                    32 connections (loadgen count); the figure that does not
#                    swing with the VM's speed
#   bulk             one L4 connection's throughput through the pair (loadgen bulk -> sink)
#   idle mTLS conns  RSS growth of the inbound sidecar per mTLS connection, with
#                    $IDLE of them opened straight to it (each proven by one request)
#                    and held idle
#   idle L4 conns    RSS growth of each sidecar per connection, with $IDLE_L4 L4
#                    connections held open through the pair
#   handshakes       full mTLS handshakes/s against the inbound sidecar, and per
#                    CPU-second of it (= per core)
#
# Usage: benches/mesh/run.sh [--quick] [--targets "direct portcullis haproxy haproxy-h2 nginx stunnel"]
#                            [--only "rss wrk rate syscalls bulk idle handshakes instructions"]
#                            [--results FILE]
#        (--only runs just the listed measurements: `--targets portcullis --only instructions`
#        is the instruction count a hot-path change is judged by, in about a minute)
#        benches/mesh/run.sh --serve TARGET   # start one pair and the app, print the ports, and
#                                             # keep them up until Ctrl-C (for perf, strace, wrk by hand)
# Needs: nginx (with the stream module), haproxy, stunnel4, wrk, strace, python3.
# Debian: apt-get install nginx libnginx-mod-stream haproxy stunnel4 wrk strace
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
targets="direct portcullis haproxy haproxy-h2 nginx stunnel"
quick=0
results=""
serve=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --targets) targets=$2; shift ;;
    --results) results=$2; shift ;;
    --only) only=$2; shift ;;
    --serve) serve=$2; shift ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$quick" = 1 ]; then
  DUR=3; RATE=500; RATE_DUR=3; COUNT=2000; ICOUNT=2000; BULK=$((256 << 20)); IDLE=500; IDLE_L4=300; HS_DUR=2
else
  DUR=10; RATE=2000; RATE_DUR=15; COUNT=20000; ICOUNT=10000; BULK=$((4 << 30)); IDLE=10000; IDLE_L4=5000; HS_DUR=5
fi

for tool in nginx haproxy stunnel4 wrk strace python3; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed (see the header for the packages)" >&2; exit 1; }
done
stream_module=$(ls /usr/lib/nginx/modules/ngx_stream_module.so 2>/dev/null || true)
[ -n "$stream_module" ] || { echo "run.sh: nginx's stream module is missing (libnginx-mod-stream)" >&2; exit 1; }

# Many idle connections need many descriptors; raise the soft limit to the
# hard one. A proxy that holds two descriptors per connection (one each
# side) can then hold at most about half of it: such targets get that many
# idle connections (the table says how many each held).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
[ "$FDS" = unlimited ] && FDS=1048576
HALF=$(( (FDS - 400) / 2 ))
min() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }
IDLE_L4=$(min $IDLE_L4 $((HALF - 100)))

# The sidecar as it ships (scripts/build-release: static on glibc), unless
# PORTCULLIS_BIN names another build to measure.
(cd "$root" && cargo build --release --quiet --example loadgen)
P=${PORTCULLIS_BIN:-$("$root/scripts/build-release" --quiet)}
LG=$root/target/release/examples/loadgen
TICK=$(getconf CLK_TCK)

work=$(mktemp -d /tmp/portcullis-mesh.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
: > results.tsv

# Ports: the app side, the outbound sidecar (plaintext in) and the inbound
# sidecar (mTLS in); web is HTTP, sink and echo are L4.
BACKEND=21080 SINK=21090 ECHO=21091
OUT_WEB=21001 OUT_SINK=21002 OUT_ECHO=21003
IN_WEB=21011 IN_SINK=21012 IN_ECHO=21013
ADMIN_OUT=21100 ADMIN_IN=21101
TD=bench.example.org

"$P" cert ca --trust-domain $TD --out ca.pem --key-out ca-key.pem >/dev/null
"$P" cert issue --id spiffe://$TD/in --dns in.bench --out in.pem --key-out in-key.pem >/dev/null
"$P" cert issue --id spiffe://$TD/out --dns out.bench --out out.pem --key-out out-key.pem >/dev/null
cat in.pem in-key.pem > in-combined.pem
cat out.pem out-key.pem > out-combined.pem

# A measurement that fails is reported and the run goes on.
failed() { log "$1: $2 failed"; record "$1" "${2}_error" "failed (see the log above)"; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> results.tsv; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# Each target's binary runs as when loaded from disk: its pages not mapped
# by a running process are dropped from the page cache first, so its
# resident code is what exec and page faults read in, not whatever a fresh
# build or copy left behind (on kernels that map whole large folios, a file
# just written can add most of a MiB of mapped text to RSS).
uncache() { # executable
  python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$(readlink -f "$(command -v "$1")")" 2> /dev/null || true
}

start() { # name cmd...: background, output to name.log; its pid in LAST
  local name=$1; shift
  uncache "$1"
  # Under callgrind (measure_instructions) each process, children included,
  # counts its own instructions into cg-NAME.PID.out.
  if [ -n "${CALLGRIND:-}" ]; then
    set -- valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$work/cg-$name.%p.out" "$@"
  fi
  "$@" > "$name.log" 2>&1 &
  LAST=$!
  pids+=("$LAST")
}

wait_port() { # port
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "run.sh: nothing listens on $1" >&2; return 1
}

wait_ok() { # url
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.05
  done
  echo "run.sh: $1 does not answer 200" >&2; return 1
}

cpu_ticks() { # pids... -> utime+stime of all their threads
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo $t
}

rss_kib() { # pids...
  local t=0 p
  for p in "$@"; do
    t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo $t
}

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

# --- fixtures: the app (nginx answering 200) and the L4 sink and echo ---
fixtures() {
  cat > backend.conf <<EOF
daemon off; master_process off; worker_processes 1;
pid $work/backend.pid; error_log $work/backend.err crit;
events { worker_connections 65536; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  keepalive_requests 100000000; keepalive_timeout 1h;
  server { listen 127.0.0.1:$BACKEND; default_type text/plain; location / { return 200 "ok\n"; } }
}
EOF
  start backend nginx -c "$work/backend.conf"
  start sink "$LG" sink --listen 127.0.0.1:$SINK
  start echo "$LG" echo --listen 127.0.0.1:$ECHO
  wait_ok http://127.0.0.1:$BACKEND/
  wait_port $SINK; wait_port $ECHO
}

# --- the sidecar pairs; each sets OUT_PIDS and IN_PIDS ---
start_portcullis() {
  cat > policy.yaml <<EOF
default: deny
services:
  web: { rules: [ { name: out, action: allow, from: [spiffe://$TD/out] } ] }
  sink: { rules: [ { name: out, action: allow, from: [spiffe://$TD/out] } ] }
  echo: { rules: [ { name: out, action: allow, from: [spiffe://$TD/out] } ] }
EOF
  cat > in.yaml <<EOF
identity: { cert: in.pem, key: in-key.pem, trust_bundle: ca.pem }
policy: policy.yaml
audit: { sink: off }
log: { level: error }
runtime: { worker_threads: 1 }
inbound:
  - { name: web, listen: 127.0.0.1:$IN_WEB, forward: 127.0.0.1:$BACKEND, protocol: http }
  - { name: sink, listen: 127.0.0.1:$IN_SINK, forward: 127.0.0.1:$SINK }
  - { name: echo, listen: 127.0.0.1:$IN_ECHO, forward: 127.0.0.1:$ECHO }
admin: { listen: 127.0.0.1:$ADMIN_IN }
EOF
  local lim="limits: { max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000 }"
  cat > out.yaml <<EOF
identity: { cert: out.pem, key: out-key.pem, trust_bundle: ca.pem }
log: { level: error }
runtime: { worker_threads: 1 }
outbound:
  - { name: web, listen: 127.0.0.1:$OUT_WEB, endpoints: [127.0.0.1:$IN_WEB], identity: spiffe://$TD/in, protocol: http, $lim }
  - { name: sink, listen: 127.0.0.1:$OUT_SINK, endpoints: [127.0.0.1:$IN_SINK], identity: spiffe://$TD/in, $lim }
  - { name: echo, listen: 127.0.0.1:$OUT_ECHO, endpoints: [127.0.0.1:$IN_ECHO], identity: spiffe://$TD/in, $lim }
admin: { listen: 127.0.0.1:$ADMIN_OUT }
EOF
  start in "$P" run --config in.yaml; IN_PIDS=$LAST
  start out "$P" run --config out.yaml; OUT_PIDS=$LAST
  wait_ok http://127.0.0.1:$ADMIN_IN/ready
  wait_ok http://127.0.0.1:$ADMIN_OUT/ready
}

start_haproxy() { # [h2]: the hop between the sidecars in HTTP/2 instead of HTTP/1.1
  local tls="ssl-min-ver TLSv1.3 ca-file $work/ca.pem verify required"
  local hop_alpn=""
  [ "${1:-}" = h2 ] && hop_alpn="alpn h2"
  local common="global
  nbthread 1
  maxconn $HALF
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  maxconn $HALF"
  cat > out.cfg <<EOF
$common
frontend web
  bind 127.0.0.1:$OUT_WEB
  default_backend web
backend web
  http-reuse always
  server in 127.0.0.1:$IN_WEB ssl crt $work/out-combined.pem $tls verifyhost in.bench sni str(in.bench) $hop_alpn
frontend sink
  mode tcp
  bind 127.0.0.1:$OUT_SINK
  default_backend sink
backend sink
  mode tcp
  server in 127.0.0.1:$IN_SINK ssl crt $work/out-combined.pem $tls verifyhost in.bench
frontend echo
  mode tcp
  bind 127.0.0.1:$OUT_ECHO
  default_backend echo
backend echo
  mode tcp
  server in 127.0.0.1:$IN_ECHO ssl crt $work/out-combined.pem $tls verifyhost in.bench
EOF
  cat > in.cfg <<EOF
$common
frontend web
  bind 127.0.0.1:$IN_WEB ssl crt $work/in-combined.pem $tls alpn h2,http/1.1
  default_backend web
backend web
  http-reuse always
  server app 127.0.0.1:$BACKEND
frontend sink
  mode tcp
  bind 127.0.0.1:$IN_SINK ssl crt $work/in-combined.pem $tls
  default_backend sink
backend sink
  mode tcp
  server app 127.0.0.1:$SINK
frontend echo
  mode tcp
  bind 127.0.0.1:$IN_ECHO ssl crt $work/in-combined.pem $tls
  default_backend echo
backend echo
  mode tcp
  server app 127.0.0.1:$ECHO
EOF
  start in haproxy -db -f in.cfg; IN_PIDS=$LAST
  start out haproxy -db -f out.cfg; OUT_PIDS=$LAST
  wait_port $IN_WEB; wait_port $OUT_WEB
}

start_haproxy-h2() { start_haproxy h2; }

start_nginx() {
  local common="daemon off; master_process off; worker_processes 1; worker_rlimit_nofile $FDS;
load_module $stream_module;
events { worker_connections $FDS; }"
  local temp="client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;"
  local up_tls="proxy_ssl_certificate $work/out.pem; proxy_ssl_certificate_key $work/out-key.pem;
    proxy_ssl_trusted_certificate $work/ca.pem; proxy_ssl_verify on; proxy_ssl_name in.bench; proxy_ssl_protocols TLSv1.3;"
  local in_tls="ssl_certificate $work/in.pem; ssl_certificate_key $work/in-key.pem;
    ssl_client_certificate $work/ca.pem; ssl_verify_client on; ssl_protocols TLSv1.3;"
  cat > out.conf <<EOF
$common
pid $work/out.pid; error_log $work/out.err crit;
http {
  access_log off; $temp
  keepalive_requests 100000000; keepalive_timeout 1h;
  upstream hop { server 127.0.0.1:$IN_WEB; keepalive 256; keepalive_requests 100000000; keepalive_timeout 1h; }
  server {
    listen 127.0.0.1:$OUT_WEB;
    location / { proxy_pass https://hop; proxy_http_version 1.1; proxy_set_header Connection ""; $up_tls }
  }
}
stream {
  server { listen 127.0.0.1:$OUT_SINK; proxy_pass 127.0.0.1:$IN_SINK; proxy_ssl on; $up_tls }
  server { listen 127.0.0.1:$OUT_ECHO; proxy_pass 127.0.0.1:$IN_ECHO; proxy_ssl on; proxy_timeout 1h; $up_tls }
}
EOF
  cat > in.conf <<EOF
$common
pid $work/in.pid; error_log $work/in.err crit;
http {
  access_log off; $temp
  keepalive_requests 100000000; keepalive_timeout 1h;
  upstream app { server 127.0.0.1:$BACKEND; keepalive 256; keepalive_requests 100000000; keepalive_timeout 1h; }
  server {
    listen 127.0.0.1:$IN_WEB ssl; $in_tls
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
stream {
  server { listen 127.0.0.1:$IN_SINK ssl; $in_tls proxy_pass 127.0.0.1:$SINK; }
  server { listen 127.0.0.1:$IN_ECHO ssl; $in_tls proxy_pass 127.0.0.1:$ECHO; proxy_timeout 1h; }
}
EOF
  start in nginx -c "$work/in.conf"; IN_PIDS=$LAST
  start out nginx -c "$work/out.conf"; OUT_PIDS=$LAST
  wait_port $IN_WEB; wait_port $OUT_WEB
}

start_stunnel() {
  local common="foreground = yes
pid =
debug = 0
output = /dev/null
sslVersionMin = TLSv1.3
CAfile = $work/ca.pem
verifyChain = yes"
  {
    echo "$common"
    for s in "web $OUT_WEB $IN_WEB" "sink $OUT_SINK $IN_SINK" "echo $OUT_ECHO $IN_ECHO"; do
      set -- $s
      printf '[%s]\nclient = yes\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\ncheckHost = in.bench\n' \
        "$1" "$2" "$3" "$work/out.pem" "$work/out-key.pem"
    done
  } > out.stunnel
  {
    echo "$common"
    for s in "web $IN_WEB $BACKEND" "sink $IN_SINK $SINK" "echo $IN_ECHO $ECHO"; do
      set -- $s
      printf '[%s]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
        "$1" "$2" "$3" "$work/in.pem" "$work/in-key.pem"
    done
  } > in.stunnel
  start in stunnel4 in.stunnel; IN_PIDS=$LAST
  start out stunnel4 out.stunnel; OUT_PIDS=$LAST
  wait_port $IN_WEB; wait_port $OUT_WEB
}

# --- measurements ---
measure_wrk() { # target url pids...
  local t=$1 url=$2; shift 2
  local c0; c0=$(cpu_ticks "$@")
  wrk -t1 -c32 -d"${DUR}s" "$url" > wrk.txt
  local c1; c1=$(cpu_ticks "$@")
  local rps reqs
  rps=$(awk '/^Requests\/sec/ {print $2}' wrk.txt)
  reqs=$(awk '/requests in/ {print $1}' wrk.txt)
  if grep -qE 'Non-2xx|Socket errors' wrk.txt; then
    log "$t: wrk saw errors:"; grep -E 'Non-2xx|Socket errors' wrk.txt >&2
    record "$t" errors "$(grep -E 'Non-2xx|Socket errors' wrk.txt | tr -s ' ' | tr '\n' ';')"
  fi
  record "$t" max_rps "$rps"
  if [ $# -gt 0 ]; then
    record "$t" cpu_s_per_1k "$(python3 -c "print(($c1 - $c0) / $TICK / $reqs * 1000)")"
  fi
}

measure_rate() { # target port
  "$LG" rate --addr 127.0.0.1:"$2" --rate $RATE --duration $RATE_DUR --conns 32 > rate.json
  python3 - "$1" rate.json >> results.tsv <<'EOF'
import json, sys
t, r = sys.argv[1], json.load(open(sys.argv[2]))
for k in ("p50_ms", "p99_ms", "p999_ms", "achieved_rps", "errors"):
    print(f"{t}\trate_{k}\t{r[k]}")
EOF
}

measure_instructions() { # target: user-space instructions per request of each sidecar
  # The pair is started again under callgrind, warmed up, and counted over
  # exactly $ICOUNT requests (32 connections): like syscalls, a figure that
  # does not swing with the VM's speed, here for the work in user space.
  local t=$1 role f sum
  command -v callgrind_control > /dev/null || { log "no valgrind: instructions per request skipped"; return 0; }
  rm -f cg-*.out*
  CALLGRIND=1 "start_$t"
  for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$OUT_WEB/)" = 200 ] && break
    sleep 0.1
  done
  "$LG" count --addr 127.0.0.1:"$OUT_WEB" --requests 2000 --conns 32 > /dev/null
  callgrind_control -z > /dev/null 2>&1
  "$LG" count --addr 127.0.0.1:"$OUT_WEB" --requests $ICOUNT --conns 32 > /dev/null
  callgrind_control --dump > /dev/null 2>&1
  for role in out in; do
    sum=0
    for f in cg-$role.*.out.1; do
      [ -f "$f" ] || continue
      sum=$((sum + $(awk '/^summary:/ {print $2; exit}' "$f")))
    done
    record "$t" "instructions_per_req_$role" "$((sum / ICOUNT))"
  done
  stop_all
  fixtures
}

measure_syscalls() { # target port role=pids...
  local t=$1 port=$2; shift 2
  rm -f ready
  "$LG" count --addr 127.0.0.1:"$port" --requests $COUNT --conns 32 --ready "$work/ready" > count.json &
  local lg=$!
  for _ in $(seq 400); do [ -f ready ] && break; sleep 0.05; done
  local spids=() roles=() rp
  for rp in "$@"; do
    local role=${rp%%=*} ps=${rp#*=} args=()
    for p in $ps; do args+=(-p "$p"); done
    strace -c -f -o "strace-$role.txt" "${args[@]}" 2> "strace-$role.err" &
    spids+=($!); roles+=("$role")
  done
  # Attached when strace says so for every process.
  for i in "${!roles[@]}"; do
    for _ in $(seq 200); do grep -q attached "strace-${roles[$i]}.err" 2>/dev/null && break; sleep 0.05; done
  done
  rm -f ready
  wait $lg
  for s in "${spids[@]}"; do kill -INT "$s" 2>/dev/null || true; done
  for s in "${spids[@]}"; do wait "$s" 2>/dev/null || true; done
  for role in "${roles[@]}"; do
    local calls
    calls=$(awk '$NF == "total" {print $4}' "strace-$role.txt")
    record "$t" "syscalls_per_req_$role" "$(python3 -c "print(${calls:-0} / $COUNT)")"
    awk -v n=$COUNT 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ {printf "%s=%.2f ", $NF, $4 / n}' "strace-$role.txt" \
      | { read -r line || true; record "$t" "syscall_mix_$role" "$line"; }
  done
}

measure_bulk() { # target port
  "$LG" bulk --addr 127.0.0.1:"$2" --bytes $BULK > bulk.json
  record "$1" bulk_gbit "$(python3 -c "import json; print(json.load(open('bulk.json'))['gbit_per_s'])")"
}

measure_idle_mtls() { # target count
  local t=$1 n=$2
  run_idle "$t" "$n" $IN_WEB http --cert out.pem --key out-key.pem --bundle ca.pem --server-id spiffe://$TD/in || return 0
  record "$t" idle_mtls_held "$n"
  record "$t" idle_mtls_kib_per_conn "$(python3 -c "print($IN_GROWTH / $n)")"
}

measure_idle_l4() { # target count
  local t=$1 n=$2
  run_idle "$t" "$n" $OUT_ECHO echo || return 0
  record "$t" idle_l4_held "$n"
  record "$t" idle_l4_kib_per_conn_out "$(python3 -c "print($OUT_GROWTH / $n)")"
  record "$t" idle_l4_kib_per_conn_in "$(python3 -c "print($IN_GROWTH / $n)")"
}

run_idle() { # target count port probe [loadgen args...]: sets OUT_GROWTH and IN_GROWTH (KiB)
  local t=$1 n=$2 port=$3 probe=$4; shift 4
  local o0 i0; o0=$(rss_kib $OUT_PIDS); i0=$(rss_kib $IN_PIDS)
  rm -f idle
  "$LG" idle --addr 127.0.0.1:"$port" --probe "$probe" --conns "$n" --ready "$work/idle" "$@" > idle.json 2> idle.err &
  local lg=$!
  while [ ! -s idle ] && kill -0 $lg 2>/dev/null; do sleep 0.2; done
  if [ ! -s idle ]; then
    log "$t: idle $probe connections failed: $(cat idle.err)"; record "$t" idle_error "$probe: $(head -c 200 idle.err)"
    wait $lg || true; return 1
  fi
  sleep 1 # let buffers freed after the handshakes go back
  OUT_GROWTH=$(( $(rss_kib $OUT_PIDS) - o0 ))
  IN_GROWTH=$(( $(rss_kib $IN_PIDS) - i0 ))
  rm -f idle
  wait $lg || true
}

measure_handshakes() { # target in_pids
  local t=$1; shift
  local c0; c0=$(cpu_ticks "$@")
  "$LG" handshakes --addr 127.0.0.1:$IN_WEB --cert out.pem --key out-key.pem --bundle ca.pem \
    --server-id spiffe://$TD/in --duration $HS_DUR --conc 16 > hs.json
  local c1; c1=$(cpu_ticks "$@")
  python3 - "$t" hs.json "$c0" "$c1" "$TICK" >> results.tsv <<'EOF'
import json, sys
t, r = sys.argv[1], json.load(open(sys.argv[2]))
cpu = (int(sys.argv[4]) - int(sys.argv[3])) / int(sys.argv[5])
print(f"{t}\thandshakes_per_s\t{r['per_second']}")
print(f"{t}\thandshakes_failed\t{r['failed']}")
if cpu > 0:
    print(f"{t}\thandshakes_per_cpu_s\t{r['handshakes'] / cpu:.1f}")
EOF
}

# Whether a measurement is wanted (all of them unless --only names some).
want() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

fixtures
if [ -n "$serve" ]; then
  [ "$serve" = direct ] || "start_$serve"
  wait_ok http://127.0.0.1:$OUT_WEB/ 2>/dev/null || true
  log "$serve is up: HTTP in on 127.0.0.1:$OUT_WEB, L4 sink $OUT_SINK, echo $OUT_ECHO; app on $BACKEND"
  log "outbound pids: ${OUT_PIDS:-}  inbound pids: ${IN_PIDS:-}  (Ctrl-C ends it)"
  while true; do sleep 3600; done
fi
for t in $targets; do
  log "target $t"
  if [ "$t" = direct ]; then
    if want wrk; then measure_wrk direct http://127.0.0.1:$BACKEND/ || failed direct wrk; fi
    if want rate; then measure_rate direct $BACKEND || failed direct rate; fi
    if want bulk; then measure_bulk direct $SINK || failed direct bulk; fi
    continue
  fi
  if [ "$only" != instructions ]; then
    "start_$t"
    wait_ok http://127.0.0.1:$OUT_WEB/
    # Idle: started, one request through. Warm: after 32 connections of load
    # came and went (pools to the app filled, allocator high-water marks).
    if want rss; then
      record "$t" rss_kib_out "$(rss_kib $OUT_PIDS)"
      record "$t" rss_kib_in "$(rss_kib $IN_PIDS)"
      wrk -t1 -c32 -d1s http://127.0.0.1:$OUT_WEB/ > /dev/null
      record "$t" warm_rss_kib_out "$(rss_kib $OUT_PIDS)"
      record "$t" warm_rss_kib_in "$(rss_kib $IN_PIDS)"
    fi
    if want wrk; then measure_wrk "$t" http://127.0.0.1:$OUT_WEB/ $OUT_PIDS $IN_PIDS || failed "$t" wrk; fi
    if want rate; then measure_rate "$t" $OUT_WEB || failed "$t" rate; fi
    if want syscalls; then measure_syscalls "$t" $OUT_WEB "out=$OUT_PIDS" "in=$IN_PIDS" || failed "$t" syscalls; fi
    if want bulk; then measure_bulk "$t" $OUT_SINK || failed "$t" bulk; fi
    if want idle; then
      # Proxies holding a descriptor on each side per connection are capped by the limit.
      n=$IDLE; case $t in haproxy*|stunnel) n=$(min $IDLE $((HALF - 100))) ;; esac
      measure_idle_mtls "$t" "$n"
      measure_idle_l4 "$t" $IDLE_L4
    fi
    if want handshakes; then measure_handshakes "$t" $IN_PIDS || failed "$t" handshakes; fi
    stop_all
    fixtures
  fi
  if want instructions; then
    case $t in stunnel) ;; *) measure_instructions "$t" || failed "$t" instructions ;; esac
  fi
  [ -z "$results" ] || cp results.tsv "$results"
done

[ -z "$results" ] || cp results.tsv "$results"
python3 "$root/benches/mesh/report.py" results.tsv
