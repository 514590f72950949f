//! Stream timers: `streamIdleTimeoutMs` (the longest gap between body frames, either direction)
//! and `maxStreamDurationMs` (the whole exchange), enforced whether or not the client reads.
//!
//! A client that stops reading stops hyper from polling the response body (HTTP/1.1: the write
//! buffer is full and hyper waits for the socket; HTTP/2: the stream waits for flow-control
//! window), so a timer kept in a body's `poll_frame` would never run. The timers live one level
//! up instead, in a [`Watchdog`] around the future that carries the exchange: the connection for
//! HTTP/1.1 (one exchange at a time) and each stream for HTTP/2 (hyper spawns every stream through
//! the connection's executor, [`WatchExecutor`]). When a timer fires the watchdog drops that
//! future: the client sees the connection close without the terminating chunk (HTTP/1.1) or the
//! stream reset (HTTP/2, `RST_STREAM`). Dropping the request runs the cancellation path
//! (`cancel.rs`): the slot stays taken until the pod is done (its answer read to the end and
//! discarded, or its connection closed at the request's deadline), then the request is logged
//! (`outcome`: the timer) and counted (`infergate_stream_timeouts_total`). An exchange still
//! waiting for its response head first gets one more turn, in which the request body fails with
//! the timer, so that a client whose upload stalled gets a 408 rather than a reset.
//!
//! The idle timer watches both sides: a client that stops sending or reading, and a pod that stops
//! reading the upload or stalls mid-answer. Which side the exchange was waiting on when it fired
//! ([`Side`]) is what the last body event says: a body poll that found nothing waits on the side
//! that sends it (the client's upload, the pod's answer), a frame handed on waits on the side that
//! must take it (hyper polls the body again only once that side has taken it). A pod that stalled
//! is treated as failing (its connection closed at once, the pod's health told); a pod that
//! stopped reading the upload before its answer started gets the client a 504.
//!
//! The request path tells the watchdog what happens (an exchange starts, a body frame moves, the
//! request body ends, the response starts, the exchange ends) through a thread-local cell that
//! holds the watchdog's state only while the watchdog polls its future: no allocation, atomic or
//! lock per request. Outside a watchdog (drain tasks, mirror copies) these calls do nothing. The
//! timer is re-armed lazily: progress only moves the deadline later, and the sleeping timer, when
//! it wakes before the new deadline, is set again; a long stream costs one timer wake-up per idle
//! period, not one per frame.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use infergate_config::ResolvedSettings;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// How long an answer made after a timer fired (a 408) may take to reach the client before the
/// connection or stream is closed anyway.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// A stream timer that ended an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTimer {
    /// `streamIdleTimeoutMs`: no body frame moved, either direction, for that long.
    Idle,
    /// `maxStreamDurationMs`: the exchange lasted that long.
    MaxDuration,
}

impl StreamTimer {
    /// The access log's `outcome` and the `timer` label of `infergate_stream_timeouts_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            StreamTimer::Idle => "stream_idle_timeout",
            StreamTimer::MaxDuration => "max_stream_duration",
        }
    }

    /// The setting that fired.
    pub fn key(self) -> &'static str {
        match self {
            StreamTimer::Idle => "streamIdleTimeoutMs",
            StreamTimer::MaxDuration => "maxStreamDurationMs",
        }
    }

    /// The setting's value in `s`.
    pub fn ms(self, s: &ResolvedSettings) -> u64 {
        match self {
            StreamTimer::Idle => s.stream_idle_timeout_ms,
            StreamTimer::MaxDuration => s.max_stream_duration_ms,
        }
    }

    pub(crate) fn code(self) -> u8 {
        self as u8 + 1
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(StreamTimer::Idle),
            2 => Some(StreamTimer::MaxDuration),
            _ => None,
        }
    }
}

/// The side of an exchange that a stream timer found it waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Side {
    /// The client: its upload stalled, or it stopped reading the answer.
    #[default]
    Client,
    /// The pod: it stopped reading the upload, or its answer stalled.
    Pod,
}

impl Side {
    /// The access log's `stalled` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Pod => "pod",
        }
    }
}

/// One exchange as its watchdog sees it.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    /// The client's body is still on its way to the pod.
    request_open: bool,
    /// The answer's body is on its way to the client.
    response_open: bool,
    /// `streamIdleTimeoutMs`, unless off.
    idle: Option<Duration>,
    /// The request's start + `maxStreamDurationMs`, unless off.
    end_at: Option<Instant>,
}

/// What the request path and the watchdog share: copied into the thread-local cell while the
/// watchdog polls its future, and back out after.
#[derive(Debug, Clone, Copy, Default)]
struct Shared {
    /// Bumped for every body frame moved, either direction (and when an exchange or a response
    /// starts); never reset, so the watchdog sees any change.
    progress: u32,
    /// The exchange under watch, if any.
    exchange: Option<Exchange>,
    /// The side the exchange waits on, as the last body event tells.
    waiting_on: Side,
    /// Set while the watchdog ends its future: which timer fired.
    fired: Option<StreamTimer>,
}

