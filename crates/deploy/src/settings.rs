//! The extension's `--config KEY=VALUE` settings: parsing, validation, and the typed result.

use std::collections::BTreeMap;
use std::path::PathBuf;

use infergate_config::parse_bool;

use crate::RenderError;
use crate::placement::{self, NODE_SELECTOR_PREFIX, Toleration};

/// Every key `render` accepts, with the AzureML extension's spelling.
///
/// Besides these, `nodeSelector.<node label key>=<value>` (any label key) places the router pods.
///
/// `inferenceRouterHA` is the newer extension's name for `inferenceLoadBalancerHA`;
/// `inferenceRouterServiceType` and `internalLoadBalancerProvider` are the newer extension's
/// way of choosing the Service (`clusterIP` has no older `privateEndpoint*` equivalent).
pub const KNOWN_KEYS: &[&str] = &[
    "enableInference",
    "enableTraining",
    "allowInsecureConnections",
    "sslCertPemFile",
    "sslKeyPemFile",
    "privateEndpointILB",
    "privateEndpointNodeport",
    "inferenceRouterServiceType",
    "internalLoadBalancerProvider",
    "inferenceLoadBalancerHA",
    "inferenceRouterHA",
    "openshift",
    "installNvidiaDevicePlugin",
    "logAnalyticsWS",
    "tolerations",
    "inferenceNamespaces",
    "metricsNamespaces",
];

/// The namespace Prometheus usually runs in (kube-prometheus, the prometheus-community charts):
/// the default of `metricsNamespaces`.
pub const DEFAULT_METRICS_NAMESPACE: &str = "monitoring";

/// Keys the extension takes with `--config-protected` (their values are secrets or point at them).
pub const PROTECTED_KEYS: &[&str] = &["sslCertPemFile", "sslKeyPemFile"];

/// How the router's Service is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// `LoadBalancer` with a public address (the extension's default).
    PublicLoadBalancer,
    /// `LoadBalancer` with the AKS internal-load-balancer annotation (`privateEndpointILB=True`).
    InternalLoadBalancer,
    /// `NodePort` (`privateEndpointNodeport=True`).
    NodePort,
    /// `ClusterIP`, for the user's own ingress (`inferenceRouterServiceType=clusterIP`).
    ClusterIp,
}

impl Exposure {
    /// The Kubernetes Service `type`.
    pub fn service_type(self) -> &'static str {
        match self {
            Exposure::PublicLoadBalancer | Exposure::InternalLoadBalancer => "LoadBalancer",
            Exposure::NodePort => "NodePort",
            Exposure::ClusterIp => "ClusterIP",
        }
    }
}

/// Namespaces a `KEY=a,b,c` setting names, or every namespace (`KEY=*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// These namespaces (at least one, each once).
    Listed(Vec<String>),
    /// Every namespace of the cluster.
    All,
}

/// The TLS certificate chain and key files (read from the machine that runs `render`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `sslCertPemFile`: PEM chain, leaf first.
    pub cert: PathBuf,
    /// `sslKeyPemFile`: PEM private key.
    pub key: PathBuf,
}

/// The validated settings: what the manifests are rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Serve plain HTTP (port 80 on the Service, 8080 in the pod).
    pub allow_insecure_connections: bool,
    /// Serve HTTPS with these files (port 443 on the Service, 8443 in the pod).
    pub tls: Option<TlsFiles>,
    /// The Service type and annotations.
    pub exposure: Exposure,
    /// Three replicas spread over nodes and zones, with a PodDisruptionBudget.
    pub high_availability: bool,
    /// No fixed UIDs; a SecurityContextConstraints and the Role/RoleBinding to use it.
    pub openshift: bool,
    /// `nodeSelector.<key>=<value>`: the pods' `nodeSelector` (empty: none).
    pub node_selector: BTreeMap<String, String>,
    /// `tolerations=...`: the pods' `tolerations` (empty: none).
    pub tolerations: Vec<Toleration>,
    /// `inferenceNamespaces=...`: where the InferenceEndpoints (and their Services and key
    /// Secrets) live, so where the router watches and may read Secrets. `None`: the router's
    /// own namespace.
    pub inference_namespaces: Option<Namespaces>,
    /// `metricsNamespaces=...`: the namespaces whose pods may reach the admin port (`/metrics`,
    /// `/readyz`, `/healthz`) through the NetworkPolicy; default `monitoring`.
    pub metrics_namespaces: Namespaces,
}

/// One `KEY=VALUE` as given, with the flag it came from.
struct Entry<'a> {
    value: &'a str,
    flag: &'static str,
}

