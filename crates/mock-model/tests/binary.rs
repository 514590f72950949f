//! Tests of the `mock-model` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::{client, empty, json, send};

const BIN: &str = env!("CARGO_BIN_EXE_mock-model");

#[test]
fn help_documents_options() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--listen",
        "--name",
        "--latency-ms",
        "--fail-rate",
        "--stream-chunks",
        "--protocol",
        "--tls-cert",
        "--h2-max-concurrent-streams",
    ] {
        assert!(text.contains(opt), "--help misses {opt}:\n{text}");
    }
}

#[test]
fn invalid_fail_rate_is_rejected() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--fail-rate", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("fail rate must be between 0 and 1"), "{err}");
}

#[test]
fn protocol_h2_needs_a_certificate_and_only_it_takes_one() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--protocol", "h2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--tls-cert and --tls-key"), "{err}");
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../certs-example/");
    let (cert, key) = (
        format!("{certs}server.pem"),
        format!("{certs}server-key.pem"),
    );
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--protocol", "h2c"])
        .args(["--tls-cert", &cert, "--tls-key", &key])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("go with --protocol h2"), "{err}");
}

/// Kills the child even when the test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> (KillOnDrop, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (child, line.trim_end().to_owned())
}

#[tokio::test]
async fn binary_prints_real_port_and_serves() {
    let (_child, line) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--name",
        "bin-pod",
        "--latency-ms",
        "1",
    ]);
    let addr: SocketAddr = line
        .strip_prefix("mock-model bin-pod listening on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0);
    let c = client();
    let (status, _, body) = send(&c, "GET", &format!("http://{addr}/stats"), empty()).await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["name"], "bin-pod");
    assert_eq!(v["served"], 0);
}

#[tokio::test]
async fn binary_name_defaults_to_address() {
    let (_child, line) = start(&["--listen", "127.0.0.1:0"]);
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(line, format!("mock-model {addr} listening on {addr}"));
    let c = client();
    let (_, _, body) = send(&c, "GET", &format!("http://{addr}/stats"), empty()).await;
    assert_eq!(json(&body)["name"], addr.as_str());
}
