//! The scaling decision, pure: an [`Observation`] of a deployment and the time in, a
//! [`Decision`] (desired replicas, why, whether in panic mode) out. No I/O, no clock: `now` is a
//! monotonic [`Duration`] since any origin the caller picks.
//!
//! The model is azureml-fe's, with Knative's stabilisation:
//!
//! - **Load desire**: utilization = (busy + queued) / (current x slots per pod), and the desire
//!   is `ceil(current x utilization / target)`, computed as
//!   `ceil((busy + queued) / (slots x target / 100))` (exact integer arithmetic) so that
//!   `current = 0` works. It is clamped to `[minInstances, maxInstances]` and never below the
//!   replicas the requests in flight need, `ceil(busy / slots)` (itself capped by
//!   `maxInstances`). This clamped value is the decision's *want*.
//! - **Scale-up** applies at once, but one decision adds at most
//!   `max(current x` [`MAX_STEP_FACTOR`]`, current +` [`MAX_STEP_ADD`]`)` replicas in total
//!   (so from zero it may go to 4 at once). `minInstances` and the in-flight floor beat the cap.
//! - **Scale-down** happens only when every decision of the last `scaleDownDelaySeconds`
//!   (inclusive window `[now - delay, now]`, and the decider has been deciding for at least that
//!   long) wanted fewer than `current`; it then goes to the highest want of that window
//!   (Knative's stable window), so a steady but noisy load does not flap.
//! - **Scale from zero**: `current = 0` with busy or queued requests goes to at least 1 at once.
//! - **Panic** (Knative's idea): when the queued requests exceed what the ready pods can serve
//!   within the queue wait bound (`ready x slots x maxQueueWait / service time`) and a new pod
//!   takes at least that wait to start, the decision jumps to the uncapped want (still at most
//!   `maxInstances`, never below `current`), and scale-down is held off for
//!   `scaleDownDelaySeconds` after the last panicking decision.
//! - A `current` outside `[minInstances, maxInstances]` (settings changed, or someone scaled by
//!   hand) is brought back inside at once: the bounds beat the delay and the step cap.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use infergate_config::ScaleSettings;

/// Scale-up step cap, factor: one decision goes to at most `current x MAX_STEP_FACTOR` replicas
/// (or `current + MAX_STEP_ADD`, whichever is more).
pub const MAX_STEP_FACTOR: u32 = 2;

/// Scale-up step cap, addend: one decision goes to at most `current + MAX_STEP_ADD` replicas (or
/// `current x MAX_STEP_FACTOR`, whichever is more); from zero that is 4 at once.
pub const MAX_STEP_ADD: u32 = 4;

/// The most replicas one decision may ask for starting from `current` (outside panic mode).
pub fn step_cap(current: u32) -> u32 {
    current
        .saturating_mul(MAX_STEP_FACTOR)
        .max(current.saturating_add(MAX_STEP_ADD))
}

/// What the decision sees of one deployment; the caller fills it from the workload and the
/// router's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// Replicas the workload has now (its scale subresource's `spec.replicas`).
    pub current: u32,
    /// Ready pods the router routes to.
    pub ready: u32,
    /// Slots taken, fleet-wide (requests being served).
    pub busy: u32,
    /// Requests waiting for a slot, fleet-wide.
    pub queued: u32,
    /// `maxConcurrentRequestsPerInstance`; 0 is read as 1.
    pub slots_per_pod: u32,
    /// `maxQueueWaitMs` of the deployment: how long a queued request may wait.
    pub max_queue_wait: Duration,
    /// Mean time a request holds a slot (an EWMA), if known. Unknown means no panic while some
    /// pods are ready (their capacity cannot be estimated).
    pub service_time: Option<Duration>,
    /// Estimate of how long a new pod takes to become ready.
    pub startup_time: Duration,
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Replicas the workload should have; equal to `current` when nothing is to change.
    pub desired: u32,
    /// Why, for logs and events (its `Display` is one short line).
    pub reason: Reason,
    /// Whether this decision is in panic mode (the panic condition holds now). Scale-down stays
    /// held off for `scaleDownDelaySeconds` after the last such decision.
    pub panic: bool,
}

