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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::dispatch::Routes;
use super::sendfile::{self, SendFile, Splice, Splices};
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
        .max_buf_size(CONNECTION_BUFFER)
        // Body chunks are queued and written as they are, never copied into one buffer: a stored file's
        // stand-ins must reach `TimedIo` as themselves (see `sendfile`).
        .writev(true);
    builder
}

/// What every connection of a listener shares.
#[derive(Clone)]
pub struct Shared {
    /// The routes.
    pub routes: Arc<Routes>,
    /// The HTTP/1 settings.
    pub builder: Arc<http1::Builder>,
    /// The time limits.
    pub timeouts: Timeouts,
    /// Where dropped connections are counted.
    pub metrics: LimitMetrics,
    /// Asks connections to finish their current request and close, or ends them where they stand.
    pub stop: Arc<Stop>,
}

/// Serves one connection until it ends, or `stop` asks it to finish its current request or ends it
/// where it stands.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Shared) {
    let Shared {
        routes,
        builder,
        timeouts,
        metrics,
        stop,
    } = shared;
    let phase = Arc::new(Phase::default());
    let io = TimedIo::new(tcp, phase.clone(), timeouts, metrics);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        // Busy from here until the response body is done (or dropped with the connection).
        let busy = BusyGuard::new(phase.clone());
        let response = routes.call(request, peer);
        async move {
            let mut response = response.await;
            // A stored file goes out with `sendfile`, through this connection's IO.
            if let Some(offer) = response.extensions_mut().remove::<SendFile>() {
                *response.body_mut() = offer.into_body(busy.0.splices.clone());
            }
            Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _busy: busy }))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut watch = stop.watch();
    let mut draining = false;
    let ended = std::future::poll_fn(|cx| {
        match watch.state(cx.waker()) {
            StopState::Run => {}
            StopState::Drain if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            StopState::Drain => {}
            StopState::Abort => return Poll::Ready(Ok(())),
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = ended {
        // Clients that go away, time out or send garbage: normal life on a network, not worth a warning.
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

/// What the listener asks of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopState {
    /// Serve on.
    Run,
    /// Finish the current request, then close.
    Drain,
    /// Close now.
    Abort,
}

/// The listener's word to all its connections: one atomic each connection reads when it is polled, and
/// the connections' wakers to wake when it changes. Cheaper than each connection polling cancellation
/// futures on every wake-up, which takes their locks: that cost a tenth of a narinfo hit
/// (docs/benchmarks.md).
#[derive(Debug, Default)]
pub struct Stop {
    /// A [`StopState`] as a number.
    state: AtomicU8,
    /// The connections' wakers, by connection.
    wakers: Mutex<HashMap<u64, Waker>>,
    next: AtomicU64,
}

impl Stop {
    /// Asks every connection to finish its current request and close.
    pub fn drain(&self) {
        self.set(StopState::Drain);
    }

    /// Closes every connection where it stands.
    pub fn abort(&self) {
        self.set(StopState::Abort);
    }

    fn set(&self, state: StopState) {
        self.state.fetch_max(state as u8, Ordering::SeqCst);
        for waker in self.lock().values() {
            waker.wake_by_ref();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.wakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection's view, which removes its waker when dropped.
    fn watch(self: &Arc<Self>) -> Watch {
        Watch {
            stop: self.clone(),
            id: self.next.fetch_add(1, Ordering::Relaxed),
            waker: None,
        }
    }
}

/// One connection watching its [`Stop`].
struct Watch {
    stop: Arc<Stop>,
    id: u64,
    /// The waker registered, to register again only when the task's waker changes.
    waker: Option<Waker>,
}

impl Watch {
    /// The state now; `waker` is woken when it changes. Registered before the state is read, so a
    /// change in between is not missed.
    fn state(&mut self, waker: &Waker) -> StopState {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.stop.lock().insert(self.id, waker.clone());
            self.waker = Some(waker.clone());
        }
        match self.stop.state.load(Ordering::SeqCst) {
            0 => StopState::Run,
            1 => StopState::Drain,
            _ => StopState::Abort,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.stop.lock().remove(&self.id);
        }
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
    /// Set when hyper learns that a response body has ended ([`TrackedBody::is_end_stream`]): hyper
    /// then writes what is left of the response, and that write starts the idle timer.
    write_follows: AtomicBool,
    /// The answer ended with a write to come: the next write starts the idle timer.
    idle_on_write: AtomicBool,
    /// The connection's task, as its last read saw it. hyper does not read again after an answer until
    /// the socket wakes it, so an answer that ends without a write after it (a streamed body whose end
    /// is seen only after its last bytes went out) wakes it: the idle timer must start then.
    reader: AtomicWaker,
    /// The file chunks of responses sent with `sendfile`, queued by their bodies for the IO.
    splices: Arc<Splices>,
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
        if self.0.write_follows.swap(false, Ordering::SeqCst) {
            // Most answers (every whole body, every empty one): the write after this starts the idle
            // timer, without waking the connection's task once more per request.
            self.0.idle_on_write.store(true, Ordering::SeqCst);
        } else {
            self.0.reader.wake();
        }
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
        let end = self.inner.is_end_stream();
        if end {
            self._busy.0.write_follows.store(true, Ordering::SeqCst);
        }
        end
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
    /// When the current read limit runs out.
    deadline: Instant,
    /// The timer of that limit. It may be set earlier than `deadline` (a later deadline does not move
    /// it; when it fires it is moved on), never later: moving a timer on every request cost a few per
    /// cent of a narinfo hit.
    read_deadline: Pin<Box<Sleep>>,
    /// Armed while a write is refused by a full socket buffer.
    write_deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes the socket still had to deliver when that clock (re)started.
    queued_at_arm: Option<u64>,
    /// The file chunk being sent in place of its stand-in (see `sendfile`).
    splice: Option<Splice>,
    /// `TCP_CORK` is set: from a `sendfile` to the next flush (see [`TimedIo::poll_sendfile`]).
    corked: bool,
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
            deadline: Instant::now() + timeouts.header,
            read_deadline: Box::pin(tokio::time::sleep(timeouts.header)),
            write_deadline: None,
            queued_at_arm: None,
            splice: None,
            corked: false,
        }
    }

    /// Writes `bufs`, or the part of them up to a file chunk's stand-in, or (when a stand-in comes
    /// first) that much of the file, with `sendfile`.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs.iter().position(|b| sendfile::is_stand_in(b)) {
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            Some(0) => self.poll_sendfile(cx, bufs[0].len()),
            Some(i) => Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..i]),
        }
    }

    /// Sends the file bytes that `stand_in` bytes of a stand-in stand for.
    fn poll_sendfile(&mut self, cx: &mut Context<'_>, stand_in: usize) -> Poll<io::Result<usize>> {
        if self.splice.as_ref().is_none_or(Splice::done) {
            self.splice = self.phase.splices.next();
        }
        let Some(splice) = self.splice.as_mut() else {
            return Poll::Ready(Err(io::Error::other(
                "a response body stands for a file that was never queued",
            )));
        };
        if !self.corked {
            self.corked = sendfile::cork(&self.inner, true);
        }
        loop {
            std::task::ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_io(tokio::io::Interest::WRITABLE, || {
                splice.send(&self.inner, stand_in)
            }) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                result => return Poll::Ready(result),
            }
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
            self.set_deadline(Instant::now() + self.timeouts.keepalive);
        }
    }

    /// Sets the read limit's end (see `read_deadline`).
    fn set_deadline(&mut self, at: Instant) {
        self.deadline = at;
        if at < self.read_deadline.deadline() {
            self.read_deadline.as_mut().reset(at);
        }
    }

    /// `Ready` once the read limit ran out; otherwise its timer is registered with `cx`.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.read_deadline.as_mut().poll(cx));
            if self.read_deadline.deadline() >= self.deadline {
                return Poll::Ready(());
            }
            let at = self.deadline;
            self.read_deadline.as_mut().reset(at);
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
        if self.phase.idle_on_write.swap(false, Ordering::SeqCst) {
            // An answer just ended (see `BusyGuard`): the idle period starts now, its timer registered
            // with this task, whatever hyper polls next.
            self.update_wait();
            if self.wait != ReadWait::Busy && self.poll_deadline(cx).is_ready() {
                // Cannot be: the idle time was just started. Seen by the next read.
                cx.waker().wake_by_ref();
            }
        }
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

/// Whether `bytes` hold the end of a request head (an empty line).
fn has_head_end(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n")
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
                    // The next request has begun: its headers get the header time, counted from now,
                    // unless they came whole (the usual case: hyper answers them now).
                    this.wait = ReadWait::Head;
                    if !has_head_end(&buf.filled()[before..]) {
                        this.set_deadline(Instant::now() + this.timeouts.header);
                    }
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
                match this.poll_deadline(cx) {
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
        let result = this.poll_send(cx, &[io::IoSlice::new(buf)]);
        this.written(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = this.poll_send(cx, bufs);
        this.written(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.corked {
            // hyper flushes once what it queued went out: the end of a file chunk, or of an answer.
            sendfile::cork(&this.inner, false);
            this.corked = false;
        }
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.written(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.written(result, cx)
    }
}