thread_local! {
    static CURRENT: Cell<Option<Shared>> = const { Cell::new(None) };
}

fn update(f: impl FnOnce(&mut Shared)) {
    let _ = CURRENT.try_with(|c| {
        if let Some(mut s) = c.get() {
            f(&mut s);
            c.set(Some(s));
        }
    });
}

/// An exchange with a pod starts (each attempt): its timers are those of `settings`;
/// `maxStreamDurationMs` counts from `start`, the request head. `request_body`: the client's
/// body is still to be sent.
pub(crate) fn begin(settings: &ResolvedSettings, start: Instant, request_body: bool) {
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    let exchange = Exchange {
        request_open: request_body,
        response_open: false,
        idle: ms(settings.stream_idle_timeout_ms),
        end_at: ms(settings.max_stream_duration_ms).map(|d| start + d),
    };
    update(|s| {
        s.progress = s.progress.wrapping_add(1);
        s.exchange = Some(exchange);
        s.waiting_on = Side::Client;
    });
}

/// A body frame moved (either direction) and was handed on: the exchange now waits on `to`,
/// the side that must take it.
pub(crate) fn progress(to: Side) {
    update(|s| {
        s.progress = s.progress.wrapping_add(1);
        s.waiting_on = to;
    });
}

/// A body was polled and had nothing: the exchange waits on `from`, the side that sends it.
pub(crate) fn waiting(from: Side) {
    update(|s| s.waiting_on = from);
}

/// The client's body has been sent whole: until the response starts, `requestTimeoutMs` alone
/// bounds the wait (the pod computes).
pub(crate) fn request_body_ended() {
    update(|s| {
        if let Some(e) = &mut s.exchange {
            e.request_open = false;
        }
    });
}

/// The pod's response head came; its body goes out from now on.
pub(crate) fn response_started() {
    update(|s| {
        s.progress = s.progress.wrapping_add(1);
        s.waiting_on = Side::Pod;
        if let Some(e) = &mut s.exchange {
            e.response_open = true;
        }
    });
}

/// The exchange is over (the answer ended, an error answer was made, or the request was handed
/// to a drain task).
pub(crate) fn end() {
    update(|s| s.exchange = None);
}

/// The timer that fired, while the watchdog ends (or gives a last turn to) its future.
pub(crate) fn fired() -> Option<StreamTimer> {
    CURRENT.try_with(|c| c.get()?.fired).ok().flatten()
}

/// The timer that fired and the side the exchange was waiting on (see [`fired`]).
pub(crate) fn fired_on() -> Option<(StreamTimer, Side)> {
    CURRENT
        .try_with(|c| c.get().and_then(|s| Some((s.fired?, s.waiting_on))))
        .ok()
        .flatten()
}

/// Runs `f` with `shared` in the thread-local cell, then takes it back (also if `f` panics).
fn enter<R>(shared: &mut Shared, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Shared>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = CURRENT.try_with(|c| c.set(self.0));
        }
    }
    let Ok(prev) = CURRENT.try_with(|c| c.replace(Some(*shared))) else {
        return f();
    };
    let restore = Restore(prev);
    let r = f();
    if let Ok(Some(s)) = CURRENT.try_with(Cell::get) {
        *shared = s;
    }
    drop(restore);
    r
}

/// The watchdog's own bookkeeping (outside the pinned parts).
#[derive(Debug)]
struct Clock {
    shared: Shared,
    /// The progress count last seen, and when it was seen to change.
    seen: u32,
    idle_from: Instant,
    /// The deadline the sleep is set to, while it has not elapsed.
    armed: Option<Instant>,
    /// After an answer was made to a timed-out exchange: when to close anyway.
    closing: Option<Instant>,
}

impl Clock {
    /// The next deadline and the timer it belongs to; none while no exchange is watched.
    fn deadline(&mut self, now: Instant) -> Option<(Instant, StreamTimer)> {
        if let Some(c) = self.closing {
            return Some((c, self.shared.fired.unwrap_or(StreamTimer::Idle)));
        }
        let e = self.shared.exchange?;
        if self.shared.progress != self.seen {
            self.seen = self.shared.progress;
            self.idle_from = now;
        }
        let idle = e
            .idle
            .filter(|_| e.request_open || e.response_open)
            .map(|d| (self.idle_from + d, StreamTimer::Idle));
        let end = e.end_at.map(|t| (t, StreamTimer::MaxDuration));
        match (idle, end) {
            (Some(i), Some(m)) => Some(if m.0 <= i.0 { m } else { i }),
            (i, m) => i.or(m),
        }
    }
}

