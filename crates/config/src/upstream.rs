//! How the router talks to a deployment's pods (`protocol`, `upstreamTls`) and how gRPC calls
//! find their endpoint (`grpc.hostSuffix`).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// A deployment's `protocol`: what the router speaks to its pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over TCP, one request per connection at a time (the default).
    #[default]
    Http1,
    /// HTTP/2 over plain TCP with prior knowledge (h2c): one or a few multiplexed connections
    /// per pod. Needed for gRPC.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`), the pod's certificate checked against `upstreamTls`.
    H2,
}

impl UpstreamProtocol {
    /// How each choice is written, in the order http1, h2c, h2.
    pub const NAMES: &'static [&'static str] = &["http1", "h2c", "h2"];
    const ALL: [UpstreamProtocol; 3] = [Self::Http1, Self::H2c, Self::H2];

    /// How this choice is written.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The choice written `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Whether it is the default (not written when a configuration is serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the pods speak HTTP/2 (and so can take gRPC calls).
    pub fn is_http2(self) -> bool {
        self != Self::Http1
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for UpstreamProtocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for UpstreamProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_name(&s).ok_or_else(|| serde::de::Error::unknown_variant(&s, Self::NAMES))
    }
}

/// `upstreamTls` of a deployment with `protocol: h2`: how the pods' certificates are checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file with the CA certificate(s) the pods' certificates must chain to (only these are
    /// trusted, not the system's roots).
    pub ca_pem_file: PathBuf,
    /// The name the pods' certificates must hold (a DNS name or an IP address), also sent as
    /// SNI. Omitted: each pod's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Checks a deployment's `protocol` and `upstreamTls` (at config key `key`, e.g.
/// `endpoints[0].deployments[1]`): `h2` needs `upstreamTls` with a readable CA file, which
/// nothing else takes; the server name must be a DNS name or an IP address.
pub fn validate_upstream(
    key: &str,
    protocol: UpstreamProtocol,
    tls: Option<&UpstreamTls>,
) -> Result<(), ConfigError> {
    match (protocol, tls) {
        (UpstreamProtocol::H2, None) => Err(ConfigError::invalid(
            format!("{key}.upstreamTls"),
            "(not set)",
            "protocol h2 speaks TLS to the pods, and no CA is given to check their certificates",
            "set upstreamTls: {caPemFile: /path/to/ca.pem} (and serverName when the pods' \
             certificates do not hold their IP addresses), or use protocol h2c for plain HTTP/2",
        )),
        (UpstreamProtocol::H2, Some(t)) => {
            load_ca_pem(&format!("{key}.upstreamTls.caPemFile"), &t.ca_pem_file)?;
            if let Some(name) = &t.server_name
                && ServerName::try_from(name.as_str()).is_err()
            {
                return Err(ConfigError::invalid(
                    format!("{key}.upstreamTls.serverName"),
                    name,
                    "neither a DNS name nor an IP address",
                    "write the name the pods' certificates hold, e.g. model.svc.cluster.local",
                ));
            }
            Ok(())
        }
        (p, Some(_)) => Err(ConfigError::invalid(
            format!("{key}.upstreamTls"),
            "(set)",
            format!("upstreamTls applies only to protocol h2, and this deployment's is {p}"),
            "set protocol: h2 to speak TLS to the pods, or remove upstreamTls",
        )),
        (_, None) => Ok(()),
    }
}

/// The certificates (DER) of a PEM file of CA certificates, read now; `key` names the setting
/// in errors. At least one certificate, and nothing that is not one.
pub fn load_ca_pem(key: &str, path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    let bad = |problem: String| {
        ConfigError::invalid(
            key,
            path.display(),
            problem,
            "point it at a readable PEM file of CA certificates (-----BEGIN CERTIFICATE-----)",
        )
    };
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read the file: {e}")))?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(&text) {
        let c = c.map_err(|e| bad(format!("not a valid PEM certificate: {e}")))?;
        certs.push(c.as_ref().to_vec());
    }
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".to_string()));
    }
    Ok(certs)
}

/// `grpc`: how gRPC calls name their endpoint besides the `azureml-endpoint` metadata key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcConfig {
    /// A call whose `:authority` (or `Host`) is `<endpoint>.<hostSuffix>` goes to that
    /// endpoint when it carries no `azureml-endpoint` metadata. Omitted: metadata only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_suffix: Option<String>,
}

impl GrpcConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let Some(s) = &self.host_suffix else {
            return Ok(());
        };
        let labels_ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !labels_ok {
            return Err(ConfigError::invalid(
                "grpc.hostSuffix",
                s,
                "not a DNS name",
                "write the domain under which endpoints are named, without a leading dot or a \
                 port, e.g. models.example.com (then my-endpoint.models.example.com names the \
                 endpoint my-endpoint)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<(), ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn protocols_read_and_write_their_names() {
        for p in UpstreamProtocol::ALL {
            assert_eq!(UpstreamProtocol::from_name(p.as_str()), Some(p));
        }
        assert!(UpstreamProtocol::from_name("http2").is_none());
        assert!(UpstreamProtocol::H2c.is_http2() && !UpstreamProtocol::Http1.is_http2());
    }

    #[test]
    fn h2_needs_a_readable_ca_and_nothing_else_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = "endpoints[0].deployments[0]";
        let e = err(validate_upstream(key, UpstreamProtocol::H2, None));
        assert!(e.contains("endpoints[0].deployments[0].upstreamTls"), "{e}");
        assert!(e.contains("caPemFile"), "{e}");

        let tls = UpstreamTls {
            ca_pem_file: ca.clone(),
            server_name: None,
        };
        let e = err(validate_upstream(key, UpstreamProtocol::H2, Some(&tls)));
        assert!(
            e.contains("upstreamTls.caPemFile") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&ca, "not a pem").unwrap();
        let e = err(validate_upstream(key, UpstreamProtocol::H2, Some(&tls)));
        assert!(e.contains("holds no PEM certificate"), "{e}");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        validate_upstream(key, UpstreamProtocol::H2, Some(&tls)).unwrap();
        assert_eq!(load_ca_pem("k", &ca).unwrap().len(), 1);

        let named = |n: &str| UpstreamTls {
            server_name: Some(n.into()),
            ..tls.clone()
        };
        validate_upstream(key, UpstreamProtocol::H2, Some(&named("model.ns.svc"))).unwrap();
        validate_upstream(key, UpstreamProtocol::H2, Some(&named("10.0.0.1"))).unwrap();
        let e = err(validate_upstream(
            key,
            UpstreamProtocol::H2,
            Some(&named("bad name!")),
        ));
        assert!(
            e.contains("upstreamTls.serverName") && e.contains("bad name!"),
            "{e}"
        );

        for p in [UpstreamProtocol::Http1, UpstreamProtocol::H2c] {
            let e = err(validate_upstream(key, p, Some(&tls)));
            assert!(e.contains("applies only to protocol h2"), "{e}");
            validate_upstream(key, p, None).unwrap();
        }
    }

    #[test]
    fn host_suffix_is_a_dns_name() {
        let ok = |s: &str| {
            GrpcConfig {
                host_suffix: Some(s.into()),
            }
            .validate()
        };
        ok("models.example.com").unwrap();
        ok("svc").unwrap();
        for bad in [
            "",
            ".models.example.com",
            "a..b",
            "host:443",
            "-a.b",
            "a_b.c",
        ] {
            let e = ok(bad).unwrap_err().to_string();
            assert!(e.contains("grpc.hostSuffix"), "{bad}: {e}");
        }
        GrpcConfig::default().validate().unwrap();
    }
}
