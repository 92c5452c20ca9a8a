//! The threads that serve client connections: one single-threaded tokio runtime per core, and each
//! connection served from accept to close by one of them (the one with the fewest connections when it
//! came), as nginx's worker processes do.
//!
//! Why not the multi-threaded runtime everything else runs on: there a connection's task runs on
//! whichever worker polled the socket's readiness, so one connection moves between cores from request
//! to request, and each move finds its buffers, its parser state and the hit path's per-thread state
//! (`index/snapshot.rs`, `sharded.rs`) in the other core's cache. Measured on narinfo hits with the
//! client on the same two cores (docs/benchmarks.md, "Narinfo hits on two shared cores"): 5.7–6.4 µs of
//! CPU per hit instead of 6.3–7.7, 1.20–1.31× nginx's rate instead of 0.88–1.14× (runs Z and AC against
//! run AB on main); one kept-alive connection of small NARs at parity with nginx (0.99–1.02×) instead
//! of 1.29–1.30×, and the real client's closure copies no slower.
//!
//! What a connection's handler spawns (a fill, a warm job, an upstream connection of the shared HTTP
//! client) runs on the same thread; a `spawn_blocking` goes to that runtime's own blocking pool. The
//! threads stop (and drop what still runs on them) when the server has drained and its background
//! work has ended.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// The connection threads.
pub struct Cores {
    cores: Vec<Core>,
}

struct Core {
    handle: tokio::runtime::Handle,
    /// Connections this thread serves now.
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Counts a connection out of its thread when dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cores {
    /// `n` connection threads (at least one), each with its runtime running.
    pub fn start(n: usize) -> io::Result<Cores> {
        let mut cores = Cores {
            cores: Vec::with_capacity(n.max(1)),
        };
        for i in 0..n.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("nixcache-conn-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Runs every connection (and what their handlers spawned) until told to stop.
                    let _ = runtime.block_on(stopped);
                    // Blocking work still running (a check, a write) is left to end on its own.
                    runtime.shutdown_background();
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("a connection thread ended before it started"))??;
            cores.cores.push(Core {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(cores)
    }

    /// As many connection threads as this process may run on at once.
    pub fn for_this_machine() -> io::Result<Cores> {
        Cores::start(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Serves `tcp` with `serve` on the thread with the fewest connections: the socket moves to that
    /// thread's runtime and stays there until `serve` ends. A socket that cannot move is closed.
    pub fn serve<F, Fut>(&self, tcp: TcpStream, serve: F) -> io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let core = self
            .cores
            .iter()
            .min_by_key(|c| c.open.load(Ordering::Relaxed))
            .expect("at least one connection thread");
        let tcp = tcp.into_std()?;
        core.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(core.open.clone());
        core.handle.spawn(async move {
            let _open = open;
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => tracing::warn!(error = %e, "cannot serve a connection on its thread"),
            }
        });
        Ok(())
    }

    /// Connections each thread serves now.
    pub fn open(&self) -> Vec<usize> {
        self.cores
            .iter()
            .map(|c| c.open.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops every thread (dropping what still runs on it) and waits until they ended.
    pub fn stop(mut self) {
        for core in &mut self.cores {
            if let Some(stop) = core.stop.take() {
                let _ = stop.send(());
            }
        }
        for core in &mut self.cores {
            if let Some(thread) = core.thread.take()
                && thread.join().is_err()
            {
                tracing::error!("a connection thread panicked");
            }
        }
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        // Stopped without waiting when `stop` was not called (a panic on the way out).
        for core in &mut self.cores {
            if let Some(stop) = core.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Each connection is served on one thread from start to end, connections spread over the threads,
    /// and the count per thread goes back to zero when they end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_stay_on_one_thread_and_spread() {
        let cores = Cores::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (tcp, _) = listener.accept().await.unwrap();
            cores
                .serve(tcp, |mut tcp| async move {
                    // Answers each byte with the name of the thread serving it, until the client closes.
                    let mut b = [0u8; 1];
                    while tcp.read(&mut b).await.is_ok_and(|n| n == 1) {
                        tokio::task::yield_now().await;
                        let name = std::thread::current().name().unwrap_or("").to_string();
                        let mut line = name.into_bytes();
                        line.push(b'\n');
                        if tcp.write_all(&line).await.is_err() {
                            break;
                        }
                    }
                })
                .unwrap();
        }
        assert_eq!(
            cores.open(),
            vec![2, 2],
            "four connections over two threads"
        );
        let mut threads = Vec::new();
        for client in &mut clients {
            let mut names = Vec::new();
            for _ in 0..5 {
                client.write_all(b"x").await.unwrap();
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while client.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                names.push(String::from_utf8(line).unwrap());
            }
            assert!(names[0].starts_with("nixcache-conn-"), "{names:?}");
            assert!(names.iter().all(|n| *n == names[0]), "moved: {names:?}");
            threads.push(names[0].clone());
        }
        threads.sort();
        threads.dedup();
        assert_eq!(threads.len(), 2, "served by both threads");
        drop(clients);
        for _ in 0..200 {
            if cores.open() == vec![0, 0] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(cores.open(), vec![0, 0]);
        tokio::task::spawn_blocking(move || cores.stop())
            .await
            .unwrap();
    }
}
