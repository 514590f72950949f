//! Endpoint authentication through the real binary: no key or token in its logs or metrics, and
//! `infergate token issue`.

use std::time::{Duration, SystemTime};

use infergate_auth::{issue_token, issue_token_at};

use crate::runner::*;
use crate::support::*;

/// The real binary with wrong (and right) keys and tokens: its whole stdout (the JSON access log
/// and every other line), its stderr and its metrics never hold a key or token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_never_logs_a_key_or_token() {
    let pod = mock("logpod", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let signing = b"binary-signing-key-SIGNSECRET-0123456789abcdef";
    let key_file = write_file(
        dir.path(),
        "signing.key",
        std::str::from_utf8(signing).unwrap(),
    );
    let f = write_file(
        dir.path(),
        "infergate.yaml",
        &format!(
            "allowInsecureConnections: true\n\
             listen: {{https: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}\n\
             endpoints:\n{}\
             \x20 - name: t\n    auth: {{mode: token, signingKeyFile: \"{key_file}\"}}\n    deployments: [{{name: d, pods: [\"{p}\"]}}]\n\
             \x20 - name: forgotten\n    deployments: [{{name: d, pods: [\"{p}\"]}}]\n",
            keyed("k", &pod.addr().to_string(), ""),
            p = pod.addr()
        ),
    );
    let mut b = Bin::spawn(&["serve", "--config", &f]);
    let warn = b.wait_line(|l| l.contains("\"forgotten\"") && l.contains("WARN"));
    assert!(warn.contains("no key configured"), "{warn}");
    let http = b.listening("http");
    let admin = b.listening("admin");

    let wrong = [
        "WRONGKEY-aaaaaaaaaaaaaaaa",
        "WRONGKEY-bbbbbbbbbbbbbbbb",
        &PRIMARY[..PRIMARY.len() - 1],
    ];
    let expired = issue_token_at(
        "t",
        SystemTime::now() - Duration::from_secs(100),
        SystemTime::now() - Duration::from_secs(50),
        signing,
    )
    .unwrap();
    let good_token = issue_token("t", Duration::from_secs(600), signing).unwrap();
    let mut ids = Vec::new();
    for w in wrong {
        for v in [format!("Bearer {w}"), format!("Basic {w}"), w.to_string()] {
            let a = call(http, score("k", Some(&v))).await;
            assert_eq!(a.status, 401);
            ids.push(a.header("x-request-id").to_string());
        }
    }
    for (ep, v, want) in [
        ("k", format!("Bearer {PRIMARY}"), 200),
        ("k", format!("Bearer {SECONDARY}"), 200),
        ("t", format!("Bearer {expired}"), 401),
        ("t", format!("Bearer {good_token}"), 200),
        ("forgotten", format!("Bearer {PRIMARY}"), 401),
    ] {
        let a = call(http, score(ep, Some(&v))).await;
        assert_eq!(a.status, want, "{ep}");
        ids.push(a.header("x-request-id").to_string());
    }
    for id in &ids {
        let line = b.wait_line(|l| l.contains(id.as_str()));
        let j: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(j["target"], "infergate::access");
        if j["status"] == 401 {
            assert_eq!(j["outcome"], "Unauthorized", "{line}");
            assert!(
                ["k", "t", "forgotten"].contains(&j["endpoint"].as_str().unwrap()),
                "401 lines name the endpoint: {line}"
            );
        }
    }
    let metrics = String::from_utf8_lossy(&admin_get(admin, "/metrics").await.body).into_owned();
    for (ep, reason, n) in [
        ("k", "invalid_key", 3.0),
        ("k", "bad_scheme", 6.0),
        ("t", "expired", 1.0),
        ("forgotten", "no_keys_configured", 1.0),
    ] {
        assert_eq!(
            failures(&metrics, ep, reason),
            n,
            "{ep} {reason}: {metrics}"
        );
    }

    b.signal("TERM");
    let (stdout, stderr) = tokio::task::spawn_blocking(move || b.finish())
        .await
        .unwrap();
    assert!(stdout.contains("infergate::access"), "stdout was read");
    let secrets: Vec<String> = wrong
        .iter()
        .map(|s| s.to_string())
        .chain([PRIMARY, SECONDARY].map(String::from))
        .chain([expired, good_token])
        .chain([String::from_utf8(signing.to_vec()).unwrap()])
        .collect();
    for s in &secrets {
        for (what, text) in [
            ("stdout", &stdout),
            ("stderr", &stderr),
            ("metrics", &metrics),
        ] {
            assert!(!text.contains(s.as_str()), "{what} holds the secret {s:?}");
        }
        // nor a long fragment of one (tokens: the signature part)
        let tail = &s[s.len() - 16..];
        assert!(!stdout.contains(tail), "stdout holds a fragment of {s:?}");
    }
}

/// `infergate token issue` prints a token the router accepts for that endpoint only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issue_through_the_binary() {
    let pod = mock("p", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = write_file(dir.path(), "k", "issue-test-signing-key-0123456789abcdef\n");
    let (code, out, err) = run_to_exit(&[
        "token",
        "issue",
        "--endpoint",
        "issued",
        "--ttl",
        "1h",
        "--key-file",
        &key_file,
    ]);
    assert_eq!(code, Some(0), "{err}");
    let token = out.trim();
    assert_eq!(token.split('.').count(), 3, "{out}");
    assert_eq!(out.lines().count(), 1, "only the token on stdout: {out}");

    let r = Router::start(&cfg(&format!(
        "  - name: issued\n    auth: {{mode: token, signingKeyFile: \"{key_file}\"}}\n    deployments: [{{name: d, pods: [\"{p}\"]}}]\n\
         \x20 - name: elsewhere\n    auth: {{mode: token, signingKeyFile: \"{key_file}\"}}\n    deployments: [{{name: d, pods: [\"{p}\"]}}]\n",
        p = pod.addr()
    )))
    .await;
    let a = call(r.http(), score("issued", Some(&format!("Bearer {token}")))).await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = call(
        r.http(),
        score("elsewhere", Some(&format!("Bearer {token}"))),
    )
    .await;
    assert_401(&a, "Bearer error=\"invalid_token\"");

    // refusals: a short key, a bad ttl
    let short = write_file(dir.path(), "short", "too-short");
    let (code, _, err) = run_to_exit(&[
        "token",
        "issue",
        "--endpoint",
        "e",
        "--ttl",
        "1h",
        "--key-file",
        &short,
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--key-file") && err.contains("at least 32"),
        "{err}"
    );
    let (code, _, err) = run_to_exit(&[
        "token",
        "issue",
        "--endpoint",
        "e",
        "--ttl",
        "soon",
        "--key-file",
        &key_file,
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--ttl"), "{err}");
}
