//! One client connection: HTTP/1.1 by hyper, with the time limits a slow or hostile client meets.
//!
//! hyper's own header-read timer runs from the moment it waits for a request, so it cannot tell a slow
//! request from an idle kept-alive connection; and it has no send timeout at all. The limits are therefore
//! kept here, at the connection's IO, which knows from the service where each request begins and ends:
//! - waiting for a request's headers: `header_timeout`, counted from the connection's start for the first
//!   request and from the first byte of each later one (nginx's `client_header_timeout`);
//! - idle between requests: `keepalive_timeout` (nginx's `keepalive_timeout`);
//! - a response the client accepts no byte of: `send_timeout` (nginx's `send_timeout`). Only a client that
//!   takes nothing at all is dropped: Nix pauses reading while its buffer is full, and a slow link still
//!   takes bytes. A slow reader can keep a write refused for long (the kernel reports a socket writable
//!   only once much of its buffer is free), so when the time is up the socket's queue is looked at: if it
//!   shrank, the client did take bytes, and the clock starts again.
//!
//! While a request is being answered no read limit applies (the answer may wait for an upstream). A
//! pipelined request whose first bytes arrived with the previous one is timed as idle until it is read.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Limits;
use crate::metrics::{DropReason, LimitMetrics};

/// The largest request head (request line and headers) accepted; larger ones get 431. nginx allows
/// 4 × 8 KiB by default; a Nix request is a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 32 << 10;
/// hyper's buffer limit: room for a request head, and how little of a response must be left to send
/// before the next chunk of the body is taken (hyper's default, ~400 KiB, would let a stalled reader
/// hold that much more besides the chunk it has).
pub const CONNECTION_BUFFER: usize = 64 << 10;

/// The time limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To send a request's headers.
    pub header: Duration,
    /// Idle between requests.
    pub keepalive: Duration,
    /// Without accepting a byte of a response.
    pub send: Duration,
}

impl From<&Limits> for Timeouts {
    fn from(l: &Limits) -> Timeouts {
        Timeouts {
            header: l.header_timeout,
            keepalive: l.keepalive_timeout,
            send: l.send_timeout,
        }
    }
}

/// The HTTP/1 settings every connection is served with.
pub fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // Its timer would also end idle connections at the header time-out: `TimedIo` keeps both apart.
        .header_read_timeout(Option::<Duration>::None)
        .max_header_size(MAX_REQUEST_HEAD)
        .max_buf_size(CONNECTION_BUFFER);
    builder
}

/// What every connection of a listener shares.
#[derive(Clone)]
pub struct Shared {
    /// The routes.
    pub router: Router,
    /// The HTTP/1 settings.
    pub builder: Arc<http1::Builder>,
    /// The time limits.
    pub timeouts: Timeouts,
    /// Where dropped connections are counted.
    pub metrics: LimitMetrics,
    /// Asks connections to finish their current request and close.
    pub shutdown: CancellationToken,
    /// Ends connections where they stand (the drain time-out passed).
    pub abort: CancellationToken,
}

