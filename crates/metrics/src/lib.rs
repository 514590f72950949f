//! The metrics registry a server owns and hands to its parts: no process-global recorder, so two
//! servers in one process (as in the tests) each count their own.
//!
//! Handles ([`Counter`], [`Gauge`], [`Histogram`]) are registered once, where the thing they
//! count is created (a deployment, an endpoint, a listener), and then used without a lookup.
//! Every crate that records describes its metrics with [`Registry::describe`] from one table
//! ([`Describe`]), so `/metrics` has a `# HELP` line for each family.
//!
//! Series can be retired ([`Registry::retire_where`]): the series of an endpoint that is no
//! longer published leave `/metrics` (and memory) once nothing counts into them any more, so
//! endpoints that come and go cannot grow the registry without bound.
//!
//! The registry is ours (a map of atomics and fixed-bucket histograms, rendered in the
//! Prometheus text format) rather than `metrics-exporter-prometheus`'s recorder, which offers no
//! way to remove one series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use metrics::{Counter, Gauge, Histogram, Unit};
use metrics::{CounterFn, GaugeFn, HistogramFn};
use parking_lot::RwLock;

mod log_limit;
mod task;
pub use log_limit::LogLimiter;
pub use task::{TaskEnd, panic_message, supervised};

/// Histogram buckets in seconds for every `_seconds` histogram: 0.5 ms to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of every other histogram (a count or a size): powers of 4 from 1 to ~10^6.
pub const DEFAULT_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];

/// What kind of series a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (Prometheus histogram).
    Histogram,
}

impl Kind {
    fn type_name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
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

/// A series' labels, in registration order.
type LabelPairs = Box<[(&'static str, Box<str>)]>;

/// A series: family kind and name, and its labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    kind: Kind,
    name: &'static str,
    labels: LabelPairs,
}

/// The labels of one series, as [`Registry::retire_where`] shows them.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a>(&'a [(&'static str, Box<str>)]);

impl<'a> Labels<'a> {
    /// The value of label `key`, if the series has it.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v)
    }
}

/// A fixed-bucket histogram: one atomic count per bucket, the sum as `f64` bits.
#[derive(Debug)]
struct Buckets {
    bounds: &'static [f64],
    /// `counts[i]`: values in (bounds[i-1], bounds[i]]; the last one: above every bound.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Buckets {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((f64::from_bits(s) + value).to_bits())
            });
    }
}

/// Where a series' value lives; handles share it.
#[derive(Debug, Clone)]
enum Store {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<Buckets>),
}

impl Store {
    /// Whether a handle outside the registry still holds this series.
    fn in_use(&self) -> bool {
        match self {
            Store::Counter(a) | Store::Gauge(a) => Arc::strong_count(a) > 1,
            Store::Histogram(h) => Arc::strong_count(h) > 1,
        }
    }
}

#[derive(Debug)]
struct Entry {
    store: Store,
    /// Retired: removed as soon as no handle holds it; registering it again revives it.
    retired: bool,
}

#[derive(Debug, Default)]
struct Series {
    map: BTreeMap<SeriesKey, Entry>,
    /// How many entries are retired (0: nothing to sweep).
    retired: usize,
}

impl Series {
    /// Removes the retired series no handle holds any more.
    fn sweep(&mut self) {
        if self.retired == 0 {
            return;
        }
        self.map.retain(|_, e| !e.retired || e.store.in_use());
        self.retired = self.map.values().filter(|e| e.retired).count();
    }
}

#[derive(Debug, Default)]
struct Inner {
    series: RwLock<Series>,
    help: RwLock<BTreeMap<&'static str, &'static str>>,
}

/// A Prometheus registry: where handles are registered and what `/metrics` renders.
/// Cloning is cheap (an `Arc`); clones share their series.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn key(kind: Kind, name: &'static str, labels: &[(&'static str, &str)]) -> SeriesKey {
    SeriesKey {
        kind,
        name,
        labels: labels.iter().map(|(k, v)| (*k, Box::from(*v))).collect(),
    }
}

impl Registry {
    /// An empty registry; `_seconds` histograms get [`SECONDS_BUCKETS`], others
    /// [`DEFAULT_BUCKETS`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The series `key`, registered now if it is new; a retired one is live again.
    fn store(&self, key: SeriesKey, make: impl FnOnce() -> Store) -> Store {
        {
            let s = self.inner.series.read();
            if let Some(e) = s.map.get(&key)
                && !e.retired
            {
                return e.store.clone();
            }
        }
        let mut guard = self.inner.series.write();
        let s = &mut *guard;
        let e = s.map.entry(key).or_insert_with(|| Entry {
            store: make(),
            retired: false,
        });
        if e.retired {
            e.retired = false;
            s.retired -= 1;
        }
        e.store.clone()
    }

