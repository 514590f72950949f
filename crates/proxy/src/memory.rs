//! Giving freed memory back to the system after a wave of parked connections.
//!
//! A burst of keep-alive clients that then go quiet leaves hyper's buffers (~24 KiB a
//! connection) freed when the connections park (`conn.rs`), but glibc's allocator keeps freed
//! pages resident unless they are at the top of its heap: 10,000 such connections kept the RSS
//! at its peak (~320 MiB) while each then needed a few KiB. `malloc_trim(0)` returns the free
//! pages of every arena. It walks and locks each arena in turn, so it runs on a thread of its
//! own, only after [`WAVE`] parks, at most once every [`INTERVAL`], with one more pass after a
//! wave that went on meanwhile. Elsewhere than glibc it does nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Parks that start a trim.
const WAVE: usize = 256;
/// Least time between two trims.
const INTERVAL: Duration = Duration::from_secs(10);
/// Wait after a wave starts, so that one trim sees most of it.
const SETTLE: Duration = Duration::from_secs(1);

static PARKS: AtomicUsize = AtomicUsize::new(0);
static TRIMMING: AtomicBool = AtomicBool::new(false);

/// A connection parked (its buffers freed).
pub(crate) fn parked() {
    if PARKS.fetch_add(1, Ordering::Relaxed) + 1 < WAVE || TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("infergate-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(SETTLE);
                PARKS.store(0, Ordering::Relaxed);
                let released = trim();
                tracing::debug!(released, "freed memory of parked connections given back");
                std::thread::sleep(INTERVAL - SETTLE);
                if PARKS.load(Ordering::Relaxed) < WAVE {
                    break;
                }
            }
            TRIMMING.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        TRIMMING.store(false, Ordering::Release);
    }
}

/// `malloc_trim(0)`: whether glibc gave memory back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointer and touches only glibc's own free lists, under the
    // arenas' locks; any thread may call it at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators return free pages themselves (or have no such call).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
