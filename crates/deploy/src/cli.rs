//! The `render` command line, shared by `infergate render` and the `render` example.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{DEFAULT_IMAGE, DEFAULT_NAME, DEFAULT_NAMESPACE, RenderArgs};

/// Render infergate's Kubernetes manifests from the AzureML extension's configuration keys.
#[derive(Debug, clap::Args)]
pub struct RenderCommand {
    /// Namespace of every namespaced object.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Name of the Deployment and Service; other objects derive their names from it.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Extension settings, as with `az k8s-extension create --config` (several may follow one flag).
    #[arg(long = "config", visible_alias = "configuration-settings", value_name = "KEY=VALUE", num_args = 1..)]
    pub config: Vec<String>,
    /// Protected settings: sslCertPemFile and sslKeyPemFile (several may follow one flag).
    #[arg(
        long = "config-protected",
        visible_alias = "configuration-protected-settings",
        value_name = "KEY=VALUE",
        num_args = 1..
    )]
    pub config_protected: Vec<String>,
    /// Container image of the router.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Write one file per object into DIR instead of a multi-document stream on stdout.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "DIR",
        conflicts_with = "check"
    )]
    pub output: Option<PathBuf>,
    /// Validate the settings (and read the TLS files) as rendering does, print a summary
    /// instead of the manifests; exit 0, or 2 on an error.
    #[arg(long)]
    pub check: bool,
}

impl RenderCommand {
    /// Renders, prints warnings to stderr, writes the manifests; exit code 2 on a settings error.
    pub fn run(self) -> ExitCode {
        let args = RenderArgs {
            namespace: self.namespace,
            name: self.name,
            config: self.config,
            config_protected: self.config_protected,
            image: self.image,
        };
        let rendered = match crate::render(&args) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        for w in &rendered.warnings {
            eprintln!("warning: {w}");
        }
        if self.check {
            // Parsed again only to describe them; `render` already accepted them.
            if let Ok((settings, _)) = crate::Settings::parse(&args.config, &args.config_protected)
            {
                println!("{}", summary(&settings));
            }
            let files: Vec<&str> = rendered.documents.iter().map(|(f, _)| f.as_str()).collect();
            println!("{} objects: {}", files.len(), files.join(", "));
            println!("ok");
            return ExitCode::SUCCESS;
        }
        match self.output {
            Some(dir) => {
                if let Err(e) = rendered.write_dir(&dir) {
                    eprintln!("error: cannot write {}: {e}", dir.display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("{}", rendered.to_multi_doc()),
        }
        ExitCode::SUCCESS
    }
}

/// One line: what the settings make of the router.
pub fn summary(s: &crate::Settings) -> String {
    let exposure = match s.exposure {
        crate::Exposure::PublicLoadBalancer => "public LoadBalancer",
        crate::Exposure::InternalLoadBalancer => "internal LoadBalancer",
        crate::Exposure::NodePort => "NodePort",
        crate::Exposure::ClusterIp => "ClusterIP",
    };
    let replicas = if s.high_availability {
        "3 replicas acting as one (HA)"
    } else {
        "1 replica"
    };
    let https = match &s.tls {
        Some(t) => format!("https with {}", t.cert.display()),
        None => "no https".into(),
    };
    let http = if s.allow_insecure_connections {
        "plain http allowed"
    } else {
        "no plain http"
    };
    let mut line = format!("router: {exposure}, {replicas}, {https}, {http}");
    if s.openshift {
        line.push_str(", OpenShift");
    }
    if !s.node_selector.is_empty() {
        let sel: Vec<String> = s
            .node_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line.push_str(&format!(", nodeSelector {}", sel.join(",")));
    }
    if !s.tolerations.is_empty() {
        line.push_str(&format!(", {} toleration(s)", s.tolerations.len()));
    }
    let list = |n: &crate::Namespaces| match n {
        crate::Namespaces::All => "every namespace".to_string(),
        crate::Namespaces::Listed(l) => l.join(","),
    };
    match &s.inference_namespaces {
        None => line.push_str(", endpoints and Secrets of its own namespace"),
        Some(n) => line.push_str(&format!(", endpoints and Secrets of {}", list(n))),
    }
    line.push_str(&format!(
        ", admin port open to {}",
        list(&s.metrics_namespaces)
    ));
    line
}
