#!/bin/sh
# A development CA and one server certificate for every NATS name sigmabatch uses (compose:
# nats, nats-2, nats-3; Kubernetes: nats, nats-N.nats-headless and their namespace forms;
# localhost). Production: use your PKI (cert-manager in Kubernetes) with the same names.
#
#   deploy/nats/gen-dev-certs.sh [OUT_DIR]     (default deploy/nats/certs)
#
# Writes ca.pem, ca-key.pem, server.pem, server-key.pem. The server certificate carries both
# serverAuth and clientAuth: routes between the nodes use it for mutual TLS.
set -eu
out="${1:-$(dirname "$0")/certs}"
namespace="${NAMESPACE:-sigmabatch}"
days="${DAYS:-825}"
mkdir -p "$out"
cd "$out"

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -keyout ca-key.pem -out ca.pem -subj "/CN=sigmabatch dev NATS CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null

sans="DNS:localhost,IP:127.0.0.1,DNS:nats,DNS:nats-2,DNS:nats-3"
for i in 0 1 2; do
  sans="$sans,DNS:nats-$i.nats-headless,DNS:nats-$i.nats-headless.$namespace.svc.cluster.local"
done
sans="$sans,DNS:nats.$namespace.svc.cluster.local,DNS:nats-headless.$namespace.svc.cluster.local"

cat > server.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans
EXT
openssl req -newkey rsa:2048 -nodes -sha256 -keyout server-key.pem -out server.csr \
  -subj "/CN=nats" 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
  -days "$days" -sha256 -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca-key.pem server-key.pem
chmod 644 ca.pem server.pem
echo "wrote $out/ca.pem, server.pem, server-key.pem (CA key: $out/ca-key.pem)"