pin_project! {
    /// A connection's or stream's future under the stream timers (see the module's doc). Its
    /// output is `None` when a timer ended it.
    pub(crate) struct Watchdog<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Sleep,
        clock: Clock,
    }
}

impl<F> Watchdog<F> {
    pub(crate) fn new(inner: F) -> Self {
        let now = Instant::now();
        Watchdog {
            inner: Some(inner),
            sleep: tokio::time::sleep_until(now),
            clock: Clock {
                shared: Shared::default(),
                seen: 0,
                idle_from: now,
                armed: None,
                closing: None,
            },
        }
    }
}

impl<F: Future> Future for Watchdog<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut me = self.project();
        let Some(inner) = me.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(out) = enter(&mut me.clock.shared, || inner.poll(cx)) {
            return Poll::Ready(Some(out));
        }
        loop {
            let now = Instant::now();
            let Some((at, timer)) = me.clock.deadline(now) else {
                return Poll::Pending;
            };
            if at <= now {
                me.clock.shared.fired = Some(timer);
                let waiting_for_head = me.clock.closing.is_none()
                    && me.clock.shared.exchange.is_some_and(|e| !e.response_open);
                if waiting_for_head {
                    // One more turn: the request body fails with the timer, and the request is
                    // answered (408) if the pod's connection lets the failure through at once.
                    let inner = me.inner.as_mut().as_pin_mut().expect("checked above");
                    if let Poll::Ready(out) = enter(&mut me.clock.shared, || inner.poll(cx)) {
                        return Poll::Ready(Some(out));
                    }
                    if me.clock.shared.exchange.is_none() {
                        me.clock.closing = Some(now + ANSWER_GRACE);
                        continue;
                    }
                }
                // Dropped with the timer visible, so the request's drops record it.
                let mut inner = me.inner;
                enter(&mut me.clock.shared, || inner.set(None));
                return Poll::Ready(None);
            }
            if me.clock.armed.is_none_or(|a| a > at) {
                me.sleep.as_mut().reset(at);
                me.clock.armed = Some(at);
            }
            ready!(me.sleep.as_mut().poll(cx));
            me.clock.armed = None;
        }
    }
}

/// The HTTP/2 connections' executor: every stream hyper spawns runs under a [`Watchdog`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WatchExecutor;

