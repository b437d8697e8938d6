#!/usr/bin/env bash
# Two services on one machine, each behind its own portcullis sidecar:
#
#   curl -> client sidecar (outbound 127.0.0.1:15001)
#        -> mTLS -> server sidecar (inbound 127.0.0.1:15006)
#        -> app (python3 -m http.server on 127.0.0.1:8080)
#
# Usage: examples/two-services/run.sh [path/to/portcullis]
# It makes a dev CA and two SVIDs in a temp dir, starts everything, makes
# one request through the mesh hop, prints the sidecars' metrics for it,
# and stops everything again.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/portcullis}
[ -x "$bin" ] || { echo "build first: cargo build --release (or pass the binary)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { s=$?; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; if [ $s -ne 0 ]; then echo "--- server.log"; cat "$work/server.log"; echo "--- client.log"; cat "$work/client.log"; fi; rm -rf "$work"; }
trap cleanup EXIT

cd "$work"
"$bin" cert ca --trust-domain example.org >/dev/null
cp ca.pem bundle.pem
"$bin" cert issue --id spiffe://example.org/ns/shop/sa/orders --out orders.pem --key-out orders-key.pem >/dev/null
"$bin" cert issue --id spiffe://example.org/ns/web/sa/frontend --out frontend.pem --key-out frontend-key.pem >/dev/null
cp "$here"/server.yaml "$here"/client.yaml .

mkdir www && echo "hello from the orders app" > www/index.html
python3 -m http.server 8080 --bind 127.0.0.1 --directory www >/dev/null 2>&1 & pids+=($!)
"$bin" run --config server.yaml 2>server.log & pids+=($!)
"$bin" run --config client.yaml 2>client.log & pids+=($!)

for url in http://127.0.0.1:8080/ http://127.0.0.1:15000/ready http://127.0.0.1:15100/ready; do
  for _ in $(seq 100); do curl -fs "$url" >/dev/null && break; sleep 0.1; done
done

echo "request through the mesh hop:"
curl -fsS http://127.0.0.1:15001/
echo
echo "server sidecar (inbound) metrics:"
curl -fsS http://127.0.0.1:15000/metrics | grep -E '^portcullis_(tls_handshakes_total|connections_opened_total).*inbound' | grep -v ' 0$'
echo "client sidecar (outbound) metrics:"
curl -fsS http://127.0.0.1:15100/metrics | grep -E '^portcullis_(tls_handshakes_total|connections_opened_total).*outbound' | grep -v ' 0$'