/// Why a [`Decision`] is what it is. `Display` gives one short human line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Load above target: scaled up at once (possibly step-capped, possibly to `maxInstances`).
    ScaleUp {
        /// (busy + queued) / (current x slots), in percent (rounded).
        utilization_pct: u32,
        /// `targetUtilizationPercentage`.
        target_pct: u32,
        /// Replicas before.
        from: u32,
        /// Replicas after.
        to: u32,
        /// The step cap limited `to` (the load wanted more).
        capped: bool,
        /// `maxInstances` limited `to` (the load wanted more).
        at_max: bool,
    },
    /// Every decision of the last `window_secs` wanted fewer: scaled down to that window's
    /// highest want.
    ScaleDown {
        /// The scale-down delay the wants were below `from` for, in seconds.
        window_secs: u64,
        /// Replicas before.
        from: u32,
        /// Replicas after.
        to: u32,
    },
    /// The load wants fewer replicas, but not yet for the whole delay (or a panic was too
    /// recent): holding.
    ScaleDownWait {
        /// How far into the delay, in seconds.
        waited_secs: u64,
        /// `scaleDownDelaySeconds`.
        delay_secs: u64,
    },
    /// `minInstances` decides: the load wants fewer (`from == min`) or `current` was below it.
    MinInstances {
        /// `minInstances`.
        min: u32,
        /// Replicas before.
        from: u32,
    },
    /// `maxInstances` decides: the load wants more (`from == max`) or `current` was above it.
    MaxInstances {
        /// `maxInstances`.
        max: u32,
        /// Replicas before.
        from: u32,
    },
    /// The requests in flight need this many replicas (more than the step cap allows).
    InFlight {
        /// `ceil(busy / slots)`.
        need: u32,
        /// Replicas before.
        from: u32,
    },
    /// Panic mode: the queued requests would time out before new pods are ready; jumped to the
    /// uncapped want.
    Panic {
        /// Requests queued.
        queued: u32,
        /// Replicas before.
        from: u32,
        /// Replicas after.
        to: u32,
    },
    /// `current` was 0 and requests are waiting.
    ScaleFromZero {
        /// Busy + queued requests.
        waiting: u32,
        /// Replicas after.
        to: u32,
    },
    /// The load wants what there is.
    Steady,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::ScaleUp {
                utilization_pct,
                target_pct,
                from,
                to,
                capped,
                at_max,
            } => {
                write!(
                    f,
                    "utilization {utilization_pct}% > target {target_pct}%: {from} -> {to}"
                )?;
                if capped {
                    write!(f, " (step capped at {to})")?;
                }
                if at_max {
                    write!(f, " (at maxInstances)")?;
                }
                Ok(())
            }
            Reason::ScaleDown {
                window_secs,
                from,
                to,
            } => write!(f, "below target for {window_secs} s: {from} -> {to}"),
            Reason::ScaleDownWait {
                waited_secs,
                delay_secs,
            } => write!(f, "scale-down wait: {waited_secs} s of {delay_secs} s"),
            Reason::MinInstances { min, from } if from == min => {
                write!(f, "at minInstances ({min})")
            }
            Reason::MinInstances { min, from } => {
                write!(f, "up to minInstances: {from} -> {min}")
            }
            Reason::MaxInstances { max, from } if from == max => {
                write!(f, "at maxInstances ({max})")
            }
            Reason::MaxInstances { max, from } => {
                write!(f, "down to maxInstances: {from} -> {max}")
            }
            Reason::InFlight { need, from } => {
                write!(f, "in-flight requests need {need}: {from} -> {need}")
            }
            Reason::Panic { queued, from, to } => {
                write!(
                    f,
                    "panic: {queued} queued would time out before new pods are ready"
                )?;
                if from != to {
                    write!(f, ": {from} -> {to}")?;
                }
                Ok(())
            }
            Reason::ScaleFromZero { waiting, to } => {
                let s = if waiting == 1 { "" } else { "s" };
                write!(
                    f,
                    "scale from zero: {waiting} request{s} waiting, 0 -> {to}"
                )
            }
            Reason::Steady => f.write_str("steady"),
        }
    }
}

/// The decision with its state: the settings, and the wants of the last
/// `scaleDownDelaySeconds` (a monotonic max-deque, so the window's highest want is O(1)).
#[derive(Debug, Clone)]
pub struct Decider {
    settings: ScaleSettings,
    /// (time, want), wants strictly decreasing from front to back; entries older than
    /// `now - delay` are dropped.
    window: VecDeque<(Duration, u32)>,
    /// Since when the wants have been recorded without a gap longer than the delay.
    since: Option<Duration>,
    /// The previous decision's time.
    last: Option<Duration>,
    /// The last decision in panic mode.
    last_panic: Option<Duration>,
}

