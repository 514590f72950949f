//! `render`: the same flags as `infergate render`, for CI and for trying the manifests without the binary.
//!
//! ```text
//! cargo run -p infergate-deploy --example render -- \
//!     --config enableInference=True privateEndpointILB=True \
//!     --config-protected sslCertPemFile=certs-example/server.pem sslKeyPemFile=certs-example/server-key.pem
//! ```

use std::process::ExitCode;

use clap::Parser;
use infergate_deploy::cli::RenderCommand;

/// Render infergate's Kubernetes manifests from the AzureML extension's configuration keys.
#[derive(Debug, Parser)]
#[command(name = "render")]
struct Cli {
    #[command(flatten)]
    cmd: RenderCommand,
}

fn main() -> ExitCode {
    Cli::parse().cmd.run()
}
