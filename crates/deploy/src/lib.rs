//! Renders infergate's Kubernetes manifests from the AzureML extension's `--config` keys (`infergate render`).
//!
//! Users of the AzureML Kubernetes extension choose how the inference router (`azureml-fe`) is
//! exposed with `az k8s-extension create --config KEY=VALUE ... --config-protected KEY=VALUE ...`.
//! [`render`] takes the same keys and produces the Namespace, ServiceAccount, ConfigMap (the
//! router's `infergate.yaml`), TLS Secret, Deployment, Service, NetworkPolicy (serving ports
//! open, the admin port to the `metricsNamespaces` only), PodDisruptionBudget and, for
//! OpenShift, the SecurityContextConstraints with the Role and RoleBinding that grant it.
//! Discovery's rights (Secrets included) are Roles in the `inferenceNamespaces` (default: the
//! router's own), a ClusterRole only with `inferenceNamespaces=*`. With high availability
//! (three replicas, the default) the replicas act as one router (`cluster` in the config): a
//! headless `<name>-peers` Service finds them, a `<name>-cluster` Secret authenticates them,
//! and a NetworkPolicy admits only router pods to their peer port.
//!
//! ```no_run
//! let args = infergate_deploy::RenderArgs {
//!     config: vec!["enableInference=True".into(), "privateEndpointILB=True".into()],
//!     config_protected: vec![
//!         "sslCertPemFile=certs-example/server.pem".into(),
//!         "sslKeyPemFile=certs-example/server-key.pem".into(),
//!     ],
//!     ..Default::default()
//! };
//! let rendered = infergate_deploy::render(&args)?;
//! print!("{}", rendered.to_multi_doc());
//! # Ok::<(), infergate_deploy::RenderError>(())
//! ```

use std::path::Path;

pub mod cli;
mod error;
mod manifests;
mod placement;
mod settings;
mod yaml;

pub use error::RenderError;
pub use manifests::{
    ADMIN_PORT, CLUSTER_DIR, CLUSTER_SECRET_BYTES, CONFIG_PATH, CRD_YAML, HTTP_PORT, HTTPS_PORT,
    PEER_PORT, PRE_STOP_SECONDS, TLS_DIR, discovery_rules, lease_rules, namespaced_discovery_rbac,
    peer_rules, termination_grace_seconds,
};
pub use placement::{EFFECTS, NODE_SELECTOR_PREFIX, Toleration};
pub use settings::{
    DEFAULT_METRICS_NAMESPACE, Exposure, KNOWN_KEYS, Namespaces, PROTECTED_KEYS, Settings,
    TlsFiles, closest_key,
};

/// Default namespace, the one the AzureML extension installs into.
pub const DEFAULT_NAMESPACE: &str = "azureml";
/// Default name of the Deployment, Service and the other objects (prefix of derived names).
pub const DEFAULT_NAME: &str = "infergate";
/// Default container image.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/infergate/infergate:", env!("CARGO_PKG_VERSION"));

/// The inputs of `infergate render`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderArgs {
    /// Namespace of every namespaced object (default `azureml`).
    pub namespace: String,
    /// Name of the Deployment and Service; other objects derive their names from it (default `infergate`).
    pub name: String,
    /// `--config KEY=VALUE` settings.
    pub config: Vec<String>,
    /// `--config-protected KEY=VALUE` settings (`sslCertPemFile`, `sslKeyPemFile`).
    pub config_protected: Vec<String>,
    /// Container image of the router.
    pub image: String,
}

impl Default for RenderArgs {
    fn default() -> Self {
        RenderArgs {
            namespace: DEFAULT_NAMESPACE.into(),
            name: DEFAULT_NAME.into(),
            config: Vec::new(),
            config_protected: Vec::new(),
            image: DEFAULT_IMAGE.into(),
        }
    }
}

/// The rendered manifests: one YAML document per Kubernetes object, in apply order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `(file name, YAML)` pairs, e.g. `("deployment.yaml", "apiVersion: apps/v1\n...")`.
    pub documents: Vec<(String, String)>,
    /// Things the user should know (keys without effect, insecure choices); print them to stderr.
    pub warnings: Vec<String>,
}

impl Rendered {
    /// All documents as one multi-document YAML stream (each starts with `---`).
    pub fn to_multi_doc(&self) -> String {
        let mut out = String::new();
        for (_, doc) in &self.documents {
            out.push_str("---\n");
            out.push_str(doc);
            if !doc.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// Writes every document to its own file in `dir` (created if missing; files overwritten).
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (file, doc) in &self.documents {
            std::fs::write(dir.join(file), doc)?;
        }
        Ok(())
    }

    /// The document written to `file`, if there is one.
    pub fn document(&self, file: &str) -> Option<&str> {
        self.documents
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, d)| d.as_str())
    }
}

/// Validates the settings, reads and checks the TLS files, and renders the manifests.
pub fn render(args: &RenderArgs) -> Result<Rendered, RenderError> {
    let (settings, warnings) = Settings::parse(&args.config, &args.config_protected)?;
    let documents = manifests::documents(args, &settings)?
        .into_iter()
        .map(|(file, value)| Ok((file, yaml::to_yaml(&value)?)))
        .collect::<Result<_, RenderError>>()?;
    Ok(Rendered {
        documents,
        warnings,
    })
}

#[cfg(test)]
mod tests;
