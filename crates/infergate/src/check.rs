//! `infergate check --config FILE [--set KEY=VALUE ...]`: everything `serve` validates before it
//! binds (like `nginx -t` and `haproxy -c`), with nothing bound and no watcher started.

use std::path::Path;
use std::process::ExitCode;

use infergate_config::{AuthMode, Config};
use infergate_tls::TlsError;

/// Validates the configuration and prints one line per endpoint and `ok` (exit 0), or
/// `error: ...` on stderr (exit 2).
pub fn run(config: &Path, sets: &[String]) -> ExitCode {
    match check(config, sets) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The summary lines of a valid configuration, or the first error.
fn check(config: &Path, sets: &[String]) -> Result<Vec<String>, String> {
    // Parse, `--set`, validate (listeners, TLS presence, settings, weights, auth, cluster keys;
    // token mode's signing key files are read here).
    let cfg = Config::load(config, sets).map_err(|e| e.to_string())?;
    infergate_tls::install_crypto_provider();
    validate_files(&cfg, true)?;

    let mut lines = Vec::new();
    for spec in infergate_proxy::specs_from_config(&cfg) {
        let ep = cfg.endpoints.iter().find(|e| e.name == spec.name);
        let auth = ep.map_or_else(|| "?".to_string(), |e| e.auth.mode.to_string());
        let deployments: Vec<String> = spec
            .deployments
            .iter()
            .map(|d| {
                let n = d.pods.len();
                format!(
                    "{} (weight {}, {n} pod{})",
                    d.name,
                    d.weight,
                    if n == 1 { "" } else { "s" }
                )
            })
            .collect();
        let mirror = spec
            .mirror
            .as_ref()
            .map(|m| format!(", mirror {}% to {}", m.percent, m.deployment))
            .unwrap_or_default();
        lines.push(format!(
            "endpoint {}: auth {auth}, deployments {}{mirror}",
            spec.name,
            deployments.join(", ")
        ));
    }
    if let Some(k) = &cfg.discovery.kube {
        let ns = if k.namespaces.is_empty() {
            "all namespaces".to_string()
        } else {
            format!("namespaces {}", k.namespaces.join(", "))
        };
        lines.push(format!(
            "discovery: kube, {ns} (endpoints come from the cluster; the API is not contacted by check)"
        ));
    }

    // The cluster's shared secret and the advertised address, as joining the cluster reads them.
    if let Some(c) = &cfg.cluster {
        c.read_secret().map_err(|e| e.to_string())?;
        let advertise = c.advertised().map_err(|e| e.to_string())?;
        let peers = match &c.kube {
            Some(k) => format!("peers from service {}", k.service),
            None => format!("{} static peer(s)", c.peers.len()),
        };
        lines.push(format!(
            "cluster: listen {}, advertise {advertise}, {peers}, secret read",
            c.listen
        ));
    }
    Ok(lines)
}

/// What [`Config::load`] cannot see: the certificate and key as the HTTPS listener loads them
/// (readable, PEM, matching; only with `tls`), and the signing keys as the router reads them.
/// A configuration reload checks the same before it swaps anything.
pub(crate) fn validate_files(cfg: &Config, tls: bool) -> Result<(), String> {
    if let (true, Some(cert), Some(key)) = (tls, &cfg.ssl_cert_pem_file, &cfg.ssl_key_pem_file) {
        infergate_tls::load_certified_key(cert, key)
            .map_err(|e| format!("{}: {e}", tls_keys(&e, cert)))?;
    }
    // (The file may have changed since validation; `serve` would then refuse every request to
    // the endpoint.)
    for (i, ep) in cfg.endpoints.iter().enumerate() {
        if let (AuthMode::Token, Some(p)) = (ep.auth.mode, &ep.auth.signing_key_file) {
            let key = format!("endpoints[{i}].auth.signingKeyFile");
            let bytes =
                infergate_config::read_signing_key_file(&key, p).map_err(|e| e.to_string())?;
            infergate_auth::AuthPolicy::token(&bytes)
                .map_err(|e| format!("{key} ({}): {e}", p.display()))?;
        }
    }
    Ok(())
}

/// The configuration key(s) a TLS loading error is about.
fn tls_keys(e: &TlsError, cert: &Path) -> &'static str {
    let path = match e {
        TlsError::Read { path, .. }
        | TlsError::Pem { path, .. }
        | TlsError::NoCertificate { path }
        | TlsError::InvalidCertificate { path, .. } => path,
        TlsError::KeyMismatch { .. } => return "sslCertPemFile and sslKeyPemFile",
        _ => return "sslKeyPemFile",
    };
    if path == cert {
        "sslCertPemFile"
    } else {
        "sslKeyPemFile"
    }
}