impl Decider {
    /// A decider with no history: the first scale-down comes `scaleDownDelaySeconds` after the
    /// first decision at the earliest.
    pub fn new(settings: &ScaleSettings) -> Self {
        Decider {
            settings: settings.clone(),
            window: VecDeque::new(),
            since: None,
            last: None,
            last_panic: None,
        }
    }

    /// Replaces the settings (a configuration reload), keeping the window and the panic hold.
    pub fn set_settings(&mut self, settings: &ScaleSettings) {
        self.settings = settings.clone();
    }

    /// The settings in use.
    pub fn settings(&self) -> &ScaleSettings {
        &self.settings
    }

    /// One decision at `now` (monotonic; calls should come every `pollingIntervalSeconds`, but
    /// need not be evenly spaced). A gap longer than `scaleDownDelaySeconds` since the previous
    /// call restarts the scale-down window.
    pub fn decide(&mut self, obs: &Observation, now: Duration) -> Decision {
        let s = &self.settings;
        let min = s.min_instances;
        let max = s.max_instances.max(min);
        let target = s.target_utilization_percentage.clamp(1, 100);
        let delay = Duration::from_secs(u64::from(s.scale_down_delay_seconds));
        let slots = obs.slots_per_pod.max(1);
        let current = obs.current;
        let load = u64::from(obs.busy) + u64::from(obs.queued);

        // The load's desire, clamped, and the in-flight floor.
        let raw = load_desire(load, slots, target);
        let floor = obs.busy.div_ceil(slots).min(max);
        let want = raw.clamp(min, max).max(floor);
        let panic = in_panic(obs, slots);

        // History: a gap longer than the window restarts it.
        if self
            .last
            .is_none_or(|last| now.saturating_sub(last) > delay)
        {
            self.window.clear();
            self.since = Some(now);
        }
        self.last = Some(now);
        if panic {
            self.last_panic = Some(now);
        }

        let (desired, reason) = if current > max {
            (max, Reason::MaxInstances { max, from: current })
        } else if panic {
            let to = current.max(want).min(max);
            let reason = Reason::Panic {
                queued: obs.queued,
                from: current,
                to,
            };
            (to, reason)
        } else if want > current {
            let capped = want.min(step_cap(current));
            let to = capped.max(floor).max(min);
            let reason = if current == 0 && load > 0 {
                Reason::ScaleFromZero {
                    waiting: u32::try_from(load).unwrap_or(u32::MAX),
                    to,
                }
            } else if current == 0 || (to == min && min > capped.max(floor)) {
                Reason::MinInstances { min, from: current }
            } else if to == floor && floor > capped {
                Reason::InFlight {
                    need: floor,
                    from: current,
                }
            } else {
                Reason::ScaleUp {
                    utilization_pct: utilization_pct(load, current, slots),
                    target_pct: target,
                    from: current,
                    to,
                    capped: to < want,
                    at_max: to == max && raw > max,
                }
            };
            (to, reason)
        } else if want < current {
            // Recorded before the check: this decision is part of its own window.
            self.record(now, want, delay);
            let allowed_at = self.scale_down_allowed_at(current, delay);
            if allowed_at <= now {
                let highest = self.window.front().map_or(want, |&(_, w)| w);
                let to = highest.clamp(min, max).max(floor);
                debug_assert!(to < current);
                let reason = Reason::ScaleDown {
                    window_secs: delay.as_secs(),
                    from: current,
                    to,
                };
                return Decision {
                    desired: to,
                    reason,
                    panic,
                };
            }
            let left = allowed_at - now;
            let reason = Reason::ScaleDownWait {
                waited_secs: delay.saturating_sub(left).as_secs(),
                delay_secs: delay.as_secs(),
            };
            return Decision {
                desired: current,
                reason,
                panic,
            };
        } else if raw > max {
            (current, Reason::MaxInstances { max, from: current })
        } else if raw < min {
            (current, Reason::MinInstances { min, from: current })
        } else {
            (current, Reason::Steady)
        };
        // In panic the want recorded is what was decided (at least `current`), so the window
        // keeps scale-down off after it too.
        self.record(now, if panic { desired.max(want) } else { want }, delay);
        Decision {
            desired,
            reason,
            panic,
        }
    }