/// The given settings by key.
struct Given<'a>(BTreeMap<&'static str, Entry<'a>>);

impl<'a> Given<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).map(|e| e.value)
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, RenderError> {
        self.get(key)
            .map_or(Ok(default), |v| Ok(parse_bool(key, v)?))
    }
}

impl Settings {
    /// Parses and validates the `--config` and `--config-protected` settings.
    ///
    /// Returns the settings and the warnings to show the user (accepted keys without
    /// effect, protected keys passed in the clear, insecure public exposure).
    pub fn parse(
        config: &[String],
        protected: &[String],
    ) -> Result<(Settings, Vec<String>), RenderError> {
        let mut warnings = Vec::new();
        let mut entries: BTreeMap<&'static str, Entry<'_>> = BTreeMap::new();
        let mut node_selector: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
        for (flag, list) in [("--config", config), ("--config-protected", protected)] {
            for raw in list {
                let Some((key, value)) = raw.split_once('=') else {
                    return Err(RenderError::invalid(
                        flag,
                        raw,
                        "not of the form KEY=VALUE",
                        format!("write e.g. {flag} enableInference=True"),
                    ));
                };
                let (key, value) = (key.trim(), value.trim());
                if key.starts_with(NODE_SELECTOR_PREFIX) {
                    let (label, v) = placement::node_selector_entry(key, value)?;
                    if let Some((prev, prev_flag)) = node_selector.get(&label)
                        && *prev != v
                    {
                        return Err(RenderError::invalid(
                            key,
                            value,
                            format!("the key is given twice, first as `{prev}` ({prev_flag})"),
                            format!("give {key} once: a node selector matches one value per label"),
                        ));
                    }
                    node_selector.insert(label, (v, flag));
                    continue;
                }
                let Some(&known) = KNOWN_KEYS.iter().find(|k| **k == key) else {
                    return Err(unknown_key(key, value));
                };
                if let Some(prev) = entries.get(known)
                    && prev.value != value
                {
                    return Err(RenderError::invalid(
                        known,
                        value,
                        format!(
                            "the key is given twice, first as `{}` ({})",
                            prev.value, prev.flag
                        ),
                        format!("give {known} once"),
                    ));
                }
                if flag == "--config" && PROTECTED_KEYS.contains(&known) {
                    warnings.push(format!(
                        "{known} was passed with --config; pass it with --config-protected as the \
                         AzureML extension does, so tooling that records settings keeps it apart"
                    ));
                }
                entries.insert(known, Entry { value, flag });
            }
        }
        let given = Given(entries);
        let get = |key: &str| given.get(key);
        let flag = |key: &str, default: bool| given.flag(key, default);

        if !flag("enableInference", true)? {
            return Err(RenderError::invalid(
                "enableInference",
                get("enableInference").unwrap_or_default(),
                "infergate is the inference router: it serves real-time inference and nothing else",
                "set enableInference=True (or leave the key out: True is implied)",
            ));
        }
        if flag("enableTraining", false)? {
            return Err(RenderError::invalid(
                "enableTraining",
                get("enableTraining").unwrap_or_default(),
                "training is not infergate's job: it only routes inference requests",
                "drop enableTraining (or set it to False); run training with the AzureML extension \
                 or another training operator",
            ));
        }

        let allow_insecure_connections = flag("allowInsecureConnections", false)?;
        let tls = tls_files(
            get("sslCertPemFile"),
            get("sslKeyPemFile"),
            allow_insecure_connections,
        )?;

        let ha = flag("inferenceLoadBalancerHA", true)?;
        if let (Some(old), Some(new)) = (get("inferenceLoadBalancerHA"), get("inferenceRouterHA")) {
            let new_bool = parse_bool("inferenceRouterHA", new)?;
            if new_bool != ha {
                return Err(RenderError::invalid(
                    "inferenceRouterHA",
                    new,
                    format!(
                        "inferenceLoadBalancerHA={old} says otherwise and inferenceRouterHA is another name for it"
                    ),
                    "give only one of inferenceLoadBalancerHA and inferenceRouterHA",
                ));
            }
        }
        let high_availability = flag("inferenceRouterHA", ha)?;

        let exposure = exposure(&given)?;

        let openshift = flag("openshift", false)?;
        let tolerations = match get("tolerations") {
            Some(v) => placement::tolerations(v)?,
            None => Vec::new(),
        };
        let inference_namespaces = get("inferenceNamespaces")
            .map(|v| namespaces("inferenceNamespaces", v))
            .transpose()?;
        if inference_namespaces == Some(Namespaces::All) {
            warnings.push(
                "inferenceNamespaces=* grants the router list/watch on the Secrets of every \
                 namespace (a ClusterRole): it reads only those labelled infergate.io/auth=true, \
                 selected by the API server, but RBAC cannot limit a grant by label, so whoever \
                 holds the router's ServiceAccount token can read every Secret in the cluster; \
                 prefer naming the model namespaces, e.g. inferenceNamespaces=models,staging"
                    .to_string(),
            );
        }
        let metrics_namespaces = match get("metricsNamespaces") {
            Some(v) => namespaces("metricsNamespaces", v)?,
            None => Namespaces::Listed(vec![DEFAULT_METRICS_NAMESPACE.to_string()]),
        };
        if metrics_namespaces == Namespaces::All {
            warnings.push(
                "metricsNamespaces=* opens the admin port (/metrics, /readyz, /healthz) to every \
                 pod of the cluster; /metrics names every endpoint, deployment and pod: prefer the \
                 namespace your Prometheus runs in, e.g. metricsNamespaces=monitoring"
                    .to_string(),
            );
        }
        for (key, why) in [
            (
                "installNvidiaDevicePlugin",
                "infergate installs no device plugin",
            ),
            (
                "logAnalyticsWS",
                "infergate writes its logs to stdout; ship them with the cluster's log agent",
            ),
        ] {
            if let Some(v) = get(key) {
                parse_bool(key, v)?;
                warnings.push(format!(
                    "{key}={v} is accepted for compatibility with the AzureML extension and has no effect: {why}"
                ));
            }
        }
        if allow_insecure_connections && exposure == Exposure::PublicLoadBalancer {
            warnings.push(
                "allowInsecureConnections=True on a public load balancer serves plain HTTP to the \
                 internet: the least secure way to expose the router; prefer TLS \
                 (--config-protected sslCertPemFile=... sslKeyPemFile=...) or a private exposure"
                    .to_string(),
            );
        }

        Ok((
            Settings {
                allow_insecure_connections,
                tls,
                exposure,
                high_availability,
                openshift,
                node_selector: node_selector
                    .into_iter()
                    .map(|(k, (v, _))| (k, v))
                    .collect(),
                tolerations,
                inference_namespaces,
                metrics_namespaces,
            },
            warnings,
        ))
    }
}

