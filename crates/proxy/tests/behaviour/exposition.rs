//! `/metrics` follows the Prometheus conventions: every family has `# HELP` and `# TYPE`, names
//! carry their unit (`_seconds`, `_bytes`) and counters end in `_total`, and no series has an
//! empty label value (a placeholder such as `endpoint=""`).

use std::collections::BTreeMap;

use crate::support::*;

/// The problems of a Prometheus text exposition, one line each.
fn convention_problems(text: &str) -> Vec<String> {
    let mut help = BTreeMap::new();
    let mut kind: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help.insert(name.to_string(), text.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap();
            kind.insert(name.to_string(), t.to_string());
        } else if !line.starts_with('#') {
            samples.push(line.to_string());
        }
    }
    let mut out = Vec::new();
    for (name, t) in &kind {
        if help.get(name).is_none_or(|h| h.trim().is_empty()) {
            out.push(format!("{name}: no HELP text"));
        }
        if t == "counter" && !name.ends_with("_total") {
            out.push(format!("{name}: a counter not named `_total`"));
        }
        if t != "counter" && name.ends_with("_total") {
            out.push(format!("{name}: a {t} named `_total`"));
        }
        for unit in ["_ms", "_millis", "_milliseconds", "_secs", "_kb", "_mb"] {
            if name.trim_end_matches("_total").ends_with(unit) {
                out.push(format!("{name}: not in base units (`_seconds`, `_bytes`)"));
            }
        }
    }
    for s in &samples {
        let name = s.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|x| name.strip_suffix(x).filter(|f| kind.contains_key(*f)))
            .unwrap_or(name);
        if !kind.contains_key(family) {
            out.push(format!("{name}: no TYPE line"));
        }
        if s.contains("=\"\"") {
            out.push(format!("empty label value: {s}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_checker_finds_what_it_looks_for() {
    let bad = "# TYPE a_total counter\na_total{endpoint=\"\"} 1\n# HELP b_ms x\n# TYPE b_ms histogram\nb_ms_count 1\nc 1\n";
    let p = convention_problems(bad);
    assert_eq!(p.len(), 4, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_has_help_and_type_and_no_empty_labels() {
    let pod = mock("p", 0).await;
    let r = Router::start(&insecure(&format!(
        "  - name: m\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    )))
    .await;
    // Traffic of every kind: served, unrouted (404), refused (405).
    assert_eq!(
        call(r.http(), post("/api/v1/endpoint/m/score", "{}"))
            .await
            .status,
        200
    );
    assert_eq!(
        call(r.http(), post("/api/v1/endpoint/none/score", "{}"))
            .await
            .status,
        404
    );
    let t = metrics_text(&r).await;
    assert!(t.contains("infergate_requests_total{"), "{t}");
    let problems = convention_problems(&t);
    assert!(problems.is_empty(), "{}\n---\n{t}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_export_families_follow_the_conventions() {
    let collector = infergate_testkit::otlp::FakeCollector::start().await;
    let pod = mock("p", 0).await;
    let mut yaml = insecure(&format!(
        "  - name: m\n    deployments: [{{name: d, pods: [\"{}\"]}}]",
        pod.addr()
    ));
    yaml.push_str(&format!(
        "tracing: {{otlp: {{endpoint: \"{}\", exportIntervalMs: 20}}}}\n",
        collector.url()
    ));
    let r = Router::start(&yaml).await;
    assert_eq!(
        call(r.http(), post("/api/v1/endpoint/m/score", "{}"))
            .await
            .status,
        200
    );
    collector
        .wait_for(std::time::Duration::from_secs(20), |s| !s.is_empty())
        .await;
    let t = metrics_text(&r).await;
    // Present from the start (0 until something is dropped), by reason.
    for series in [
        "infergate_otlp_spans_exported_total ",
        "infergate_otlp_spans_dropped_total{reason=\"queue_full\"} 0",
        "infergate_otlp_spans_dropped_total{reason=\"export_failed\"} 0",
    ] {
        assert!(t.contains(series), "{series}\n---\n{t}");
    }
    let problems = convention_problems(&t);
    assert!(problems.is_empty(), "{}\n---\n{t}", problems.join("\n"));
}