impl<F> hyper::rt::Executor<F> for WatchExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Watchdog::new(fut));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use infergate_config::Defaults;
    use parking_lot::Mutex;

    use super::*;

    fn settings(idle_ms: u64, max_ms: u64) -> ResolvedSettings {
        Defaults {
            stream_idle_timeout_ms: idle_ms,
            max_stream_duration_ms: max_ms,
            ..Defaults::default()
        }
    }

    type DroppedWith = Arc<Mutex<Option<Option<StreamTimer>>>>;

    /// A future standing for a stream: it starts an exchange (request body open) on its first
    /// poll, then does what `step` says on each poll, and records on drop the timer that was
    /// firing, if any.
    struct Stream<S> {
        started: bool,
        settings: ResolvedSettings,
        step: S,
        dropped_with: DroppedWith,
    }

    impl<S: FnMut(&mut Context<'_>) -> Poll<()> + Unpin> Future for Stream<S> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if !self.started {
                self.started = true;
                begin(&self.settings, Instant::now(), true);
            }
            (self.step)(cx)
        }
    }

    impl<S> Drop for Stream<S> {
        fn drop(&mut self) {
            *self.dropped_with.lock() = Some(fired());
        }
    }

    fn stream<S>(settings: ResolvedSettings, step: S) -> (Stream<S>, DroppedWith) {
        let d = Arc::new(Mutex::new(None));
        let s = Stream {
            started: false,
            settings,
            step,
            dropped_with: d.clone(),
        };
        (s, d)
    }

    /// A step that runs `f` once when `after` has passed since the first poll.
    fn at(after: Duration, mut f: impl FnMut() + Unpin) -> impl FnMut(&mut Context<'_>) -> bool {
        let mut sleep: Option<Pin<Box<Sleep>>> = None;
        let mut done = false;
        move |cx| {
            let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
            if !done && s.as_mut().poll(cx).is_ready() {
                f();
                done = true;
            }
            done
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_exchange_ends_after_the_idle_timeout_and_its_drops_see_the_timer() {
        // Never progresses after starting: a client that stopped sending or reading.
        let (s, dropped) = stream(settings(1_000, 0), |_: &mut Context<'_>| Poll::Pending);
        let t0 = Instant::now();
        assert!(Watchdog::new(s).await.is_none(), "ended by the timer");
        assert_eq!(t0.elapsed(), Duration::from_millis(1_000));
        assert_eq!(*dropped.lock(), Some(Some(StreamTimer::Idle)));
        assert_eq!(fired(), None, "the cell is empty outside the watchdog");
    }

    #[tokio::test(start_paused = true)]
    async fn the_side_waited_on_is_what_the_last_body_event_says() {
        // (last event, side seen when the timer fires)
        let cases: [(fn(), Side); 4] = [
            // The upload was polled and had nothing: the client stopped sending.
            (|| waiting(Side::Client), Side::Client),
            // An upload frame was handed on and never asked for again: the pod stopped reading.
            (|| progress(Side::Pod), Side::Pod),
            // The answer was polled and had nothing: the pod stalled.
            (|| waiting(Side::Pod), Side::Pod),
            // An answer frame was handed on: the client stopped reading.
            (|| progress(Side::Client), Side::Client),
        ];
        for (event, want) in cases {
            let seen = Arc::new(Mutex::new(None));
            let s2 = seen.clone();
            let mut done = false;
            let (s, _) = stream(settings(1_000, 0), move |_: &mut Context<'_>| {
                if !done {
                    done = true;
                    event();
                }
                if let Some(f) = fired_on() {
                    *s2.lock() = Some(f);
                }
                Poll::Pending
            });
            assert!(Watchdog::new(s).await.is_none());
            assert_eq!(*seen.lock(), Some((StreamTimer::Idle, want)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_an_exchange_alive_until_the_max_duration() {
        // A frame every 500 ms (under the 1 s idle timeout), forever.
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let (s, dropped) = stream(settings(1_000, 3_200), move |cx: &mut Context<'_>| {
            while tick.poll_tick(cx).is_ready() {
                progress(Side::Client);
            }
            Poll::Pending
        });
        let t0 = Instant::now();
        assert!(Watchdog::new(s).await.is_none());
        assert_eq!(t0.elapsed(), Duration::from_millis(3_200));
        assert_eq!(*dropped.lock(), Some(Some(StreamTimer::MaxDuration)));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_response_head_is_not_idle_time() {
        // The request body is sent at once, and no head comes: `requestTimeoutMs` bounds that
        // wait, not the idle timer.
        let (s, dropped) = stream(settings(1_000, 0), |_: &mut Context<'_>| {
            request_body_ended();
            Poll::Pending
        });
        let out = tokio::time::timeout(Duration::from_secs(5), Watchdog::new(s)).await;
        assert!(out.is_err(), "still running after 5 s without a head");
        assert_eq!(*dropped.lock(), Some(None), "dropped by the test, no timer");

        // The head comes after 3 s, then the response body stalls: idle from the head on.
        let mut head = at(Duration::from_secs(3), response_started);
        let (s, dropped) = stream(settings(1_000, 0), move |cx: &mut Context<'_>| {
            if !head(cx) {
                request_body_ended();
            }
            Poll::Pending
        });
        let t0 = Instant::now();
        assert!(Watchdog::new(s).await.is_none());
        assert_eq!(t0.elapsed(), Duration::from_millis(4_000));
        assert_eq!(*dropped.lock(), Some(Some(StreamTimer::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_exchange_is_not_watched_and_zero_turns_the_timers_off() {
        let (s, dropped) = stream(settings(1_000, 2_000), |_: &mut Context<'_>| {
            end();
            Poll::Pending
        });
        let out = tokio::time::timeout(Duration::from_secs(10), Watchdog::new(s)).await;
        assert!(out.is_err());
        assert_eq!(*dropped.lock(), Some(None));

        let (s, _) = stream(settings(0, 0), |_: &mut Context<'_>| Poll::Pending);
        let out = tokio::time::timeout(Duration::from_secs(10), Watchdog::new(s)).await;
        assert!(out.is_err(), "no timer: never ended");
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_waiting_for_its_head_gets_one_more_turn_to_answer() {
        // The last turn sees the timer and answers (the exchange ends); the answer then never
        // finishes going out, and is closed after the grace.
        let answered = Arc::new(AtomicBool::new(false));
        let a = answered.clone();
        let (s, dropped) = stream(settings(1_000, 0), move |_: &mut Context<'_>| {
            if fired().is_some() && !a.swap(true, Ordering::SeqCst) {
                end();
            }
            Poll::Pending
        });
        let t0 = Instant::now();
        assert!(Watchdog::new(s).await.is_none());
        assert!(answered.load(Ordering::SeqCst));
        assert_eq!(t0.elapsed(), Duration::from_millis(1_000) + ANSWER_GRACE);
        assert_eq!(*dropped.lock(), Some(Some(StreamTimer::Idle)));

        // An answer that goes out in time ends the future normally.
        let (s, _) = stream(settings(1_000, 0), |_: &mut Context<'_>| match fired() {
            Some(_) => Poll::Ready(()),
            None => Poll::Pending,
        });
        assert_eq!(Watchdog::new(s).await, Some(()));
    }
}