/// Serves one connection until it ends, `shutdown` asks it to finish its current request, or `abort`
/// ends it where it stands.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Shared) {
    let Shared {
        router,
        builder,
        timeouts,
        metrics,
        shutdown,
        abort,
    } = shared;
    let phase = Arc::new(Phase::default());
    let io = TimedIo::new(tcp, phase.clone(), timeouts, metrics);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // Busy from here until the response body is done (or dropped with the connection).
        let busy = BusyGuard::new(phase.clone());
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _busy: busy }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                () = abort.cancelled() => Ok(()),
            }
        }
        () = abort.cancelled() => Ok(()),
    };
    if let Err(e) = ended {
        // Clients that go away, time out or send garbage: normal life on a network, not worth a warning.
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

/// Where a connection is between requests, shared by its IO (which enforces the limits) and its service
/// (which knows where requests begin and end).
#[derive(Debug, Default)]
struct Phase {
    /// Requests being answered: from the service call until their response body is done.
    busy: AtomicUsize,
    /// Answers finished so far; a change starts an idle period.
    finished: AtomicU64,
    /// The connection's task, as its last read saw it. hyper does not read again after an answer until
    /// the socket wakes it, so the end of an answer wakes it: the idle timer must start then.
    reader: AtomicWaker,
}

/// One request being answered; dropped with its response body, or with the request if it never got one.
struct BusyGuard(Arc<Phase>);

impl BusyGuard {
    fn new(phase: Arc<Phase>) -> BusyGuard {
        phase.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(phase)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        // `finished` first: whoever sees `busy` at 0 also sees the new idle period.
        self.0.finished.fetch_add(1, Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.reader.wake();
    }
}

/// A response body that marks the end of its request when it is done (hyper drops a body once it has
/// sent its last frame).
struct TrackedBody<B> {
    inner: B,
    _busy: BusyGuard,
}

impl<B: HttpBody + Unpin> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a connection is waiting to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadWait {
    /// A request's headers, under `header_timeout`.
    Head,
    /// The next request on a kept-alive connection, under `keepalive_timeout`.
    Idle,
    /// Nothing it must have: a request is being answered.
    Busy,
}

/// A TCP stream whose reads and writes fail with `TimedOut` when the connection's limits are passed.
struct TimedIo {
    inner: TcpStream,
    phase: Arc<Phase>,
    timeouts: Timeouts,
    metrics: LimitMetrics,
    wait: ReadWait,
    seen_finished: u64,
    read_deadline: Pin<Box<Sleep>>,
    /// Armed while a write is refused by a full socket buffer.
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes the socket still had to deliver when that clock (re)started.
    queued_at_arm: Option<u64>,
}

impl TimedIo {
    fn new(
        inner: TcpStream,
        phase: Arc<Phase>,
        timeouts: Timeouts,
        metrics: LimitMetrics,
    ) -> TimedIo {
        TimedIo {
            inner,
            phase,
            timeouts,
            metrics,
            wait: ReadWait::Head,
            seen_finished: 0,
            read_deadline: Box::pin(tokio::time::sleep(timeouts.header)),
            write_deadline: None,
            queued_at_arm: None,
        }
    }

    /// Brings `wait` up to date with the service's view of the connection.
    fn update_wait(&mut self) {
        if self.phase.busy.load(Ordering::SeqCst) > 0 {
            self.wait = ReadWait::Busy;
            return;
        }
        let finished = self.phase.finished.load(Ordering::SeqCst);
        if self.wait == ReadWait::Busy || finished != self.seen_finished {
            self.seen_finished = finished;
            self.wait = ReadWait::Idle;
            let deadline = Instant::now() + self.timeouts.keepalive;
            self.read_deadline.as_mut().reset(deadline);
        }
    }

    fn timed_out(&self, reason: DropReason) -> io::Error {
        self.metrics.dropped(reason);
        io::Error::new(io::ErrorKind::TimedOut, reason.as_str())
    }

    /// Bytes written to the socket that the client has not acknowledged yet (`TIOCOUTQ`).
    fn queued(&self) -> Option<u64> {
        let mut queued: libc::c_int = 0;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.inner);
        // SAFETY: TIOCOUTQ writes one int through the pointer, which lives for the call.
        let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
        (r == 0).then(|| u64::try_from(queued).unwrap_or(0))
    }

    /// After a write the socket refused: `Ready(err)` once the client has accepted nothing for
    /// `send_timeout`, `Pending` (with the timer registered) before.
    fn poll_send_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let send = self.timeouts.send;
        if self.write_deadline.is_none() {
            self.write_deadline = Some(Box::pin(tokio::time::sleep(send)));
            self.queued_at_arm = self.queued();
        }
        loop {
            let elapsed = match self.write_deadline.as_mut() {
                Some(deadline) => deadline.as_mut().poll(cx).is_ready(),
                None => false,
            };
            if !elapsed {
                return Poll::Pending;
            }
            match (self.queued_at_arm, self.queued()) {
                // The client took bytes meanwhile: slow, not stalled. Count again from now.
                (Some(before), Some(now)) if now < before => {
                    self.queued_at_arm = Some(now);
                    if let Some(deadline) = self.write_deadline.as_mut() {
                        deadline.as_mut().reset(Instant::now() + send);
                    }
                }
                _ => return Poll::Ready(self.timed_out(DropReason::SendTimeout)),
            }
        }
    }

    fn written<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.poll_send_deadline(cx).map(Err),
            ready => {
                self.write_deadline = None;
                self.queued_at_arm = None;
                ready
            }
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.phase.reader.register(cx.waker());
        this.update_wait();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.wait == ReadWait::Idle && buf.filled().len() > before {
                    // The next request has begun: its headers get the header time, counted from now.
                    this.wait = ReadWait::Head;
                    let deadline = Instant::now() + this.timeouts.header;
                    this.read_deadline.as_mut().reset(deadline);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let reason = match this.wait {
                    ReadWait::Busy => return Poll::Pending,
                    ReadWait::Head => DropReason::HeaderTimeout,
                    ReadWait::Idle => DropReason::IdleTimeout,
                };
                match this.read_deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(this.timed_out(reason))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.written(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.written(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.written(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.written(result, cx)
    }
}
