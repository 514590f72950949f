//! Background tasks that must not end quietly: [`supervised`] runs one and says how it ended.

use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::task::Poll;

/// How a background task that should run for the life of the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// It returned (its input ended, say).
    Returned,
    /// It panicked, with this message.
    Panicked(String),
}

impl std::fmt::Display for TaskEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskEnd::Returned => f.write_str("the task ended"),
            TaskEnd::Panicked(m) => write!(f, "the task panicked: {m}"),
        }
    }
}

/// Runs `fut` to its end and says how it ended: returned, or panicked (the panic is caught, so
/// the caller can log it and act, e.g. turn `/readyz` to 503). Dropped before its end (the task
/// was aborted), it says nothing: stopping on purpose is not a failure.
pub async fn supervised(fut: impl Future<Output = ()>) -> TaskEnd {
    let mut fut = pin!(fut);
    poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(TaskEnd::Returned),
            Err(p) => Poll::Ready(TaskEnd::Panicked(panic_message(p.as_ref()))),
        },
    )
    .await
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Waker};

    use super::*;

    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_task_that_panics_after_an_await_is_reported_with_its_message() {
        let go = Arc::new(AtomicBool::new(false));
        let g = go.clone();
        let task = poll_fn(move |_| {
            if g.load(Ordering::SeqCst) {
                panic!("clock loop broke");
            }
            Poll::<()>::Pending
        });
        let mut s = pin!(supervised(task));
        assert!(poll_once(s.as_mut()).is_pending());
        go.store(true, Ordering::SeqCst);
        let end = match poll_once(s.as_mut()) {
            Poll::Ready(e) => e,
            Poll::Pending => panic!("the panic was not reported"),
        };
        assert_eq!(end, TaskEnd::Panicked("clock loop broke".into()));
        assert_eq!(end.to_string(), "the task panicked: clock loop broke");
    }

    #[test]
    fn a_task_that_returns_is_reported_and_a_formatted_panic_keeps_its_text() {
        assert_eq!(
            poll_once(pin!(supervised(async {}))),
            Poll::Ready(TaskEnd::Returned)
        );
        let n = 7;
        let end = poll_once(pin!(supervised(async move { panic!("peer {n} gone") })));
        assert_eq!(end, Poll::Ready(TaskEnd::Panicked("peer 7 gone".into())));
    }
}
