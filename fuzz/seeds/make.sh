#!/bin/sh
# Makes the fuzzers' PKI and seed inputs with openssl, as an operator's
# tools would: a SPIFFE CA for fuzz.example, an SVID, a CRL revoking
# another leaf (`openssl ca -gencrl`), an OCSP response for the SVID
# (`openssl ocsp`), and text seeds. The outputs are committed so a run
# needs no openssl; run this again only to change them.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
pki="$here/seeds/pki"
seed="$here/corpus-seed"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p "$pki"
for t in spiffe_id policy_yaml config_yaml bundle svid crl ocsp detect path headers; do
	rm -rf "${seed:?}/$t"
	mkdir -p "$seed/$t"
done

cat > leaf.ext <<'X'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = URI:spiffe://fuzz.example/svc
authorityKeyIdentifier = keyid
X
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -new -x509 -key ca.key -days 3650 -subj "/O=fuzz/CN=fuzz CA" \
	-addext "basicConstraints=critical,CA:TRUE" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" \
	-addext "subjectAltName=URI:spiffe://fuzz.example" -out ca.pem
for name in leaf gone; do
	openssl ecparam -name prime256v1 -genkey -noout -out "$name.key"
	openssl req -new -key "$name.key" -subj "/O=fuzz/CN=$name" -out "$name.csr"
	openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
		-days 3650 -extfile leaf.ext -out "$name.pem" 2>/dev/null
done

# openssl ca's database: the leaf valid, "gone" revoked.
touch index.txt
echo 1000 > crlnumber
cat > ca.cnf <<X
[ ca ]
default_ca = fuzz
[ fuzz ]
database = $work/index.txt
crlnumber = $work/crlnumber
default_md = sha256
default_crl_days = 3650
unique_subject = no
X
openssl ca -config ca.cnf -cert ca.pem -keyfile ca.key -valid leaf.pem 2>/dev/null
openssl ca -config ca.cnf -cert ca.pem -keyfile ca.key -valid gone.pem 2>/dev/null
openssl ca -config ca.cnf -cert ca.pem -keyfile ca.key -revoke gone.pem 2>/dev/null
openssl ca -config ca.cnf -cert ca.pem -keyfile ca.key -gencrl -out ca.crl 2>/dev/null
openssl crl -in ca.crl -outform DER -out "$seed/crl/seed.der"
cp ca.crl "$seed/crl/seed.pem"

openssl ocsp -issuer ca.pem -cert leaf.pem -no_nonce -reqout req.der
date +%s > "$pki/made"
openssl ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem \
	-reqin req.der -respout "$seed/ocsp/seed.der" -ndays 3650 >/dev/null

openssl x509 -in ca.pem -outform DER -out "$pki/ca.der"
openssl x509 -in leaf.pem -outform DER -out "$pki/leaf.der"

# svid: a big-endian u16 certificate length, the certificate, the key.
openssl pkcs8 -topk8 -nocrypt -in leaf.key -outform DER -out leaf.p8
python3 - "$pki/leaf.der" leaf.p8 "$seed/svid/seed" <<'X'
import sys
cert = open(sys.argv[1], "rb").read()
key = open(sys.argv[2], "rb").read()
open(sys.argv[3], "wb").write(len(cert).to_bytes(2, "big") + cert + key)
X

cp ca.pem "$seed/bundle/seed.pem"
python3 - "$pki/ca.der" "$seed/bundle/seed.json" <<'X'
import base64, json, sys
der = open(sys.argv[1], "rb").read()
json.dump({"keys": [{"use": "x509-svid", "kty": "EC",
                     "x5c": [base64.b64encode(der).decode()]}],
           "spiffe_sequence": 7, "spiffe_refresh_hint": 300},
          open(sys.argv[2], "w"))
X

printf 'spiffe://fuzz.example/ns/web/sa/frontend' > "$seed/spiffe_id/id"
printf 'spiffe://fuzz.example' > "$seed/spiffe_id/td"
printf 'GET / HTTP/1.1\r\nHost: x\r\n\r\n' > "$seed/detect/http1"
printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' > "$seed/detect/h2"
printf '\026\003\001\000\005hello' > "$seed/detect/tls"
printf '/api/v1/%%2e%%2E/admin;x=1/./b//c?q=1' > "$seed/path/tricky"
printf 'connection: keep-alive, x-a\nx-a: 1\nte: trailers\nupgrade: h2c\nx-forwarded-client-cert: By=x\n' > "$seed/headers/list"
cp "$here/../examples/two-services/server.yaml" "$seed/config_yaml/server.yaml"
cp "$here/../examples/two-services/client.yaml" "$seed/config_yaml/client.yaml"
cat > "$seed/policy_yaml/policy.yaml" <<'X'
default: deny
services:
  orders:
    mode: enforce
    rate_limit: { per_identity_per_second: 100, burst: 200 }
    rules:
      - name: web
        action: allow
        from: ["spiffe://prod.example.org/ns/web/sa/*"]
        methods: [GET, POST]
        paths: ["/api/*"]
      - name: admin
        action: deny
        from: ["spiffe://prod.example.org/*"]
        paths: ["/admin/*"]
X
echo "seeds written to $seed, PKI to $pki"
