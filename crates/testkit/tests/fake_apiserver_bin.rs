//! The `fake-apiserver` process (used by `deploy/observability/check.sh`): objects created
//! through its API are listed back, and SIGTERM stops it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 exchange with `Connection: close`; returns the status line and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.lines().next().unwrap_or_default().to_string();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, body.to_string())
}

fn wait_for(path: &Path) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(Instant::now() < end, "no kubeconfig written");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fake_apiserver_process_serves_posted_objects_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let text = wait_for(&kubeconfig);
    let addr = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: http://"))
        .expect("a server line")
        .to_string();

    let ie = r#"{"apiVersion": "infergate.io/v1", "kind": "InferenceEndpoint",
                 "metadata": {"name": "iris", "namespace": "ml"},
                 "spec": {"deployments": [{"name": "blue", "serviceName": "iris-blue"}]}}"#;
    let base = "/apis/infergate.io/v1/namespaces/ml/inferenceendpoints";
    let (status, _) = http(&addr, "POST", base, ie);
    assert!(status.contains(" 201 "), "{status}");
    let (status, body) = http(&addr, "GET", base, "");
    assert!(status.contains(" 200 "), "{status}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "iris", "{body}");

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let end = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            child.kill().unwrap();
            panic!("fake-apiserver did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
}
