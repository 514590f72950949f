#!/usr/bin/env bash
# Offline schema validation of infergate's Kubernetes manifests: every `render` mode and every
# kustomize overlay, against the Kubernetes OpenAPI schemas shipped in the PyPI package
# kubernetes-validate (strict: unknown fields are errors). No cluster needed.
#
#   bash deploy/validate.sh            # from anywhere; needs cargo, python3 + pip, kubectl (or kustomize)
#
# Environment:
#   K8S_VERSION        Kubernetes version to validate against (default 1.37, the newest schema set
#                      kubernetes-validate 1.37.0 ships)
#   PYTHON             python interpreter (default python3)
#   KUBECTL            kubectl binary (default kubectl)
#   REQUIRE_KUSTOMIZE  1: fail when neither kubectl nor kustomize is installed (default: warn and
#                      validate the overlays' resource files without building them)
#   CARGO_TARGET_DIR   honoured by cargo as usual
#
# The OpenShift SecurityContextConstraints has no schema in kubernetes-validate; it is checked
# against deploy/schemas/securitycontextconstraints-security-v1.json, a subset of the SCC
# schema of openshift/api. Any other kind without a schema is an error (a typo in apiVersion or
# kind would otherwise pass unchecked). Exits non-zero on any invalid manifest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
K8S_VERSION="${K8S_VERSION:-1.37}"
PY="${PYTHON:-python3}"
KUBECTL="${KUBECTL:-kubectl}"
KV_PIN="kubernetes-validate==1.37.0"

have_validator() {
    "$PY" - "$K8S_VERSION" 2>/dev/null <<'PY'
import sys
import kubernetes_validate.utils as u
from packaging.version import Version
sys.exit(0 if Version(u.latest_version()) >= Version(sys.argv[1]) else 1)
PY
}

if ! have_validator; then
    echo "validate.sh: installing $KV_PIN with pip"
    if "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        # A virtualenv: install into it (--user is refused there).
        "$PY" -m pip install --quiet "$KV_PIN"
    else
        # The user's site-packages; Debian's system python (PEP 668) needs
        # --break-system-packages even for --user installs.
        "$PY" -m pip install --quiet --user "$KV_PIN" 2>/dev/null ||
            "$PY" -m pip install --quiet --user --break-system-packages "$KV_PIN"
    fi
    if ! have_validator; then
        echo "validate.sh: kubernetes-validate cannot validate Kubernetes $K8S_VERSION after installing $KV_PIN" >&2
        exit 1
    fi
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
mkdir -p "$OUT/render" "$OUT/overlays"

# --- every render mode ----------------------------------------------------------------------
cargo build --quiet -p infergate-deploy --example render
render() {
    local mode="$1"
    shift
    if ! cargo run --quiet -p infergate-deploy --example render -- "$@" >"$OUT/render/$mode.yaml" 2>"$OUT/stderr"; then
        echo "FAIL render $mode: $(cat "$OUT/stderr")" >&2
        exit 1
    fi
}
TLS=(--config-protected sslCertPemFile=certs-example/server.pem sslKeyPemFile=certs-example/server-key.pem)
render public-https         --config enableInference=True "${TLS[@]}"
render public-http          --config enableInference=True allowInsecureConnections=True
render public-https-http    --config enableInference=True allowInsecureConnections=True "${TLS[@]}"
render ilb-https            --config enableInference=True privateEndpointILB=True "${TLS[@]}"
render ilb-http             --config enableInference=True privateEndpointILB=True allowInsecureConnections=True
render nodeport-https       --config enableInference=True privateEndpointNodeport=True "${TLS[@]}"
render nodeport-http        --config enableInference=True privateEndpointNodeport=True allowInsecureConnections=True
render clusterip-https      --config enableInference=True inferenceRouterServiceType=clusterIP "${TLS[@]}"
render clusterip-http       --config enableInference=True inferenceRouterServiceType=clusterIP allowInsecureConnections=True
render single-replica-https --config enableInference=True inferenceLoadBalancerHA=False "${TLS[@]}"
render openshift-https      --config enableInference=True openshift=True "${TLS[@]}"
render openshift-http-single --config enableInference=True openshift=True allowInsecureConnections=True inferenceRouterHA=False
render placement-https      --config enableInference=True nodeSelector.agentpool=gpu \
                            nodeSelector.kubernetes.azure.com/accelerator=nvidia \
                            tolerations=sku=gpu:NoSchedule,dedicated:NoExecute,maintenance "${TLS[@]}"
