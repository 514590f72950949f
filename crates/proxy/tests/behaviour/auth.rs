//! Endpoint authentication over real sockets: keys, rotation by publishing specs, tokens,
//! `none`, swagger, the 401 shape and metrics (the binary's logs: the e2e tests of `infergate`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use infergate_auth::{AuthMode, AuthPolicy, issue_token, issue_token_at, issue_token_with};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_refuse_missing_wrong_scheme_and_wrong_key_and_accept_both_keys() {
    let pod = mock("p", 0).await;
    let r = Router::start(&cfg(&keyed("auth-keys", &pod.addr().to_string(), ""))).await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let invalid = "Bearer error=\"invalid_token\"";
    let refused = [
        (None, "Bearer", "missing"),
        (
            Some(format!("Basic {PRIMARY}")),
            "Bearer error=\"invalid_request\"",
            "bad_scheme",
        ),
        (
            Some(PRIMARY.to_string()),
            "Bearer error=\"invalid_request\"",
            "bad_scheme",
        ),
        (Some("Bearer wrong-key".to_string()), invalid, "invalid_key"),
        (Some(format!("Bearer {PRIMARY}x")), invalid, "invalid_key"),
        (
            Some(format!("Bearer {}", &PRIMARY[1..])),
            invalid,
            "invalid_key",
        ),
    ];
    for (h, www, _) in &refused {
        let a = c.call(score("auth-keys", h.as_deref())).await;
        assert_401(&a, www);
        let j = a.json();
        let msg = j["error"]["message"].as_str().unwrap();
        assert!(
            !msg.contains(PRIMARY) && !msg.contains("wrong-key"),
            "{msg}"
        );
    }
    assert_eq!(pod.stats().served, 0, "no refused request reached the pod");

    for k in [PRIMARY, SECONDARY] {
        let a = c
            .call(score("auth-keys", Some(&format!("Bearer {k}"))))
            .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.header("www-authenticate"), "");
    }
    // the scheme is case-insensitive
    let a = c
        .call(score("auth-keys", Some(&format!("bearer {SECONDARY}"))))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(pod.stats().served, 3);

    let t = metrics_text(&r).await;
    for (reason, n) in [("missing", 1.0), ("bad_scheme", 2.0), ("invalid_key", 3.0)] {
        assert_eq!(failures(&t, "auth-keys", reason), n, "{reason}:\n{t}");
    }
    assert!(
        !t.contains(PRIMARY) && !t.contains(SECONDARY) && !t.contains("wrong-key"),
        "a key in the metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_never_sees_the_routers_key() {
    let pod = mock("p", 0).await;
    let r = Router::start(&cfg(&format!(
        "  - name: e\n    auth: {{primaryKey: \"{PRIMARY}\"}}\n    deployments: [{{name: d, pods: [\"{}\"], scoringPath: /echo}}]\n",
        pod.addr()
    )))
    .await;
    let a = call(r.http(), score("e", Some(&format!("Bearer {PRIMARY}")))).await;
    assert_eq!(a.status, 200);
    let up = &a.json()["headers"];
    assert!(up.get("authorization").is_none(), "forwarded: {up}");
    assert!(
        !a.body
            .windows(PRIMARY.len())
            .any(|w| w == PRIMARY.as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_keys_by_publishing_specs_takes_effect_on_the_next_request() {
    let pod = mock("p", 0).await;
    let yaml = cfg(&keyed("rot", &pod.addr().to_string(), ""));
    let r = Router::start(&yaml).await;
    // One kept-alive connection throughout: rotation does not wait for new connections.
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let status = async |c: &mut Client, key: &str| {
        c.call(score("rot", Some(&format!("Bearer {key}"))))
            .await
            .status
            .as_u16()
    };
    assert_eq!(status(&mut c, PRIMARY).await, 200);
    assert_eq!(status(&mut c, SECONDARY).await, 200);

    // What a Secret watch does: new Secret data -> policy -> publish the endpoint's new spec.
    let publish = |primary: &str, secondary: &str| {
        let cfg = infergate_config::Config::from_yaml(&yaml, "<test>").unwrap();
        let mut specs = infergate_proxy::specs_from_config(&cfg);
        let data: BTreeMap<String, Vec<u8>> = [
            ("primaryKey".to_string(), primary.as_bytes().to_vec()),
            ("secondaryKey".to_string(), secondary.as_bytes().to_vec()),
        ]
        .into();
        specs[0].auth = AuthPolicy::from_secret_data(AuthMode::Key, &data).unwrap();
        r.router.publish_specs(&specs);
    };

    // 1. replace the secondary
    let new_secondary = "sk-e2e-ROTATED-9d9d9d9d";
    publish(PRIMARY, new_secondary);
    assert_eq!(
        status(&mut c, SECONDARY).await,
        401,
        "old secondary refused at once"
    );
    assert_eq!(
        status(&mut c, new_secondary).await,
        200,
        "new secondary accepted at once"
    );
    assert_eq!(status(&mut c, PRIMARY).await, 200, "primary still works");

    // 2. clients moved to the new secondary: replace the primary
    let new_primary = "pk-e2e-ROTATED-1a1a1a1a";
    publish(new_primary, new_secondary);
    assert_eq!(
        status(&mut c, PRIMARY).await,
        401,
        "old primary refused at once"
    );
    assert_eq!(status(&mut c, new_primary).await, 200);
    assert_eq!(status(&mut c, new_secondary).await, 200);

    // a fresh connection sees the same
    let a = call(r.http(), score("rot", Some(&format!("Bearer {PRIMARY}")))).await;
    assert_eq!(a.status, 401);

    // a request in flight across a rotation finishes: its check was made at its start
    let slow = mock("slow", 800).await;
    let slow_yaml = cfg(&keyed("rot", &slow.addr().to_string(), ""));
    let cfg_slow = infergate_config::Config::from_yaml(&slow_yaml, "<test>").unwrap();
    r.router
        .publish_specs(&infergate_proxy::specs_from_config(&cfg_slow));
    let http = r.http();
    let inflight =
        tokio::spawn(
            async move { call(http, score("rot", Some(&format!("Bearer {PRIMARY}")))).await },
        );
    assert!(eventually(Duration::from_secs(5), async || slow.stats().in_flight == 1).await);
    let mut specs = infergate_proxy::specs_from_config(&cfg_slow);
    specs[0].auth = AuthPolicy::keys(Some(b"only-this-one-0123"), None).unwrap();
    r.router.publish_specs(&specs);
    assert_eq!(inflight.await.unwrap().status, 200);
    assert_eq!(status(&mut c, PRIMARY).await, 401);
    assert_eq!(status(&mut c, "only-this-one-0123").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expired_for_another_endpoint_tampered_or_malformed_are_refused() {
    let pod = mock("p", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let key = b"e2e-signing-key-0123456789abcdef-0123456789";
    let key_file = dir.path().join("signing.key");
    std::fs::write(&key_file, key).unwrap();
    let r = Router::start(&cfg(&format!(
        "  - name: tok\n    auth: {{mode: token, signingKeyFile: \"{f}\"}}\n    deployments: [{{name: d, pods: [\"{p}\"]}}]\n\
         \x20 - name: tok2\n    auth: {{mode: token, signingKeyFile: \"{f}\"}}\n    deployments: [{{name: d, pods: [\"{p}\"]}}]\n",
        f = key_file.display(),
        p = pod.addr()
    )))
    .await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let bearer = |t: &str| format!("Bearer {t}");

    let good = issue_token("tok", Duration::from_secs(3600), key).unwrap();
    let now = SystemTime::now();
    let expired = issue_token_at(
        "tok",
        now - Duration::from_secs(7200),
        now - Duration::from_secs(1),
        key,
    )
    .unwrap();
    let for_tok2 = issue_token("tok2", Duration::from_secs(3600), key).unwrap();
    let tampered = {
        // the claims of `tok2`'s token under the signature of `tok`'s
        let g: Vec<&str> = good.split('.').collect();
        let o: Vec<&str> = for_tok2.split('.').collect();
        format!("{}.{}.{}", g[0], o[1], g[2])
    };
    let other_key = issue_token("tok", Duration::from_secs(3600), &[9u8; 40]).unwrap();

    let invalid = "Bearer error=\"invalid_token\"";
    for (t, reason) in [
        (&expired, "expired"),
        (&for_tok2, "wrong_audience"),
        (&tampered, "bad_signature"),
        (&other_key, "bad_signature"),
        (&"not-a-token".to_string(), "malformed"),
        (&PRIMARY.to_string(), "malformed"),
    ] {
        let a = c.call(score("tok", Some(&bearer(t)))).await;
        assert_401(&a, invalid);
        assert!(
            !String::from_utf8_lossy(&a.body).contains(t.as_str()),
            "{reason}: the token was echoed"
        );
    }
    assert_401(&c.call(score("tok", None)).await, "Bearer");
    assert_eq!(pod.stats().served, 0, "no refused request reached the pod");

    assert_eq!(c.call(score("tok", Some(&bearer(&good)))).await.status, 200);
    assert_eq!(
        c.call(score("tok2", Some(&bearer(&for_tok2)))).await.status,
        200
    );
    assert_eq!(pod.stats().served, 2);

    let t = metrics_text(&r).await;
    for (reason, n) in [
        ("expired", 1.0),
        ("wrong_audience", 1.0),
        ("bad_signature", 2.0),
        ("malformed", 2.0),
        ("missing", 1.0),
    ] {
        assert_eq!(failures(&t, "tok", reason), n, "{reason}:\n{t}");
    }
    assert!(!t.contains(&good[..20]), "a token in the metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_none_serves_everyone_and_passes_the_header_only_when_opted_in() {
    let pod = mock("p", 0).await;
    let r = Router::start(&cfg(&format!(
        "  - name: open\n    auth: {{mode: none}}\n    deployments: [{{name: d, pods: [\"{p}\"], scoringPath: /echo}}]\n\
         \x20 - name: own\n    auth: {{mode: none}}\n    passAuthorization: true\n    deployments: [{{name: d, pods: [\"{p}\"], scoringPath: /echo}}]\n",
        p = pod.addr()
    )))
    .await;
    assert_eq!(call(r.http(), score("open", None)).await.status, 200);
    let a = call(r.http(), score("open", Some("Bearer model-own-token"))).await;
    assert_eq!(a.status, 200);
    assert!(
        a.json()["headers"].get("authorization").is_none(),
        "removed in mode none too: {}",
        a.json()
    );
    let a = call(r.http(), score("own", Some("Bearer model-own-token"))).await;
    assert_eq!(
        a.json()["headers"]["authorization"],
        "Bearer model-own-token",
        "passAuthorization: the model may do its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_not_forwarded_to_the_pod() {
    // Every mode, scoring and swagger alike, removes the caller's credentials before the pod
    // (a pod's logs or a compromised model never see them), unless the endpoint opts in.
    let pod = mock("p", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let key = b"e2e-signing-key-0123456789abcdef-0123456789";
    let key_file = dir.path().join("signing.key");
    std::fs::write(&key_file, key).unwrap();
    let p = pod.addr();
    let echo = format!(
        "deployments: [{{name: d, pods: [\"{p}\"], scoringPath: /echo, swaggerPath: /echo}}]"
    );
    let r = Router::start(&cfg(&format!(
        "  - name: k\n    auth: {{primaryKey: \"{PRIMARY}\"}}\n    {echo}\n\
         \x20 - name: t\n    auth: {{mode: token, signingKeyFile: \"{f}\"}}\n    {echo}\n\
         \x20 - name: n\n    auth: {{mode: none}}\n    {echo}\n\
         \x20 - name: kp\n    auth: {{primaryKey: \"{PRIMARY}\"}}\n    passAuthorization: true\n    {echo}\n",
        f = key_file.display(),
    )))
    .await;
    let token = issue_token("t", Duration::from_secs(600), key).unwrap();
    let cases = [
        ("k", format!("Bearer {PRIMARY}")),
        ("t", format!("Bearer {token}")),
        ("n", "Bearer anything-at-all".to_string()),
    ];
    for (ep, auth) in &cases {
        for path in ["score", "swagger.json"] {
            let method = if path == "score" { "POST" } else { "GET" };
            let q = with_header(
                req(method, &format!("/api/v1/endpoint/{ep}/{path}"), empty()),
                auth,
            );
            let a = call(r.http(), q).await;
            assert_eq!(a.status, 200, "{ep} {path}");
            let up = &a.json()["headers"];
            assert!(up.get("authorization").is_none(), "{ep} {path}: {up}");
        }
    }
    let a = call(r.http(), score("kp", Some(&format!("Bearer {PRIMARY}")))).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json()["headers"]["authorization"],
        format!("Bearer {PRIMARY}"),
        "passAuthorization: true forwards it (after the router's own check)"
    );
    let a = call(r.http(), score("kp", Some("Bearer wrong-key-0123456789"))).await;
    assert_401(&a, "Bearer error=\"invalid_token\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_mode_without_keys_refuses_every_request() {
    let pod = mock("p", 0).await;
    let r = Router::start(&cfg(&format!(
        "  - name: nokeys\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
        pod.addr()
    )))
    .await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    for h in [None, Some("Bearer anything"), Some("Bearer ")] {
        assert_401(&c.call(score("nokeys", h)).await, "Bearer");
    }
    // swagger stays open by default, even here: it holds no secret
    let a = c
        .call(req("GET", "/api/v1/endpoint/nokeys/swagger.json", empty()))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(pod.stats().served, 0);
    let t = metrics_text(&r).await;
    assert_eq!(failures(&t, "nokeys", "no_keys_configured"), 3.0, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_is_open_by_default_and_closed_with_swagger_auth() {
    let pod = mock("p", 0).await;
    let p = pod.addr().to_string();
    let r = Router::start(&cfg(&format!(
        "{}{}",
        keyed("sw-open", &p, ""),
        keyed("sw-closed", &p, "    swaggerAuth: true\n")
    )))
    .await;
    let mut c = Client::plain(r.http(), Proto::H1).await;
    let swagger = |ep: &str, h: Option<&str>| {
        let q = req(
            "GET",
            &format!("/api/v1/service/{ep}/swagger.json"),
            empty(),
        );
        match h {
            Some(v) => with_header(q, v),
            None => q,
        }
    };
    let a = c.call(swagger("sw-open", None)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["openapi"], "3.0.1");
    assert_401(&c.call(score("sw-open", None)).await, "Bearer");

    assert_401(&c.call(swagger("sw-closed", None)).await, "Bearer");
    assert_401(
        &c.call(swagger("sw-closed", Some("Bearer nope"))).await,
        "Bearer error=\"invalid_token\"",
    );
    let a = c
        .call(swagger("sw-closed", Some(&format!("Bearer {SECONDARY}"))))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["openapi"], "3.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoint_is_still_404_not_401() {
    let pod = mock("p", 0).await;
    let r = Router::start(&cfg(&keyed("known", &pod.addr().to_string(), ""))).await;
    call(r.http(), score("unknown", None))
        .await
        .assert_error(404, "EndpointNotFound");
}

/// A router with one token-mode endpoint `tok` (and `extra` top-level keys); its signing key.
async fn token_router(
    extra: &str,
) -> (
    Router,
    mock_model::MockHandle,
    tempfile::TempDir,
    &'static [u8],
) {
    let pod = mock("p", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let key: &'static [u8] = b"e2e-signing-key-0123456789abcdef-0123456789";
    let key_file = dir.path().join("signing.key");
    std::fs::write(&key_file, key).unwrap();
    let r = Router::start(&format!(
        "{extra}{}",
        cfg(&format!(
            "  - name: tok\n    auth: {{mode: token, signingKeyFile: \"{}\"}}\n    deployments: [{{name: d, pods: [\"{}\"]}}]\n",
            key_file.display(),
            pod.addr()
        ))
    ))
    .await;
    (r, pod, dir, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_not_yet_valid_is_refused() {
    let (r, pod, _dir, key) = token_router("").await;
    let now = SystemTime::now();
    let later = issue_token_with(
        "tok",
        now,
        Some(now + Duration::from_secs(600)),
        now + Duration::from_secs(1200),
        key,
    )
    .unwrap();
    let a = call(r.http(), score("tok", Some(&format!("Bearer {later}")))).await;
    assert_401(&a, "Bearer error=\"invalid_token\"");
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid yet"),
        "{}",
        a.json()
    );
    let started = issue_token_with(
        "tok",
        now,
        Some(now - Duration::from_secs(5)),
        now + Duration::from_secs(600),
        key,
    )
    .unwrap();
    let a = call(r.http(), score("tok", Some(&format!("Bearer {started}")))).await;
    assert_eq!(a.status, 200);
    assert_eq!(pod.stats().served, 1);
    let t = metrics_text(&r).await;
    assert_eq!(failures(&t, "tok", "not_yet_valid"), 1.0, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_with_too_long_lifetime_is_refused() {
    // A year-long token is a standing key if stolen: refused above maxTokenLifetimeSeconds.
    let (r, pod, _dir, key) = token_router("").await;
    let year = issue_token("tok", Duration::from_secs(365 * 86_400), key).unwrap();
    let a = call(r.http(), score("tok", Some(&format!("Bearer {year}")))).await;
    assert_401(&a, "Bearer error=\"invalid_token\"");
    let hour = issue_token("tok", Duration::from_secs(3600), key).unwrap();
    assert_eq!(
        call(r.http(), score("tok", Some(&format!("Bearer {hour}"))))
            .await
            .status,
        200
    );
    assert_eq!(
        failures(&metrics_text(&r).await, "tok", "lifetime_too_long"),
        1.0
    );

    // A tighter cap from the configuration.
    let (r, _pod2, _dir2, key) = token_router("maxTokenLifetimeSeconds: 600\n").await;
    let a = call(r.http(), score("tok", Some(&format!("Bearer {hour}")))).await;
    assert_401(&a, "Bearer error=\"invalid_token\"");
    let short = issue_token("tok", Duration::from_secs(300), key).unwrap();
    let a = call(r.http(), score("tok", Some(&format!("Bearer {short}")))).await;
    assert_eq!(a.status, 200);
    assert_eq!(pod.stats().served, 1);
}
