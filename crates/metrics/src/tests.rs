use super::*;

#[test]
fn two_registries_count_apart_and_render_help() {
    let (a, b) = (Registry::new(), Registry::new());
    let d = [Describe {
        name: "t_total",
        kind: Kind::Counter,
        unit: None,
        help: "Things counted.",
    }];
    a.describe(&d);
    b.describe(&d);
    a.counter("t_total", &[("k", "v")]).increment(3);
    b.counter("t_total", &[("k", "v")]).increment(1);
    // The same series registered twice is one series.
    a.counter("t_total", &[("k", "v")]).increment(1);
    let (ra, rb) = (a.render(), b.render());
    assert!(ra.contains("t_total{k=\"v\"} 4"), "{ra}");
    assert!(rb.contains("t_total{k=\"v\"} 1"), "{rb}");
    assert!(
        ra.contains("# HELP t_total Things counted.\n# TYPE t_total counter\n"),
        "{ra}"
    );
}

#[test]
fn seconds_histograms_get_the_buckets() {
    let r = Registry::new();
    let h = r.histogram("t_seconds", &[("e", "x")]);
    h.record(0.002);
    h.record(0.0005);
    h.record(100.0);
    let t = r.render();
    assert!(t.contains("# TYPE t_seconds histogram\n"), "{t}");
    assert!(
        t.contains("t_seconds_bucket{e=\"x\",le=\"0.0005\"} 1\n"),
        "{t}"
    );
    assert!(
        t.contains("t_seconds_bucket{e=\"x\",le=\"0.0025\"} 2\n"),
        "{t}"
    );
    assert!(
        t.contains("t_seconds_bucket{e=\"x\",le=\"0.001\"} 1\n"),
        "{t}"
    );
    assert!(t.contains("t_seconds_bucket{e=\"x\",le=\"60\"} 2\n"), "{t}");
    assert!(
        t.contains("t_seconds_bucket{e=\"x\",le=\"+Inf\"} 3\n"),
        "{t}"
    );
    assert!(t.contains("t_seconds_sum{e=\"x\"} 100.0025\n"), "{t}");
    assert!(t.contains("t_seconds_count{e=\"x\"} 3\n"), "{t}");
}

#[test]
fn gauges_render_floats_and_labels_are_escaped() {
    let r = Registry::new();
    r.gauge("g", &[]).set(1.0);
    r.gauge("g", &[("v", "a\"b\\c\nd")]).set(f64::INFINITY);
    r.gauge("h", &[]).set(0.25);
    let t = r.render();
    assert!(
        t.contains("\ng 1\n") || t.starts_with("# TYPE g gauge\ng 1\n"),
        "{t}"
    );
    assert!(t.contains("g{v=\"a\\\"b\\\\c\\nd\"} +Inf\n"), "{t}");
    assert!(t.contains("h 0.25\n"), "{t}");
    // One TYPE line per family, families apart.
    assert_eq!(t.matches("# TYPE g gauge").count(), 1, "{t}");
}

#[test]
fn retired_series_leave_once_no_handle_holds_them() {
    let r = Registry::new();
    let kept = r.counter("c_total", &[("endpoint", "a"), ("deployment", "d")]);
    kept.increment(1);
    let held = r.counter("c_total", &[("endpoint", "gone"), ("deployment", "d")]);
    held.increment(2);
    r.histogram("h_seconds", &[("endpoint", "gone")])
        .record(0.1);
    r.gauge("g", &[("endpoint", "gone")]).set(3.0);
    assert_eq!(r.series_count(), 4);

    r.retire_where(|l| l.get("endpoint") == Some("gone"));
    // The dropped handles' series are gone at once; the held one stays while held.
    assert_eq!(r.series_count(), 2);
    let t = r.render();
    assert!(
        t.contains("c_total{endpoint=\"gone\",deployment=\"d\"} 2"),
        "{t}"
    );
    assert!(!t.contains("h_seconds"), "{t}");
    drop(held);
    let t = r.render();
    assert!(!t.contains("gone"), "{t}");
    assert!(
        t.contains("c_total{endpoint=\"a\",deployment=\"d\"} 1"),
        "{t}"
    );
    assert_eq!(r.series_count(), 1);
}

#[test]
fn a_retired_series_registered_again_is_live_again() {
    let r = Registry::new();
    let old = r.counter("c_total", &[("endpoint", "e")]);
    old.increment(5);
    r.retire_where(|l| l.get("endpoint") == Some("e"));
    // Registered again (the endpoint came back) while still held: live, with its value.
    let again = r.counter("c_total", &[("endpoint", "e")]);
    drop(old);
    r.run_upkeep();
    again.increment(1);
    assert!(r.render().contains("c_total{endpoint=\"e\"} 6"));
    // Not retired any more: dropping every handle keeps it.
    drop(again);
    r.run_upkeep();
    assert_eq!(r.series_count(), 1);
}

#[test]
fn many_endpoints_that_come_and_go_leave_nothing_behind() {
    let r = Registry::new();
    for i in 0..1000 {
        let name = format!("ep-{i}");
        let c = r.counter("c_total", &[("endpoint", &name), ("status", "200")]);
        c.increment(1);
        drop(c);
        r.retire_where(|l| l.get("endpoint") == Some(name.as_str()));
    }
    assert_eq!(r.series_count(), 0);
    assert_eq!(r.render(), "");
}