render custom-names         --namespace ml-serving --name router --image registry.example/infergate:dev \
                            --config enableInference=True privateEndpointILB=True "${TLS[@]}"
render inference-namespaces --config enableInference=True inferenceNamespaces=models,staging \
                            metricsNamespaces=monitoring,kube-system "${TLS[@]}"
render inference-all        --config enableInference=True 'inferenceNamespaces=*' 'metricsNamespaces=*' \
                            inferenceRouterHA=False "${TLS[@]}"

# --- every overlay --------------------------------------------------------------------------
overlays=(deploy/overlays/*/)
if command -v "$KUBECTL" >/dev/null 2>&1; then
    build=("$KUBECTL" kustomize)
elif command -v kustomize >/dev/null 2>&1; then
    build=(kustomize build)
else
    build=()
fi
for dir in "${overlays[@]}"; do
    name="$(basename "$dir")"
    if [ ${#build[@]} -gt 0 ]; then
        "${build[@]}" "$dir" >"$OUT/overlays/$name.yaml"
    else
        if [ "${REQUIRE_KUSTOMIZE:-0}" = 1 ]; then
            echo "validate.sh: neither $KUBECTL nor kustomize is installed (REQUIRE_KUSTOMIZE=1)" >&2
            exit 1
        fi
        echo "!!!! validate.sh: WARNING: neither $KUBECTL nor kustomize is installed: overlay $name is NOT" \
            "built; validating its resource files (and the base's) as they are" >&2
        for f in "$dir"*.yaml deploy/base/*.yaml; do
            case "$(basename "$f")" in kustomization.yaml) continue ;; esac
            { echo "---"; cat "$f"; } >>"$OUT/overlays/$name.yaml"
        done
    fi
done

# --- validate -------------------------------------------------------------------------------
# (plus the committed discovery manifests that no overlay includes: the namespaced Role variant)
"$PY" - "$K8S_VERSION" deploy/schemas/securitycontextconstraints-security-v1.json \
    "$OUT"/render/*.yaml "$OUT"/overlays/*.yaml deploy/crds/*.yaml deploy/rbac/*.yaml <<'PY'
import json
import os
import sys

import jsonschema
import yaml
import kubernetes_validate.utils as kv
from kubernetes_validate.version import __version__

version, scc_schema_file, files = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(scc_schema_file) as f:
    scc_schema = json.load(f)

failures, passed, scc_checked = [], 0, 0
for path in files:
    label = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        failures.append(f"{label}: no documents")
        continue
    for doc in docs:
        what = f"{label}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        try:
            if doc.get("kind") == "SecurityContextConstraints" and doc.get("apiVersion") == "security.openshift.io/v1":
                jsonschema.Draft202012Validator(scc_schema).validate(doc)
                scc_checked += 1
            else:
                kv.validate(doc, version, strict=True)
                passed += 1
        except kv.SchemaNotFoundError as e:
            failures.append(f"{what}: {e.message}")
        except jsonschema.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            failures.append(f"{what}: {where}: {e.message}")
        except Exception as e:  # noqa: BLE001 - report, do not crash
            failures.append(f"{what}: could not be validated: {e}")

for line in failures:
    print(f"INVALID {line}")
print(
    f"validate.sh: {len(files)} manifests, {passed} objects valid against Kubernetes {version} "
    f"(kubernetes-validate {__version__}, strict); {scc_checked} SecurityContextConstraints checked "
    f"against deploy/schemas (kubernetes-validate has no OpenShift schemas); {len(failures)} invalid"
)
sys.exit(1 if failures else 0)
PY