    /// Registers (or finds) the counter `name{labels}`.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        match self.store(key(Kind::Counter, name, labels), || {
            Store::Counter(Arc::new(AtomicU64::new(0)))
        }) {
            Store::Counter(a) => Counter::from_arc(a),
            _ => unreachable!("a counter key holds a counter"),
        }
    }

    /// Registers (or finds) the gauge `name{labels}`.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        match self.store(key(Kind::Gauge, name, labels), || {
            Store::Gauge(Arc::new(AtomicU64::new(0f64.to_bits())))
        }) {
            Store::Gauge(a) => Gauge::from_arc(a),
            _ => unreachable!("a gauge key holds a gauge"),
        }
    }

    /// Registers (or finds) the histogram `name{labels}`.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        let bounds = if name.ends_with("_seconds") {
            SECONDS_BUCKETS
        } else {
            DEFAULT_BUCKETS
        };
        match self.store(key(Kind::Histogram, name, labels), || {
            Store::Histogram(Arc::new(Buckets::new(bounds)))
        }) {
            Store::Histogram(h) => Histogram::from_arc(h),
            _ => unreachable!("a histogram key holds a histogram"),
        }
    }

    /// Describes metric families (the `# HELP` lines; the first description of a name wins).
    pub fn describe(&self, families: &[Describe]) {
        let mut help = self.inner.help.write();
        for d in families {
            help.entry(d.name).or_insert(d.help);
        }
    }

    /// Retires every series whose labels `retire` picks (e.g. those of an endpoint no longer
    /// published): each leaves the registry, and `/metrics`, as soon as no handle to it is held
    /// (at once, or at a later [`Registry::run_upkeep`] or [`Registry::render`]). Registering a
    /// retired series again before then makes it live again, with its value.
    pub fn retire_where(&self, retire: impl Fn(Labels<'_>) -> bool) {
        let mut s = self.inner.series.write();
        let mut marked = 0;
        for (k, e) in s.map.iter_mut() {
            if !e.retired && retire(Labels(&k.labels)) {
                e.retired = true;
                marked += 1;
            }
        }
        s.retired += marked;
        s.sweep();
    }

    /// Number of series held (live and retired but still in use).
    pub fn series_count(&self) -> usize {
        self.inner.series.read().map.len()
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.run_upkeep();
        let series = self.inner.series.read();
        let help = self.inner.help.read();
        let mut out = String::with_capacity(series.map.len() * 96);
        let mut family: Option<(Kind, &str)> = None;
        for (k, e) in &series.map {
            if family != Some((k.kind, k.name)) {
                if family.is_some() {
                    out.push('\n');
                }
                family = Some((k.kind, k.name));
                if let Some(h) = help.get(k.name) {
                    let _ = writeln!(out, "# HELP {} {}", k.name, escape(h, false));
                }
                let _ = writeln!(out, "# TYPE {} {}", k.name, k.kind.type_name());
            }
            match &e.store {
                Store::Counter(a) => {
                    sample(&mut out, k.name, "", &k.labels, None);
                    let _ = writeln!(out, " {}", a.load(Ordering::Relaxed));
                }
                Store::Gauge(a) => {
                    sample(&mut out, k.name, "", &k.labels, None);
                    let _ = writeln!(out, " {}", F(f64::from_bits(a.load(Ordering::Relaxed))));
                }
                Store::Histogram(h) => {
                    let mut total = 0u64;
                    for (i, c) in h.counts.iter().enumerate() {
                        total += c.load(Ordering::Relaxed);
                        let le = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                        sample(&mut out, k.name, "_bucket", &k.labels, Some(le));
                        let _ = writeln!(out, " {total}");
                    }
                    sample(&mut out, k.name, "_sum", &k.labels, None);
                    let sum = f64::from_bits(h.sum.load(Ordering::Relaxed));
                    let _ = writeln!(out, " {}", F(sum));
                    sample(&mut out, k.name, "_count", &k.labels, None);
                    let _ = writeln!(out, " {total}");
                }
            }
        }
        if family.is_some() {
            out.push('\n');
        }
        out
    }

    /// Periodic housekeeping: removes retired series nothing holds any more. Call every few
    /// seconds ([`Registry::render`] does it too).
    pub fn run_upkeep(&self) {
        if self.inner.series.read().retired > 0 {
            self.inner.series.write().sweep();
        }
    }
}

/// `name{labels}` (with `le` for a histogram bucket), without the value.
fn sample(out: &mut String, name: &str, suffix: &str, labels: &LabelPairs, le: Option<f64>) {
    out.push_str(name);
    out.push_str(suffix);
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v, true));
    }
    if let Some(le) = le {
        if !labels.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "le=\"{}\"", F(le));
    }
    out.push('}');
}

/// A float as the exposition format writes it (`+Inf`, `-Inf`, `NaN`, else Rust's shortest form).
struct F(f64);

impl std::fmt::Display for F {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// Escapes a label value (`\`, `"`, newline) or a help text (`\`, newline).
fn escape(s: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '\n', '"']) {
        return s.into();
    }
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '"' if quote => o.push_str("\\\""),
            c => o.push(c),
        }
    }
    o.into()
}

// `metrics` implements `CounterFn` / `GaugeFn` for `AtomicU64` (the gauge as `f64` bits); these
// assertions keep that assumption visible.
const _: fn() = || {
    fn counter<T: CounterFn>() {}
    fn gauge<T: GaugeFn>() {}
    counter::<AtomicU64>();
    gauge::<AtomicU64>();
};

#[cfg(test)]
mod tests;