/// The known key closest to `key` (case-insensitive edit distance), if it is close enough to be a typo.
pub fn closest_key(key: &str) -> Option<&'static str> {
    infergate_config::closest(key, KNOWN_KEYS.iter().copied())
}

fn unknown_key(key: &str, value: &str) -> RenderError {
    let known = format!(
        "{}, {NODE_SELECTOR_PREFIX}<node label key>",
        KNOWN_KEYS.join(", ")
    );
    if key.to_ascii_lowercase().starts_with("nodeselector") {
        return RenderError::UnknownKey {
            key: key.to_string(),
            value: value.to_string(),
            suggestion: Some("nodeSelector.<node label key>"),
            fix: format!(
                "write one setting per node label, nodeSelector.<node label key>=<value> \
                 (case-sensitive), e.g. nodeSelector.agentpool=gpu; known keys: {known}"
            ),
        };
    }
    let suggestion = closest_key(key);
    let fix = match suggestion {
        Some(s) => format!("did you mean `{s}`? (keys are case-sensitive; known keys: {known})"),
        None => format!("use one of the known keys: {known}"),
    };
    RenderError::UnknownKey {
        key: key.to_string(),
        value: value.to_string(),
        suggestion,
        fix,
    }
}

/// `a,b,c` (each a namespace name, listed once) or `*`.
fn namespaces(key: &str, value: &str) -> Result<Namespaces, RenderError> {
    if value == "*" {
        return Ok(Namespaces::All);
    }
    let mut out: Vec<String> = Vec::new();
    for n in value.split(',').map(str::trim) {
        if n == "*" {
            return Err(RenderError::invalid(
                key,
                value,
                "`*` (every namespace) cannot be combined with names",
                format!("write {key}=* alone, or list namespaces only, e.g. {key}=models,staging"),
            ));
        }
        if !infergate_config::is_dns_label(n) {
            return Err(RenderError::invalid(
                key,
                value,
                format!("`{n}` is not a Kubernetes namespace name"),
                format!(
                    "list namespace names separated by commas (1-63 lowercase letters, digits \
                     and '-', starting and ending with a letter or digit), e.g. \
                     {key}=models,staging; or {key}=* for every namespace"
                ),
            ));
        }
        if out.iter().any(|o| o == n) {
            return Err(RenderError::invalid(
                key,
                value,
                format!("`{n}` is listed twice"),
                "list each namespace once",
            ));
        }
        out.push(n.to_string());
    }
    Ok(Namespaces::Listed(out))
}

