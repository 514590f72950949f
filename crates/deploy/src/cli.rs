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
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
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