    /// Adds `want` at `now` to the max-deque and drops what fell out of `[now - delay, now]`.
    fn record(&mut self, now: Duration, want: u32, delay: Duration) {
        while self.window.back().is_some_and(|&(_, w)| w <= want) {
            self.window.pop_back();
        }
        self.window.push_back((now, want));
        while self
            .window
            .front()
            .is_some_and(|&(t, _)| t.saturating_add(delay) < now)
        {
            self.window.pop_front();
        }
    }

    /// When a scale-down below `current` may happen: the window must be covered by decisions,
    /// hold no want of `current` or more, and no panic may be within the delay.
    fn scale_down_allowed_at(&self, current: u32, delay: Duration) -> Duration {
        let mut at = self.since.unwrap_or_default().saturating_add(delay);
        if let Some(p) = self.last_panic {
            at = at.max(p.saturating_add(delay));
        }
        // The wants >= current are a prefix of the decreasing deque; its last one is the latest
        // such want (a later, higher one would have evicted it).
        if let Some(&(t, _)) = self
            .window
            .iter()
            .take_while(|&&(_, w)| w >= current)
            .last()
        {
            at = at.max(
                t.saturating_add(delay)
                    .saturating_add(Duration::from_nanos(1)),
            );
        }
        at
    }
}

/// `ceil(load / (slots x target / 100))`, exactly, saturated to `u32`.
fn load_desire(load: u64, slots: u32, target_pct: u32) -> u32 {
    let d = (load * 100).div_ceil(u64::from(slots) * u64::from(target_pct));
    u32::try_from(d).unwrap_or(u32::MAX)
}

/// (busy + queued) / (current x slots) in percent, rounded; 0 replicas read as 1.
fn utilization_pct(load: u64, current: u32, slots: u32) -> u32 {
    let cap = u64::from(current.max(1)) * u64::from(slots);
    u32::try_from((load * 100 + cap / 2) / cap).unwrap_or(u32::MAX)
}

/// The panic condition: the queued requests exceed what the ready pods serve within the queue
/// wait bound, and a new pod would not be ready within that wait either.
fn in_panic(obs: &Observation, slots: u32) -> bool {
    if obs.queued == 0 || obs.startup_time < obs.max_queue_wait {
        return false;
    }
    if obs.ready == 0 {
        return true;
    }
    let Some(service) = obs.service_time else {
        return false;
    };
    if service.is_zero() {
        return false;
    }
    let servable = f64::from(obs.ready) * f64::from(slots) * obs.max_queue_wait.as_secs_f64()
        / service.as_secs_f64();
    f64::from(obs.queued) > servable
}