fn tls_files(
    cert: Option<&str>,
    key: Option<&str>,
    insecure: bool,
) -> Result<Option<TlsFiles>, RenderError> {
    for (k, v) in [("sslCertPemFile", cert), ("sslKeyPemFile", key)] {
        if v == Some("") {
            return Err(RenderError::invalid(
                k,
                "",
                "the path is empty",
                format!("write --config-protected {k}=<path to a PEM file>"),
            ));
        }
    }
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(TlsFiles {
            cert: c.into(),
            key: k.into(),
        })),
        (Some(c), None) => Err(RenderError::invalid(
            "sslKeyPemFile",
            "(not set)",
            format!("sslCertPemFile is set ({c}) but its key is not"),
            "add --config-protected sslKeyPemFile=<path to the PEM private key of that certificate>",
        )),
        (None, Some(k)) => Err(RenderError::invalid(
            "sslCertPemFile",
            "(not set)",
            format!("sslKeyPemFile is set ({k}) but no certificate is"),
            "add --config-protected sslCertPemFile=<path to the PEM certificate chain, leaf first>",
        )),
        (None, None) if insecure => Ok(None),
        (None, None) => Err(RenderError::invalid(
            "sslCertPemFile, sslKeyPemFile",
            "(not set)",
            "no TLS certificate is given and allowInsecureConnections is False",
            "pass --config-protected sslCertPemFile=<cert.pem> sslKeyPemFile=<key.pem>, or \
             --config allowInsecureConnections=True to serve plain HTTP (not for production)",
        )),
    }
}

fn exposure(given: &Given<'_>) -> Result<Exposure, RenderError> {
    let get = |key: &str| given.get(key);
    let flag = |key: &str, default: bool| given.flag(key, default);
    let node_port = flag("privateEndpointNodeport", false)?;
    let mut ilb = flag("privateEndpointILB", false)?;
    if let Some(provider) = get("internalLoadBalancerProvider") {
        if !provider.eq_ignore_ascii_case("azure") {
            return Err(RenderError::invalid(
                "internalLoadBalancerProvider",
                provider,
                "the only internal load balancer infergate knows is Azure's",
                "write internalLoadBalancerProvider=azure, or leave the key out",
            ));
        }
        ilb = true;
    }
    if ilb && node_port {
        return Err(RenderError::invalid(
            "privateEndpointNodeport",
            get("privateEndpointNodeport").unwrap_or_default(),
            "privateEndpointILB=True (or internalLoadBalancerProvider) is set too: the router is \
             exposed through an internal load balancer or through a NodePort, not both",
            "keep only one of privateEndpointILB=True and privateEndpointNodeport=True",
        ));
    }
    let Some(st) = get("inferenceRouterServiceType") else {
        return Ok(if ilb {
            Exposure::InternalLoadBalancer
        } else if node_port {
            Exposure::NodePort
        } else {
            Exposure::PublicLoadBalancer
        });
    };
    let conflict = |needs: &str, because: &str| {
        RenderError::invalid(
            "inferenceRouterServiceType",
            st,
            format!("{because} needs a {needs} Service"),
            format!("write inferenceRouterServiceType={needs}, or drop {because}"),
        )
    };
    match st.to_ascii_lowercase().as_str() {
        "loadbalancer" if node_port => Err(conflict("nodePort", "privateEndpointNodeport=True")),
        "loadbalancer" if ilb => Ok(Exposure::InternalLoadBalancer),
        "loadbalancer" => Ok(Exposure::PublicLoadBalancer),
        "nodeport" if ilb => Err(conflict("loadBalancer", "privateEndpointILB=True")),
        "nodeport" => Ok(Exposure::NodePort),
        "clusterip" if ilb => Err(conflict("loadBalancer", "privateEndpointILB=True")),
        "clusterip" if node_port => Err(conflict("nodePort", "privateEndpointNodeport=True")),
        "clusterip" => Ok(Exposure::ClusterIp),
        _ => Err(RenderError::invalid(
            "inferenceRouterServiceType",
            st,
            "not a Service type infergate renders",
            "write one of loadBalancer, nodePort or clusterIP",
        )),
    }
}
