#!/usr/bin/env bash
# Generates TEST-ONLY TLS material for infergate development:
#   ca.pem / ca-key.pem        a throwaway development CA (EC P-256)
#   server.pem                 server leaf certificate followed by ca.pem (chain, leaf first)
#   server-key.pem             the leaf's EC P-256 private key, unencrypted PKCS#8
# SANs: DNS:localhost, DNS:*.infergate.local, IP:127.0.0.1, IP:::1; valid 3650 days.
#
# Usage: make-dev-certs.sh [OUTPUT_DIR]      (default: this script's directory)
# Idempotent: existing files are kept (the CA is reused, a missing server pair is
# (re)issued from it). Set FORCE=1 to throw everything away and start over.
# NEVER use these keys in production: they are committed to a public repository.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$script_dir}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
days=3650

command -v openssl >/dev/null || { echo "error: openssl not found in PATH" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
umask 077

if [[ "${FORCE:-0}" == "1" ]]; then
  rm -f "$out/ca.pem" "$out/ca-key.pem" "$out/server.pem" "$out/server-key.pem"
fi

# --- CA -----------------------------------------------------------------------
if [[ -s "$out/ca.pem" && -s "$out/ca-key.pem" ]]; then
  echo "keeping existing CA $out/ca.pem"
else
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca-key.pem"
  openssl req -x509 -new -sha256 -days "$days" \
    -key "$tmp/ca-key.pem" \
    -subj "/O=infergate TEST ONLY/CN=infergate development CA (TEST ONLY, DO NOT TRUST)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$tmp/ca.pem"
  mv "$tmp/ca-key.pem" "$out/ca-key.pem"
  mv "$tmp/ca.pem" "$out/ca.pem"
  # A new CA invalidates any server certificate issued by an older one.
  rm -f "$out/server.pem" "$out/server-key.pem"
  echo "created CA $out/ca.pem"
fi

# --- server leaf ----------------------------------------------------------------
if [[ -s "$out/server.pem" && -s "$out/server-key.pem" ]] &&
   openssl verify -CAfile "$out/ca.pem" "$out/server.pem" >/dev/null 2>&1; then
  echo "keeping existing server certificate $out/server.pem"
else
  cat > "$tmp/server.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, DNS:*.infergate.local, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
  # genpkey writes PKCS#8 ("BEGIN PRIVATE KEY").
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/server-key.pem"
  openssl req -new -sha256 -key "$tmp/server-key.pem" \
    -subj "/O=infergate TEST ONLY/CN=localhost" -out "$tmp/server.csr"
  openssl x509 -req -sha256 -days "$days" \
    -in "$tmp/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" \
    -set_serial "0x$(openssl rand -hex 16)" \
    -extfile "$tmp/server.ext" -out "$tmp/leaf.pem"
  openssl verify -CAfile "$out/ca.pem" "$tmp/leaf.pem" >/dev/null
  cat "$tmp/leaf.pem" "$out/ca.pem" > "$tmp/server.pem"
  mv "$tmp/server-key.pem" "$out/server-key.pem"
  mv "$tmp/server.pem" "$out/server.pem"
  echo "created server certificate $out/server.pem (key $out/server-key.pem)"
fi

# Public, throwaway test material: readable so containers running as any uid can mount it.
chmod 0644 "$out/ca.pem" "$out/ca-key.pem" "$out/server.pem" "$out/server-key.pem"
