#!/usr/bin/env bash
# Regenerates src/oip/inference.rs from proto/inference.proto with prost and tonic's code generator
# (protox compiles the .proto: no system protoc needed). The generated file is committed so that
# building the mock needs no code generator; run this after changing the .proto.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/out"
cat > "$work/Cargo.toml" <<'TOML'
[package]
name = "oipgen"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tonic-prost-build = { version = "0.14", default-features = false }
protox = "0.10"
TOML
cat > "$work/src/main.rs" <<'RS'
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fds = protox::compile(["inference.proto"], [&args[1]]).expect("the proto compiles");
    tonic_prost_build::configure()
        .build_transport(false)
        .out_dir(&args[2])
        .compile_fds(fds)
        .expect("code generated");
}
RS
cargo run -q --manifest-path "$work/Cargo.toml" -- "$here" "$work/out"
cp "$work/out/inference.rs" "$here/../src/oip/inference.rs"
echo "wrote $here/../src/oip/inference.rs"
