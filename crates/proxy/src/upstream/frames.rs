//! What a pod says about its HTTP/2 connection, read from the frames it sends: the streams it
//! allows at once (`SETTINGS_MAX_CONCURRENT_STREAMS`) and whether it is going away (`GOAWAY`).
//!
//! hyper's HTTP/2 client keeps these to itself (it queues streams beyond the pod's limit on the
//! connection instead of telling the pool to open another). [`Scanned`] sits between the socket
//! (or the TLS stream) and hyper and reads only the 9-byte frame headers of what arrives, and the
//! payload of SETTINGS frames; everything else is skipped by its length, so the cost is a few
//! comparisons per frame, none per byte. [`FrameScan`] is the pure part, fed any split of the
//! byte stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Something the pod said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    MaxConcurrentStreams(u32),
    /// The end of a (non-ACK) SETTINGS frame.
    SettingsEnd,
    /// A GOAWAY frame: no new streams on this connection.
    GoAway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Payload {
    #[default]
    Skip,
    Settings,
}

/// The frame reader's state between two reads.
#[derive(Debug, Default)]
pub(crate) struct FrameScan {
    head: [u8; FRAME_HEADER],
    head_len: usize,
    /// Payload bytes of the current frame still to come (0: a header comes next).
    left: u32,
    payload: Payload,
    entry: [u8; 6],
    entry_len: usize,
}

impl FrameScan {
    /// Reads `buf`, the next bytes the pod sent, reporting what it says to `on`.
    pub(crate) fn feed(&mut self, mut buf: &[u8], on: &mut impl FnMut(Event)) {
        while !buf.is_empty() {
            if self.left == 0 {
                let n = (FRAME_HEADER - self.head_len).min(buf.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&buf[..n]);
                self.head_len += n;
                buf = &buf[n..];
                if self.head_len < FRAME_HEADER {
                    return;
                }
                self.head_len = 0;
                self.start_frame(on);
                continue;
            }
            let n = (self.left as usize).min(buf.len());
            if self.payload == Payload::Settings {
                for &b in &buf[..n] {
                    self.entry[self.entry_len] = b;
                    self.entry_len += 1;
                    if self.entry_len == 6 {
                        self.entry_len = 0;
                        let id = u16::from_be_bytes([self.entry[0], self.entry[1]]);
                        if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                            let [_, _, a, b, c, d] = self.entry;
                            on(Event::MaxConcurrentStreams(u32::from_be_bytes([
                                a, b, c, d,
                            ])));
                        }
                    }
                }
            }
            // `n` is at most `self.left`, a u32.
            self.left -= n as u32;
            buf = &buf[n..];
            if self.left == 0 && self.payload == Payload::Settings {
                on(Event::SettingsEnd);
            }
        }
    }

    fn start_frame(&mut self, on: &mut impl FnMut(Event)) {
        let h = self.head;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        self.left = len;
        self.entry_len = 0;
        self.payload = Payload::Skip;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                self.payload = Payload::Settings;
                if len == 0 {
                    on(Event::SettingsEnd);
                }
            }
            GOAWAY => on(Event::GoAway),
            _ => {}
        }
    }
}

/// What the frames said so far, shared with the pool.
#[derive(Debug)]
pub(crate) struct PeerState {
    /// The pod's `SETTINGS_MAX_CONCURRENT_STREAMS` (100, as RFC 9113 recommends as a floor,
    /// until it has sent its own).
    max_streams: AtomicU32,
    /// The pod sent GOAWAY, or the connection ended: no new streams.
    closing: AtomicBool,
    /// The pod's first SETTINGS frame has been read.
    settings: tokio::sync::Notify,
    settings_seen: AtomicBool,
}

impl PeerState {
    pub(crate) fn new() -> Self {
        PeerState {
            max_streams: AtomicU32::new(100),
            closing: AtomicBool::new(false),
            settings: tokio::sync::Notify::new(),
            settings_seen: AtomicBool::new(false),
        }
    }

    /// The streams the pod allows at once.
    pub(crate) fn max_streams(&self) -> u32 {
        self.max_streams.load(Ordering::Relaxed)
    }

    /// Whether the connection takes no new streams (GOAWAY, or ended).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// No new streams on this connection.
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
        self.settings.notify_waiters();
    }

    /// Resolves once the pod's first SETTINGS frame has been read (true), or the connection is
    /// closing before it was (false: not an HTTP/2 server, most likely).
    pub(crate) async fn settings_seen(&self) -> bool {
        loop {
            let notified = self.settings.notified();
            if self.settings_seen.load(Ordering::Acquire) {
                return true;
            }
            if self.is_closing() {
                return false;
            }
            notified.await;
        }
    }

    fn on(&self, e: Event) {
        match e {
            Event::MaxConcurrentStreams(n) => self.max_streams.store(n, Ordering::Relaxed),
            Event::SettingsEnd => {
                if !self.settings_seen.swap(true, Ordering::AcqRel) {
                    self.settings.notify_waiters();
                }
            }
            Event::GoAway => self.set_closing(),
        }
    }
}

