# syntax=docker/dockerfile:1
# infergate container image: a release build of the `infergate` binary on distroless (no shell,
# no package manager), running as the non-root user 65532.
#
#   docker build -t ghcr.io/infergate/infergate:0.1.0 .
#
# Kubernetes manifests that run it: deploy/README.md (`infergate render`, kustomize overlays).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit); the binary is copied
# out of the cached target dir so the next stage can see it. --no-default-features leaves out
# `infergate demo` (the mock model and the embedded example certificate and key).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p infergate --no-default-features \
    && cp target/release/infergate /infergate

# cc: glibc + libgcc, matching bookworm's (ring and the std need nothing else).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /infergate /infergate
# The image's `nonroot` user, written numerically so that Kubernetes' runAsNonRoot check can
# verify it without an /etc/passwd lookup.
USER 65532:65532
# 8443 HTTPS, 8080 plain HTTP (only with allowInsecureConnections), 9090 admin (/healthz, /readyz, /metrics)
EXPOSE 8443 8080 9090
ENTRYPOINT ["/infergate"]
CMD ["serve", "--config", "/etc/infergate/config/infergate.yaml"]
