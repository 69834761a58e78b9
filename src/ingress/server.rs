//! The HTTP/1 server both listeners (ingress and admin) run on, in place of `axum::serve`,
//! which can bound neither slow clients nor the number of connections.
//!
//! - At most `max_connections` connections are open per listener (a semaphore). At the
//!   limit the loop has accepted one connection and waits with it: it closes the
//!   connection idle the longest (keep-alive, or no complete head after header_read/10: see
//!   [`conn`](super::conn)), else waits until one ends (every head ends within
//!   `header_read`). Connections beyond that wait in the kernel's accept backlog, so
//!   open descriptors stay at `max_connections` + 1.
//! - Each connection's request-head and keep-alive deadlines are enforced by
//!   [`conn::Watched`](super::conn::Watched).
//! - Shutdown: stop accepting, let every connection finish its request in flight
//!   (idle ones close at once), for at most `shutdown_grace`.
//! - Handlers still get `ConnectInfo<SocketAddr>` (Rebilly's IP allowlist uses it).

use std::{convert::Infallible, net::SocketAddr, pin::Pin, sync::Arc, task, time::Duration};

use axum::{Router, body::Body, extract::ConnectInfo};
use hyper::{
    body::{Frame, Incoming, SizeHint},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown, service::TowerToHyperService};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::sync::CancellationToken;

use super::conn::{Deadlines, Registry, Tracker, Watched};

/// How a listener protects itself from its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub deadlines: Deadlines,
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight before dropping them.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    what: &'static str,
) {
    warn_if_few_descriptors(limits.max_connections, what);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Registry::default());
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // The deadlines are ours (conn.rs): hyper's would cut keep-alive connections at the
    // head-read timeout.
    http.header_read_timeout(None).keep_alive(true);
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                accept_failed(error, what).await;
                continue;
            }
        };
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = free_slot(&slots, &registry, &limits, what) => permit,
        };
        let registration = registry.register();
        let io = TokioIo::new(Watched::new(
            stream,
            registration.tracker.clone(),
            limits.deadlines,
        ));
        let service = tracked(app.clone(), peer, registration.tracker.clone());
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(listener = what, %peer, %error, "connection closed");
            }
            drop((registration, permit));
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = what,
            open = registry.count(),
            "connections still open after the shutdown grace; no longer waited for"
        );
    }
}

/// A connection slot: a free one, or the one an idle or slow connection gives up. Retries the
/// eviction while waiting, as a connection may turn idle (or its eviction may lose the
/// race against a request that just started).
async fn free_slot(
    slots: &Arc<Semaphore>,
    registry: &Registry,
    limits: &Limits,
    what: &'static str,
) -> OwnedSemaphorePermit {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return permit;
    }
    metrics::counter!("subsync_http_connection_limit_reached_total", "listener" => what)
        .increment(1);
    // Room for the next few accepts too, so a burst at the limit costs one scan per batch.
    let batch = (limits.max_connections / 64).clamp(1, 64);
    loop {
        let evicted = registry.evict_longest_idle(&limits.deadlines, batch);
        metrics::counter!("subsync_http_connections_evicted_total", "listener" => what)
            .increment(evicted as u64);
        let wait = Duration::from_millis(if evicted > 0 { 1_000 } else { 50 });
        if let Ok(permit) = tokio::time::timeout(wait, slots.clone().acquire_owned()).await {
            return permit.expect("the semaphore is never closed");
        }
    }
}

/// Out of descriptors or a similar failure: back off instead of spinning (as
/// `axum::serve` does); a client that gave up before the accept is no failure.
async fn accept_failed(error: std::io::Error, what: &'static str) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(listener = what, %error, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// `max_connections` is only a bound if the process may open that many descriptors
/// (a shell's or systemd's default soft limit is often 1,024). Linux only; silent elsewhere.
fn warn_if_few_descriptors(max_connections: usize, what: &'static str) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<usize>().ok());
    if let Some(soft) = soft
        && soft < max_connections.saturating_add(64)
    {
        tracing::warn!(
            listener = what,
            max_connections,
            open_files_limit = soft,
            "http.max_connections is close to or above the open-files limit (ulimit -n): raise the limit or lower max_connections"
        );
    }
}

/// The router as a hyper service that tells `tracker` when a request starts and when its
/// response is done, and hands handlers the peer address.
fn tracked(
    app: Router,
    peer: SocketAddr,
    tracker: Arc<Tracker>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<TrackedBody>,
    Error = Infallible,
    Future: Send,
> + Clone {
    let router = TowerToHyperService::new(app);
    service_fn(move |mut request: hyper::Request<Incoming>| {
        tracker.request_started();
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = hyper::service::Service::call(&router, request.map(Body::new));
        let tracker = tracker.clone();
        async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                tracker: Some(tracker),
            }))
        }
    })
}

/// A response body that marks its connection idle once hyper is done with it.
pub struct TrackedBody {
    inner: Body,
    tracker: Option<Arc<Tracker>>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker.take() {
            tracker.request_finished();
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
    ) -> task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