pin_project! {
    /// An IO stream to a pod whose incoming HTTP/2 frames are read as they pass (see the
    /// module's doc).
    pub(crate) struct Scanned<T> {
        #[pin]
        io: T,
        scan: FrameScan,
        peer: std::sync::Arc<PeerState>,
    }
}

impl<T> Scanned<T> {
    pub(crate) fn new(io: T, peer: std::sync::Arc<PeerState>) -> Self {
        Scanned {
            io,
            scan: FrameScan::default(),
            peer,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Scanned<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        let peer = &**this.peer;
        this.scan.feed(&buf.filled()[before..], &mut |e| peer.on(e));
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for Scanned<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in entries {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, &p)
    }

    fn events(stream: &[u8], splits: &[usize]) -> Vec<Event> {
        let mut scan = FrameScan::default();
        let mut out = Vec::new();
        let mut at = 0;
        for &s in splits.iter().chain([&stream.len()]) {
            let s = s.clamp(at, stream.len());
            scan.feed(&stream[at..s], &mut |e| out.push(e));
            at = s;
        }
        out
    }

    #[test]
    fn reads_the_stream_limit_and_goaway_and_skips_the_rest() {
        let mut s = settings(&[(0x1, 4096), (0x3, 7), (0x4, 65535)]);
        s.extend(frame(
            0x0,
            0,
            b"data that looks like \x00\x00\x06\x04\x00 a frame",
        ));
        s.extend(frame(SETTINGS, ACK, b""));
        s.extend(frame(0x1, 0x4, &[0u8; 300]));
        s.extend(settings(&[]));
        s.extend(settings(&[(0x3, 2)]));
        s.extend(frame(GOAWAY, 0, &[0u8; 8]));
        let want = vec![
            Event::MaxConcurrentStreams(7),
            Event::SettingsEnd,
            Event::SettingsEnd,
            Event::MaxConcurrentStreams(2),
            Event::SettingsEnd,
            Event::GoAway,
        ];
        assert_eq!(events(&s, &[]), want);
        // One byte at a time reads the same.
        let every: Vec<usize> = (0..s.len()).collect();
        assert_eq!(events(&s, &every), want);
    }

    #[test]
    fn peer_state_follows_the_events() {
        let p = PeerState::new();
        assert_eq!(p.max_streams(), 100);
        p.on(Event::MaxConcurrentStreams(3));
        p.on(Event::SettingsEnd);
        assert_eq!(p.max_streams(), 3);
        assert!(p.settings_seen.load(Ordering::Acquire) && !p.is_closing());
        p.on(Event::GoAway);
        assert!(p.is_closing());
    }

    proptest! {
        /// Any split of a stream of frames reads as the whole does.
        #[test]
        fn any_split_reads_the_same(
            frames in proptest::collection::vec(
                (0u8..10, any::<u8>(), proptest::collection::vec((any::<u16>(), any::<u32>()), 0..4), proptest::collection::vec(any::<u8>(), 0..40)),
                0..12,
            ),
            splits in proptest::collection::vec(0usize..600, 0..20),
        ) {
            let mut stream = Vec::new();
            for (kind, flags, entries, payload) in &frames {
                if *kind == SETTINGS && flags & ACK == 0 {
                    stream.extend(settings(entries));
                } else if *kind == SETTINGS {
                    stream.extend(frame(SETTINGS, ACK, b""));
                } else {
                    stream.extend(frame(*kind, *flags, payload));
                }
            }
            let mut splits = splits;
            splits.sort_unstable();
            let whole = events(&stream, &[]);
            prop_assert_eq!(events(&stream, &splits), whole.clone());
            let limits: Vec<u32> = frames
                .iter()
                .filter(|(k, f, _, _)| *k == SETTINGS && f & ACK == 0)
                .flat_map(|(_, _, e, _)| e.iter().filter(|(id, _)| *id == 3).map(|(_, v)| *v))
                .collect();
            let seen: Vec<u32> = whole
                .iter()
                .filter_map(|e| match e { Event::MaxConcurrentStreams(n) => Some(*n), _ => None })
                .collect();
            prop_assert_eq!(seen, limits);
        }
    }
}