/// The replicas a load of `rps` requests per second, each holding a slot for `service_time`,
/// needs at `target_pct` utilization of `slots` slots per pod:
/// `ceil(rps x service_time / (target / 100 x slots))` (Little's law; for benchmarks).
/// A relative tolerance of 1e-9 absorbs floating-point noise on exact multiples; a non-finite
/// or negative rate gives 0; `slots` 0 is read as 1 and `target_pct` is clamped to 1-100.
pub fn ideal_replicas(rps: f64, service_time: Duration, slots: u32, target_pct: u32) -> u32 {
    let target = f64::from(target_pct.clamp(1, 100)) / 100.0;
    let x = rps * service_time.as_secs_f64() / (target * f64::from(slots.max(1)));
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    let n = (x * (1.0 - 1e-9)).ceil();
    if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        n as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(min: u32, max: u32, target: u32, delay: u32) -> ScaleSettings {
        ScaleSettings {
            min_instances: min,
            max_instances: max,
            target_utilization_percentage: target,
            scale_down_delay_seconds: delay,
            ..ScaleSettings::default()
        }
    }

    fn obs(current: u32, busy: u32, queued: u32, slots: u32) -> Observation {
        Observation {
            current,
            ready: current,
            busy,
            queued,
            slots_per_pod: slots,
            max_queue_wait: Duration::from_secs(30),
            service_time: None,
            startup_time: Duration::from_secs(20),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn scale_up_is_immediate() {
        let mut d = Decider::new(&settings(1, 10, 70, 60));
        // 12 / (4 x 0.7) = 4.3 -> 5.
        let r = d.decide(&obs(2, 8, 4, 4), secs(0));
        assert_eq!((r.desired, r.panic), (5, false));
        assert_eq!(
            r.reason.to_string(),
            "utilization 150% > target 70%: 2 -> 5"
        );
    }

    #[test]
    fn scale_up_step_is_capped() {
        let mut d = Decider::new(&settings(1, 100, 70, 60));
        // 30 / 0.7 = 43, capped at max(3 x 2, 3 + 4) = 7.
        let r = d.decide(&obs(3, 3, 27, 1), secs(0));
        assert_eq!(r.desired, 7);
        assert_eq!(
            r.reason.to_string(),
            "utilization 1000% > target 70%: 3 -> 7 (step capped at 7)"
        );
        let r = d.decide(&obs(7, 7, 23, 1), secs(1));
        assert_eq!(r.desired, 14);
        let r = d.decide(&obs(14, 14, 16, 1), secs(2));
        assert_eq!(r.desired, 28);
        let r = d.decide(&obs(28, 28, 2, 1), secs(3));
        assert_eq!(
            (r.desired, r.reason.to_string().contains("capped")),
            (43, false)
        );
        assert_eq!(step_cap(0), 4);
        assert_eq!(step_cap(10), 20);
    }

    #[test]
    fn scale_down_waits_for_the_delay_and_goes_to_the_windows_highest() {
        let mut d = Decider::new(&settings(1, 10, 100, 60));
        // current 6; want 4 at t = 10, 2 otherwise.
        for t in 0..60 {
            let busy = if t == 10 { 4 } else { 2 };
            let r = d.decide(&obs(6, busy, 0, 1), secs(t));
            assert_eq!(r.desired, 6, "t={t}");
            if t == 45 {
                assert_eq!(r.reason.to_string(), "scale-down wait: 45 s of 60 s");
            }
        }
        let r = d.decide(&obs(6, 2, 0, 1), secs(60));
        assert_eq!(r.desired, 4);
        assert_eq!(r.reason.to_string(), "below target for 60 s: 6 -> 4");
        // Now at 4: the want of 4 at t = 10 is in the window until t = 70.
        for t in 61..=70 {
            assert_eq!(d.decide(&obs(4, 2, 0, 1), secs(t)).desired, 4, "t={t}");
        }
        assert_eq!(d.decide(&obs(4, 2, 0, 1), secs(71)).desired, 2);
    }

    #[test]
    fn a_want_of_current_restarts_the_wait() {
        let mut d = Decider::new(&settings(1, 10, 100, 60));
        // The want of 6 at t = 30 is in the window [t - 60, t] up to t = 90 included.
        for t in 0..=90 {
            let busy = if t == 30 { 6 } else { 2 };
            let r = d.decide(&obs(6, busy, 0, 1), secs(t));
            assert_eq!(r.desired, 6, "t={t}");
        }
        assert_eq!(d.decide(&obs(6, 2, 0, 1), secs(91)).desired, 2);
    }

    #[test]
    fn zero_delay_scales_down_at_once() {
        let mut d = Decider::new(&settings(1, 10, 100, 0));
        let r = d.decide(&obs(6, 2, 0, 1), secs(0));
        assert_eq!(r.desired, 2);
    }

    #[test]
    fn a_gap_longer_than_the_delay_restarts_the_window() {
        let mut d = Decider::new(&settings(1, 10, 100, 60));
        assert_eq!(d.decide(&obs(6, 2, 0, 1), secs(0)).desired, 6);
        // Nothing for 10 minutes (e.g. leadership lost and regained): wait again.
        assert_eq!(d.decide(&obs(6, 2, 0, 1), secs(600)).desired, 6);
        assert_eq!(d.decide(&obs(6, 2, 0, 1), secs(659)).desired, 6);
        assert_eq!(d.decide(&obs(6, 2, 0, 1), secs(660)).desired, 2);
    }

    #[test]
    fn in_flight_requests_set_a_floor() {
        // More busy than the 2 pods hold (stale count, or pods bigger than thought): the cap
        // (6) does not apply below what the requests in flight need.
        let mut d = Decider::new(&settings(1, 50, 100, 60));
        let r = d.decide(&obs(2, 20, 0, 1), secs(0));
        assert_eq!(r.desired, 20);
        assert_eq!(r.reason.to_string(), "in-flight requests need 20: 2 -> 20");
        // ...but maxInstances still wins.
        let mut d = Decider::new(&settings(1, 10, 100, 60));
        assert_eq!(d.decide(&obs(2, 20, 0, 1), secs(0)).desired, 10);
        // Scale-down never goes below it.
        let mut d = Decider::new(&settings(1, 10, 100, 0));
        assert_eq!(d.decide(&obs(8, 5, 0, 2), secs(0)).desired, 3);
    }

    #[test]
    fn min_and_max_clamp() {
        let mut d = Decider::new(&settings(2, 10, 70, 60));
        let r = d.decide(&obs(2, 0, 0, 4), secs(0));
        assert_eq!(
            (r.desired, r.reason.to_string()),
            (2, "at minInstances (2)".into())
        );
        // Below min (settings changed): up at once, no delay.
        let r = d.decide(&obs(0, 0, 0, 4), secs(1));
        assert_eq!(
            (r.desired, r.reason.to_string()),
            (2, "up to minInstances: 0 -> 2".into())
        );
        // Min beats the step cap.
        let mut d = Decider::new(&settings(9, 10, 70, 60));
        assert_eq!(d.decide(&obs(1, 0, 0, 4), secs(0)).desired, 9);
        // Above max: down at once.
        let mut d = Decider::new(&settings(1, 10, 70, 60));
        let r = d.decide(&obs(12, 40, 0, 4), secs(0));
        assert_eq!(
            (r.desired, r.reason.to_string()),
            (10, "down to maxInstances: 12 -> 10".into())
        );
        // At max with more load: stays, says so.
        let r = d.decide(&obs(10, 40, 40, 4), secs(1));
        assert_eq!(
            (r.desired, r.reason.to_string()),
            (10, "at maxInstances (10)".into())
        );
        // Up to max: says so.
        let r = d.decide(&obs(8, 32, 20, 4), secs(2));
        assert_eq!(r.desired, 10);
        assert!(
            r.reason.to_string().ends_with("(at maxInstances)"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn scale_from_zero_and_to_zero() {
        let mut d = Decider::new(&settings(0, 10, 70, 60));
        let mut o = obs(0, 0, 2, 4);
        o.ready = 0;
        let r = d.decide(&o, secs(0));
        assert_eq!((r.desired, r.panic), (1, false));
        assert_eq!(
            r.reason.to_string(),
            "scale from zero: 2 requests waiting, 0 -> 1"
        );
        // Many waiting: up to the step cap from zero (4) at once.
        let mut o = obs(0, 0, 30, 1);
        o.ready = 0;
        assert_eq!(d.decide(&o, secs(1)).desired, 4);
        // Nothing waiting at 0: steady at 0.
        let r = d.decide(&obs(0, 0, 0, 1), secs(2));
        assert_eq!((r.desired, r.reason), (0, Reason::Steady));
        // Idle at 1 replica with minInstances 0: down to zero after the delay.
        let mut d = Decider::new(&settings(0, 10, 70, 60));
        for t in 0..60 {
            assert_eq!(d.decide(&obs(1, 0, 0, 1), secs(t)).desired, 1);
        }
        assert_eq!(d.decide(&obs(1, 0, 0, 1), secs(60)).desired, 0);
    }

    #[test]
    fn panic_jumps_uncapped_and_holds_scale_down() {
        let mut d = Decider::new(&settings(1, 10, 70, 60));
        // 2 ready x 4 slots x 10 s / 2 s = 40 servable; 60 queued; a pod takes 30 s.
        let mut o = obs(2, 8, 60, 4);
        o.max_queue_wait = secs(10);
        o.service_time = Some(secs(2));
        o.startup_time = secs(30);
        let r = d.decide(&o, secs(0));
        assert!(r.panic);
        // 68 / 2.8 = 25 -> maxInstances 10, not the step cap 6.
        assert_eq!(r.desired, 10);
        assert_eq!(
            r.reason.to_string(),
            "panic: 60 queued would time out before new pods are ready: 2 -> 10"
        );
        // Pods start quicker than the wait: no panic, capped step.
        let mut quick = o;
        quick.startup_time = secs(5);
        let mut d2 = Decider::new(&settings(1, 10, 70, 60));
        let r = d2.decide(&quick, secs(0));
        assert_eq!((r.desired, r.panic), (6, false));
        // Fewer queued than servable: no panic.
        let mut few = o;
        few.queued = 40;
        assert!(
            !Decider::new(&settings(1, 10, 70, 60))
                .decide(&few, secs(0))
                .panic
        );
        // Service time unknown with ready pods: no panic; with none ready: panic.
        let mut unknown = o;
        unknown.service_time = None;
        assert!(
            !Decider::new(&settings(1, 10, 70, 60))
                .decide(&unknown, secs(0))
                .panic
        );
        unknown.ready = 0;
        assert!(
            Decider::new(&settings(1, 10, 70, 60))
                .decide(&unknown, secs(0))
                .panic
        );

        // Panic lasts until t = 5, then the load is gone (delay 0 would drop at once, the
        // hold keeps it for 60 s after the last panic).
        let mut d = Decider::new(&settings(1, 10, 70, 60));
        for t in 0..=5 {
            let mut p = o;
            p.current = if t == 0 { 2 } else { 10 };
            assert!(d.decide(&p, secs(t)).panic);
        }
        for t in 6..=65 {
            let r = d.decide(&obs(10, 0, 0, 4), secs(t));
            assert_eq!((r.desired, r.panic), (10, false), "t={t}");
        }
        assert_eq!(d.decide(&obs(10, 0, 0, 4), secs(66)).desired, 1);
        // Panic never scales down, even with pods not ready yet.
        let mut d = Decider::new(&settings(1, 10, 70, 60));
        let mut p = o;
        p.current = 9;
        p.ready = 1;
        p.busy = 0;
        p.queued = 21; // > 1 x 4 x 10 / 2 = 20 servable; want ceil(21 / 2.8) = 8 < 9
        let r = d.decide(&p, secs(0));
        assert_eq!((r.desired, r.panic), (9, true));
    }

    /// xorshift64*: deterministic noise for the steady-load test.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Runs 300 one-second decisions on busy = 20 +- 3 (slots 4, target 70: wants 7-9),
    /// applying each decision; returns the number of changes.
    fn changes_under_steady_load(delay: u32) -> usize {
        let mut d = Decider::new(&settings(1, 20, 70, delay));
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let mut current = 9;
        let mut changes = 0;
        for t in 0..300 {
            let busy = 17 + (rng(&mut state) % 7) as u32;
            let r = d.decide(&obs(current, busy, 0, 4), secs(t));
            if r.desired != current {
                changes += 1;
                current = r.desired;
            }
        }
        changes
    }

    #[test]
    fn steady_noisy_load_does_not_flap() {
        assert_eq!(changes_under_steady_load(60), 0);
        // Without the window (azureml-fe's plain rule) the same load flaps.
        assert!(changes_under_steady_load(0) > 20);
    }

    #[test]
    fn set_settings_keeps_the_window() {
        let mut d = Decider::new(&settings(1, 10, 100, 60));
        for t in 0..30 {
            d.decide(&obs(6, 2, 0, 1), secs(t));
        }
        d.set_settings(&settings(1, 10, 100, 30));
        assert_eq!(d.settings().scale_down_delay_seconds, 30);
        assert_eq!(d.decide(&obs(6, 2, 0, 1), secs(30)).desired, 2);
    }

    #[test]
    fn ideal_replicas_is_littles_law() {
        // 100 rps x 0.2 s = 20 busy slots; / (0.7 x 4) = 7.1 -> 8.
        assert_eq!(ideal_replicas(100.0, Duration::from_millis(200), 4, 70), 8);
        // Exact multiples do not round up on float noise.
        assert_eq!(ideal_replicas(10.0, Duration::from_millis(70), 1, 70), 1);
        assert_eq!(ideal_replicas(30.0, Duration::from_millis(100), 1, 100), 3);
        assert_eq!(ideal_replicas(0.0, Duration::from_secs(1), 1, 70), 0);
        assert_eq!(ideal_replicas(f64::NAN, Duration::from_secs(1), 1, 70), 0);
        assert_eq!(ideal_replicas(1.0, Duration::from_secs(1), 0, 0), 100);
    }

    #[test]
    fn reasons_read_as_one_line() {
        let cases = [
            (
                Reason::ScaleUp {
                    utilization_pct: 140,
                    target_pct: 70,
                    from: 3,
                    to: 6,
                    capped: true,
                    at_max: false,
                },
                "utilization 140% > target 70%: 3 -> 6 (step capped at 6)",
            ),
            (
                Reason::ScaleDown {
                    window_secs: 60,
                    from: 6,
                    to: 4,
                },
                "below target for 60 s: 6 -> 4",
            ),
            (
                Reason::ScaleDownWait {
                    waited_secs: 45,
                    delay_secs: 60,
                },
                "scale-down wait: 45 s of 60 s",
            ),
            (
                Reason::MinInstances { min: 1, from: 1 },
                "at minInstances (1)",
            ),
            (
                Reason::InFlight { need: 3, from: 2 },
                "in-flight requests need 3: 2 -> 3",
            ),
            (
                Reason::Panic {
                    queued: 40,
                    from: 10,
                    to: 10,
                },
                "panic: 40 queued would time out before new pods are ready",
            ),
            (
                Reason::ScaleFromZero { waiting: 1, to: 1 },
                "scale from zero: 1 request waiting, 0 -> 1",
            ),
            (Reason::Steady, "steady"),
        ];
        for (reason, line) in cases {
            assert_eq!(reason.to_string(), line);
        }
    }

    fn arb_settings() -> impl Strategy<Value = ScaleSettings> {
        (0u32..6, 0u32..20, 1u32..=100, 0u32..15).prop_map(|(min, extra, target, delay)| {
            settings(min, (min + extra).max(1), target, delay)
        })
    }

    fn arb_obs() -> impl Strategy<Value = Observation> {
        (
            (0u32..40, 0u32..40, 0u32..120, 0u32..120, 0u32..6),
            (
                1u64..20_000,
                proptest::option::of(0u64..5_000),
                0u64..40_000,
            ),
        )
            .prop_map(
                |((current, ready, busy, queued, slots), (wait, service, startup))| Observation {
                    current,
                    ready,
                    busy,
                    queued,
                    slots_per_pod: slots,
                    max_queue_wait: Duration::from_millis(wait),
                    service_time: service.map(Duration::from_millis),
                    startup_time: Duration::from_millis(startup),
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// (1) Within [min, max], and not below the in-flight floor when that is within max.
        #[test]
        fn desired_is_within_bounds(
            s in arb_settings(),
            seq in proptest::collection::vec((arb_obs(), 0u64..5), 1..30),
        ) {
            let mut d = Decider::new(&s);
            let mut now = Duration::ZERO;
            for (o, step) in seq {
                now += secs(step);
                let r = d.decide(&o, now);
                prop_assert!(r.desired >= s.min_instances && r.desired <= s.max_instances,
                    "{o:?} -> {r:?}");
                let floor = o.busy.div_ceil(o.slots_per_pod.max(1));
                if floor <= s.max_instances {
                    prop_assert!(r.desired >= floor, "{o:?} -> {r:?}");
                }
            }
        }

        /// (2) More busy + queued never gives fewer replicas (fresh decider, same observation).
        #[test]
        fn monotone_in_load(s in arb_settings(), o in arb_obs(), more_busy in 0u32..60,
                            more_queued in 0u32..60) {
            let a = Decider::new(&s).decide(&o, secs(100));
            let mut heavier = o;
            heavier.busy += more_busy;
            heavier.queued += more_queued;
            let b = Decider::new(&s).decide(&heavier, secs(100));
            prop_assert!(b.desired >= a.desired, "{o:?} -> {a:?}; {heavier:?} -> {b:?}");
        }

        /// (3) No scale-down unless every decision of the last delay wanted fewer than current
        /// (and there were decisions over the whole delay). The caller applies each decision.
        #[test]
        fn no_scale_down_inside_the_delay(
            s in arb_settings(),
            start in 0u32..20,
            seq in proptest::collection::vec((0u32..80, 0u32..40, 1u64..4), 1..120),
            slots in 1u32..5,
            panicky in any::<bool>(),
        ) {
            let mut d = Decider::new(&s);
            let delay = secs(u64::from(s.scale_down_delay_seconds));
            let mut current = start.clamp(s.min_instances, s.max_instances);
            let mut now = Duration::ZERO;
            // (time, want) per decision; a panicking decision wants "infinitely many".
            let mut history: Vec<(Duration, u32)> = Vec::new();
            for (busy, queued, step) in seq {
                now += secs(step);
                let mut o = obs(current, busy, queued, slots);
                if panicky {
                    o.service_time = Some(secs(5));
                    o.max_queue_wait = secs(2);
                    o.startup_time = secs(10);
                }
                let r = d.decide(&o, now);
                let want = load_desire(u64::from(busy + queued), slots,
                                       s.target_utilization_percentage)
                    .clamp(s.min_instances, s.max_instances)
                    .max(busy.div_ceil(slots).min(s.max_instances));
                history.push((now, if r.panic { u32::MAX } else { want }));
                if r.desired < current {
                    let first = history[0].0;
                    prop_assert!(first + delay <= now, "down before a full window: {history:?}");
                    for &(t, w) in history.iter().filter(|&&(t, _)| t + delay >= now) {
                        prop_assert!(w < current,
                            "down at {now:?} from {current} but wanted {w} at {t:?}");
                        prop_assert!(w <= r.desired, "down below the window's highest");
                    }
                }
                current = r.desired;
            }
        }
    }
}
