//! Per-core connection workers (`--workers N`, N > 1): N threads, each running a
//! single-threaded tokio runtime. The accept loops (and everything that is not a client
//! connection: admin, discovery, the cluster, the autoscaler) run on the main runtime; each
//! accepted connection is handed to the worker with the fewest open connections and lives there
//! to its end, so a request's tasks, timers and sockets stay on one thread (no work stealing, no
//! atomics on every wake-up, as tokio's multi-threaded scheduler has). Slot, queue and EWMA
//! state is shared between workers through atomics and short locks, as before.
//!
//! One accept loop feeding the workers rather than one `SO_REUSEPORT` listener per worker:
//! the kernel spreads `SO_REUSEPORT` connections by a hash of the 4-tuple, blind to how many
//! each worker still holds, and long-lived inference connections (streams, keep-alive clients)
//! would pile up unevenly; the hand-over costs two `epoll_ctl` calls per new connection, not per
//! request.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker index (0 off the workers).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker whose thread this is (0 on any other thread). Per-worker state
/// (such as idle pod connections, which belong to the reactor of the worker that opened them)
/// is kept by this index.
pub fn current_worker() -> usize {
    WORKER.with(Cell::get)
}

/// Makes this thread act as worker `i` (tests of per-worker state).
#[cfg(test)]
pub(crate) fn set_current_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

/// The number of workers started in this process (1 when none were).
pub fn worker_count() -> usize {
    STARTED.load(Ordering::Relaxed).max(1)
}

static STARTED: AtomicUsize = AtomicUsize::new(0);

/// The worker threads. Dropping it stops them (connections still on them are dropped).
pub struct Workers {
    handles: Vec<Handle>,
    /// Open connections per worker.
    load: Arc<[AtomicUsize]>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.handles.len())
            .finish_non_exhaustive()
    }
}

/// The default worker count: the CPUs this process may use (Rust's `available_parallelism`
/// reads the cgroup CPU quota and the affinity mask, so a pod limited to 2 CPUs gets 2).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Workers {
    /// Starts `n` worker threads (`infergate-w0`, ...).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stops.push(tx);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("infergate-w{i}"))
                    .spawn(move || {
                        WORKER.with(|w| w.set(i));
                        rt.block_on(async {
                            let _ = rx.await;
                        });
                    })?,
            );
        }
        STARTED.store(n, Ordering::Relaxed);
        let load = (0..n).map(|_| AtomicUsize::new(0)).collect();
        Ok(Workers {
            handles,
            load,
            stops,
            threads,
        })
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none (never: at least one is started).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The worker holding the fewest open connections.
    fn least_loaded(&self) -> usize {
        let mut best = 0;
        let mut least = usize::MAX;
        for (i, l) in self.load.iter().enumerate() {
            let v = l.load(Ordering::Relaxed);
            if v < least {
                best = i;
                least = v;
            }
        }
        best
    }

    /// Hands an accepted connection to the least-loaded worker, which runs `serve` on it to its
    /// end. The socket moves from the accepting runtime's reactor to the worker's.
    pub(crate) fn dispatch<F, Fut>(&self, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(std) = tcp.into_std() else { return };
        let i = self.least_loaded();
        self.load[i].fetch_add(1, Ordering::Relaxed);
        let guard = LoadGuard {
            load: self.load.clone(),
            i,
        };
        self.handles[i].spawn(async move {
            let _guard = guard;
            let Ok(tcp) = TcpStream::from_std(std) else {
                return;
            };
            serve(tcp).await;
        });
    }
}

/// Counts a connection on its worker until it ends.
struct LoadGuard {
    load: Arc<[AtomicUsize]>,
    i: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load[self.i].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_worker_and_run_on_its_thread() {
        let w = Workers::start(2).unwrap();
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        outer.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let (hold_tx, hold_rx) = tokio::sync::watch::channel(false);
            let mut clients = Vec::new();
            for _ in 0..4 {
                clients.push(TcpStream::connect(addr).await.unwrap());
                let (tcp, _) = l.accept().await.unwrap();
                let (tx, mut hold) = (tx.clone(), hold_rx.clone());
                w.dispatch(tcp, move |tcp| async move {
                    let name = std::thread::current().name().map(str::to_string);
                    tx.send((current_worker(), name, tcp.peer_addr().is_ok()))
                        .unwrap();
                    let _ = hold.wait_for(|h| *h).await;
                });
                // Wait until it runs, so that the load is counted before the next one.
                let _ = rx.recv().await.map(|seen| {
                    let (i, name, ok) = seen;
                    assert!(ok, "the socket works on the worker");
                    assert_eq!(name.as_deref(), Some(format!("infergate-w{i}").as_str()));
                });
            }
            let loads: Vec<usize> = w.load.iter().map(|l| l.load(Ordering::Relaxed)).collect();
            assert_eq!(loads, vec![2, 2], "spread evenly");
            hold_tx.send(true).unwrap();
            for _ in 0..100 {
                if w.load.iter().all(|l| l.load(Ordering::Relaxed) == 0) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(
                w.load.iter().all(|l| l.load(Ordering::Relaxed) == 0),
                "counted down when they end"
            );
            drop(clients);
        });
        assert_eq!(current_worker(), 0);
    }
}
