//! What each open connection is doing, so that slow or idle clients cannot hold a
//! connection (and its file descriptor) for long.
//!
//! Modelled on Go's `http.Server`: a connection waiting for (or reading) a request head
//! must complete it within `header_read` from its first byte (from the accept for the
//! first request); a keep-alive connection between requests is closed after
//! `keep_alive_idle`; a request in flight has no deadline here (the ingress's request
//! deadline bounds it). hyper 1's own `header_read_timeout` cannot express this: it
//! restarts when a keep-alive connection goes idle, so the idle wait and the head read
//! share one timeout. The deadlines are enforced in [`Watched::poll_read`], the way
//! hyper enforces its own: a read that would wait past the deadline fails, and hyper
//! drops the connection.
//!
//! The [`Registry`] lets the accept loop, at its connection limit, close a connection to
//! make room for a new one: the one idle the longest among those with no request in
//! flight that are idle between requests, or have been waiting for (or sending) a request
//! head for longer than a tenth of `header_read` (providers send a head in one packet
//! right after connecting; a head still incomplete after a second is a slow or hostile
//! client). Closing
//! such a connection costs its client at most a reconnect; a new one may be a webhook.

use std::{
    collections::HashMap,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The per-connection deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub header_read: Duration,
    pub keep_alive_idle: Duration,
}

impl Deadlines {
    /// How long a request head may be in progress before, at the connection limit, its
    /// connection may be closed for a new one.
    fn slow_head(&self) -> Duration {
        self.header_read / 10
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head, or reading it.
    Head,
    /// A request is being served.
    Busy,
    /// Keep-alive, between two requests.
    Idle,
}

struct State {
    phase: Phase,
    /// When the phase began (the accept, the first byte of a head, the end of a response).
    since: Instant,
    evicted: bool,
    /// The task that last waited on a read, woken when the deadline or eviction changes.
    waker: Option<Waker>,
}

impl State {
    fn evictable(&self, limits: &Deadlines) -> bool {
        match self.phase {
            Phase::Idle => true,
            Phase::Head => self.since.elapsed() >= limits.slow_head(),
            Phase::Busy => false,
        }
    }
}

/// One connection's phase, shared by its socket wrapper, its service and the registry.
pub struct Tracker {
    state: Mutex<State>,
}

impl Tracker {
    fn new() -> Self {
        Self {
            state: Mutex::new(State {
                phase: Phase::Head,
                since: Instant::now(),
                evicted: false,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived: an idle connection starts a new request head, whose clock starts
    /// now (a connection's first head is timed from the accept).
    fn on_bytes(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Idle {
            state.phase = Phase::Head;
            state.since = Instant::now();
        }
    }

    /// The request head was read; the request is being served.
    pub fn request_started(&self) {
        self.lock().phase = Phase::Busy;
    }

    /// The response was handed to the connection: idle until the next request. The read
    /// side is woken so that it arms the idle deadline (hyper does not read again by
    /// itself until the socket becomes readable).
    pub fn request_finished(&self) {
        let mut state = self.lock();
        state.phase = Phase::Idle;
        state.since = Instant::now();
        if let Some(waker) = &state.waker {
            waker.wake_by_ref();
        }
    }

    /// Since when this connection may be closed for a new one (None: not now).
    fn evictable_since(&self, limits: &Deadlines) -> Option<Instant> {
        let state = self.lock();
        (!state.evicted && state.evictable(limits)).then_some(state.since)
    }

    /// Closes the connection at its next read, if it is still evictable (a request that
    /// started in the meantime is served).
    fn evict(&self, limits: &Deadlines) -> bool {
        let mut state = self.lock();
        if !state.evictable(limits) {
            return false;
        }
        state.evicted = true;
        if let Some(waker) = &state.waker {
            waker.wake_by_ref();
        }
        true
    }

    /// Called when a read would wait: remembers the waker and says until when it may.
    fn before_wait(
        &self,
        cx: &Context<'_>,
        limits: &Deadlines,
    ) -> Result<Option<Instant>, io::Error> {
        let mut state = self.lock();
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        if state.evicted && state.evictable(limits) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "idle or slow connection closed to admit a new one",
            ));
        }
        state.evicted = false;
        Ok(match state.phase {
            Phase::Head => Some(state.since + limits.header_read),
            Phase::Idle => Some(state.since + limits.keep_alive_idle),
            Phase::Busy => None,
        })
    }
}

/// Every open connection of one listener.
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Arc<Tracker>>>,
}

impl Registry {
    /// Tracks a new connection until the returned [`Registration`] is dropped.
    pub fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracker = Arc::new(Tracker::new());
        self.lock().insert(id, tracker.clone());
        Registration {
            registry: self.clone(),
            id,
            tracker,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracker>>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connections open right now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Closes up to `count` evictable connections, those idle the longest first (see the
    /// module docs); returns how many. One scan serves several accepts, so a flood of new
    /// connections at the limit is admitted at accept speed rather than one scan each.
    pub fn evict_longest_idle(&self, limits: &Deadlines, count: usize) -> usize {
        let mut candidates: Vec<(Instant, Arc<Tracker>)> = self
            .lock()
            .values()
            .filter_map(|t| Some((t.evictable_since(limits)?, t.clone())))
            .collect();
        if candidates.len() > count && count > 0 {
            candidates.select_nth_unstable_by_key(count - 1, |(since, _)| *since);
            candidates.truncate(count);
        }
        candidates.sort_by_key(|(since, _)| *since);
        candidates
            .into_iter()
            .filter(|(_, tracker)| tracker.evict(limits))
            .count()
    }
}

/// A connection's place in the [`Registry`], removed on drop.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    pub tracker: Arc<Tracker>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// A socket whose reads fail once the connection's phase deadline has passed.
pub struct Watched<S> {
    inner: S,
    tracker: Arc<Tracker>,
    limits: Deadlines,
    timer: Pin<Box<Sleep>>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, tracker: Arc<Tracker>, limits: Deadlines) -> Self {
        Self {
            inner,
            tracker,
            limits,
            timer: Box::pin(tokio::time::sleep(limits.header_read)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.tracker.on_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                let Some(deadline) = this.tracker.before_wait(cx, &this.limits)? else {
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
