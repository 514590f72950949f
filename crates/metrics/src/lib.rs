//! The metrics registry a server owns and hands to its parts: no process-global recorder, so two
//! servers in one process (as in the tests) each count their own.
//!
//! Handles ([`Counter`], [`Gauge`], [`Histogram`]) are registered once, where the thing they
//! count is created (a deployment, an endpoint, a listener), and then used without a lookup.
//! Every crate that records describes its metrics with [`Registry::describe`] from one table
//! ([`Describe`]), so `/metrics` has a `# HELP` line for each family.

use std::sync::Arc;

pub use metrics::{Counter, Gauge, Histogram, Unit};
use metrics::{Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Histogram buckets in seconds for every `_seconds` histogram: 0.5 ms to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// What kind of series a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (Prometheus histogram).
    Histogram,
}

/// One metric family's description: name, kind, unit and help text.
#[derive(Debug, Clone, Copy)]
pub struct Describe {
    /// The family name, Prometheus style (`infergate_..._total`, `..._seconds`).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The unit, when the name carries one (`_seconds`, `_bytes`).
    pub unit: Option<Unit>,
    /// The `# HELP` text: what is counted, and by which labels.
    pub help: &'static str,
}

impl Describe {
    /// A family without a unit in its name.
    pub const fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Describe {
            name,
            kind,
            unit: None,
            help,
        }
    }

    /// A `_seconds` histogram.
    pub const fn seconds(name: &'static str, help: &'static str) -> Self {
        Describe {
            name,
            kind: Kind::Histogram,
            unit: Some(Unit::Seconds),
            help,
        }
    }
}

/// A Prometheus registry: where handles are registered and what `/metrics` renders.
/// Cloning is cheap (an `Arc`); clones share their series.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

const TARGET: &str = "infergate";

fn metadata() -> Metadata<'static> {
    Metadata::new(TARGET, metrics::Level::INFO, Some(module_path!()))
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

impl Registry {
    /// An empty registry; `_seconds` histograms get [`SECONDS_BUCKETS`].
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("static bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        Registry {
            recorder: Arc::new(recorder),
            handle,
        }
    }

    /// Registers (or finds) the counter `name{labels}`.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &metadata())
    }

    /// Registers (or finds) the gauge `name{labels}`.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder
            .register_gauge(&key(name, labels), &metadata())
    }

    /// Registers (or finds) the histogram `name{labels}`.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &metadata())
    }

    /// Describes metric families (the `# HELP` and `# TYPE` lines).
    pub fn describe(&self, families: &[Describe]) {
        for d in families {
            let (name, unit, help) = (KeyName::from(d.name), d.unit, SharedString::from(d.help));
            match d.kind {
                Kind::Counter => self.recorder.describe_counter(name, unit, help),
                Kind::Gauge => self.recorder.describe_gauge(name, unit, help),
                Kind::Histogram => self.recorder.describe_histogram(name, unit, help),
            }
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Periodic housekeeping (histogram buckets are drained into their summaries); call every
    /// few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
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
        assert!(ra.contains("# HELP t_total Things counted."), "{ra}");
    }

    #[test]
    fn seconds_histograms_get_the_buckets() {
        let r = Registry::new();
        r.histogram("t_seconds", &[]).record(0.002);
        let t = r.render();
        assert!(t.contains("t_seconds_bucket{le=\"0.0025\"} 1"), "{t}");
        assert!(t.contains("t_seconds_bucket{le=\"0.001\"} 0"), "{t}");
    }
}
