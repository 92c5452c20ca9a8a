//! Stored NARs sent with `sendfile(2)`: the file's bytes go from the page cache to the socket without
//! passing through the appliance's memory (issue 14: one connection of a 256 MiB NAR ran at 0.86× nginx,
//! which sends with `sendfile`; copying every byte out of the page cache and back cost as much CPU as the
//! client's own copy).
//!
//! hyper writes every byte of a response itself and has no way to send a file. So the body hands hyper
//! *stand-ins*: slices of [`STAND_IN`], a read-only mapping of zeros nobody reads, as long as the file's
//! chunks; and it queues each chunk's (file, offset, length) in the connection's [`Splices`] as it hands
//! the stand-in over. hyper queues body chunks as they are (`writev(true)`, never copied into its own
//! buffer, see [`super::connection::http1_builder`]) and writes them in order, so when the connection's
//! IO is asked to write a slice that lies inside [`STAND_IN`], it is the head of the queue's chunk: the IO
//! `sendfile`s that instead and reports the same number of bytes written. Anything out of step (a
//! stand-in with nothing queued, a length that does not match, a file shorter than announced) fails the
//! connection: a client never gets zeros, nor a short body that looks complete. A file whose filesystem
//! cannot `sendfile` (`EINVAL`) is copied through user space instead.
//!
//! Where no connection IO of ours serves the response (the router called in-process), the response's
//! ordinary body reads the file through user space: [`SendFile`] is only an offer, in the response's
//! extensions, which [`super::connection`] takes up.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Bytes of a file handed to hyper at once (one queue entry). Small enough that a cold file on a slow disk
/// holds up a worker for one chunk's read at most (see [`SpliceBody`]), large enough that the per-chunk
/// work is nothing.
const CHUNK: usize = 2 << 20;
/// Bytes read and written at once where the file cannot be sent with `sendfile`.
const COPY: usize = 256 << 10;

/// What a body's file chunks stand in for: never read, never sent. A read-only anonymous mapping, made
/// once and never touched, so no memory backs it (a `static` array would be 2 MiB of the binary).
static STAND_IN: std::sync::LazyLock<&'static [u8]> = std::sync::LazyLock::new(|| {
    // SAFETY: a new private anonymous mapping, not aliased, never unmapped: valid for 'static.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            CHUNK,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(at != libc::MAP_FAILED, "cannot map the sendfile stand-in");
        std::slice::from_raw_parts(at.cast::<u8>(), CHUNK)
    }
});

/// Whether `slice` is (part of) a stand-in for a file chunk.
pub fn is_stand_in(slice: &[u8]) -> bool {
    let base = STAND_IN.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    !slice.is_empty() && at >= base && at + slice.len() <= base + CHUNK
}

/// An offer, in a response's extensions, to send its body from `file` with `sendfile`: `len` bytes from
/// `start`. The response's own body sends the same bytes the ordinary way. (`Clone`: what response
/// extensions hold must be.)
#[derive(Clone)]
pub struct SendFile {
    /// The stored file, verified when it was stored.
    pub file: Arc<File>,
    /// The first byte to send.
    pub start: u64,
    /// How many.
    pub len: u64,
    /// Counts the bytes as they are handed to the connection.
    pub served: prometheus::IntCounter,
}

impl SendFile {
    /// The body that sends the file through `splices`, the queue of the connection it is written to.
    pub fn into_body(self, splices: Arc<Splices>) -> Body {
        advise(&self.file, self.start, self.len.min(CHUNK as u64));
        Body::new(SpliceBody {
            offset: self.start,
            end: self.start + self.len,
            file: self.file,
            served: self.served,
            splices,
        })
    }
}

/// Sets or clears `TCP_CORK` on `socket`: while set, the kernel sends only full segments, as nginx does
/// around `sendfile` (`tcp_nopush`); clearing it sends what is left. Whether it is now set.
pub fn cork(socket: &impl AsRawFd, on: bool) -> bool {
    let value = libc::c_int::from(on);
    // SAFETY: an int option set from a valid pointer for its size; the descriptor is open.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    on && r == 0
}

/// One chunk of a file to send in place of its stand-in.
#[derive(Debug)]
pub struct Splice {
    file: Arc<File>,
    offset: u64,
    /// Bytes of the chunk not sent yet.
    left: usize,
}

impl Splice {
    /// Sends the next bytes of the chunk, as many as `socket` takes at once; exactly `stand_in` must be
    /// left of it (the stand-in's rest, as hyper offers it).
    pub fn send(&mut self, socket: &impl AsRawFd, stand_in: usize) -> io::Result<usize> {
        if stand_in != self.left {
            return Err(io::Error::other(
                "a response body is out of step with the file it stands for",
            ));
        }
        let mut offset = libc::off_t::try_from(self.offset).map_err(io::Error::other)?;
        // SAFETY: both descriptors are open for the call (owned by `socket` and `self.file`), and
        // `offset` is a valid pointer for its duration.
        let sent = unsafe {
            libc::sendfile(
                socket.as_raw_fd(),
                self.file.as_raw_fd(),
                &mut offset,
                self.left,
            )
        };
        let sent = match usize::try_from(sent) {
            Ok(sent) => sent,
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::EINVAL) {
                    return Err(error);
                }
                self.copy(socket)?
            }
        };
        if sent == 0 {
            // The file is shorter than announced (changed under us): never a short body that looks whole.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stored NAR shorter than announced",
            ));
        }
        self.offset += sent as u64;
        self.left -= sent;
        Ok(sent)
    }

    /// Sends the next bytes of the chunk through user space: for a store on a filesystem that cannot
    /// `sendfile` (no splice support: `EINVAL`), which would otherwise fail every large NAR.
    fn copy(&self, socket: &impl AsRawFd) -> io::Result<usize> {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "the store's filesystem cannot sendfile; large NARs are copied through user space"
            );
        });
        let mut buf = vec![0; self.left.min(COPY)];
        let read = self.file.read_at(&mut buf, self.offset)?;
        if read == 0 {
            return Ok(0);
        }
        // SAFETY: `socket` is open for the call, and `buf` holds `read` initialized bytes.
        let sent = unsafe { libc::write(socket.as_raw_fd(), buf.as_ptr().cast(), read) };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }

    /// Whether the whole chunk went.
    pub fn done(&self) -> bool {
        self.left == 0
    }
}

/// A connection's file chunks, in the order their stand-ins were handed to hyper (which writes them in
/// that order: a pipelined response's chunks queue behind the one being sent).
#[derive(Debug, Default)]
pub struct Splices(Mutex<VecDeque<Splice>>);

impl Splices {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Splice>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The chunk whose stand-in comes next.
    pub fn next(&self) -> Option<Splice> {
        self.lock().pop_front()
    }
}

/// The body of a [`SendFile`]: stand-ins of [`CHUNK`] bytes at most, each queued with its place in the
/// file.
///
/// `sendfile` runs on the async worker, like every socket write. It copies nothing when the file is in
/// the page cache (the usual case: stored NARs are read again and again); a file that is not waits for
/// the disk inside the call. So the kernel is asked to read each next chunk ahead
/// (`POSIX_FADV_WILLNEED`, which does not wait) when the one before it is handed over: at most one
/// chunk's read is ever waited for on a worker.
struct SpliceBody {
    file: Arc<File>,
    offset: u64,
    end: u64,
    served: prometheus::IntCounter,
    splices: Arc<Splices>,
}

impl http_body::Body for SpliceBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let left = this.end - this.offset;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        this.splices.lock().push_back(Splice {
            file: this.file.clone(),
            offset: this.offset,
            left: n,
        });
        this.offset += n as u64;
        this.served.inc_by(n as u64);
        advise(
            &this.file,
            this.offset,
            (this.end - this.offset).min(CHUNK as u64),
        );
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&STAND_IN[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset == self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.offset)
    }
}

/// Asks the kernel to read `len` bytes of `file` from `offset` into the page cache, without waiting.
fn advise(file: &File, offset: u64, len: u64) {
    if len == 0 {
        return;
    }
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: a hint about an open descriptor; no memory is passed.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slices_of_the_stand_in_are_stand_ins() {
        assert!(is_stand_in(&STAND_IN[..10]));
        assert!(is_stand_in(&STAND_IN[CHUNK - 1..]));
        assert!(!is_stand_in(&STAND_IN[..0]));
        let zeros = vec![0u8; 64];
        assert!(!is_stand_in(&zeros));
        assert!(!is_stand_in(b"HTTP/1.1 200 OK\r\n"));
    }

    fn splice(file: &Arc<File>, offset: u64, left: usize) -> Splice {
        Splice {
            file: file.clone(),
            offset,
            left,
        }
    }

    #[test]
    fn a_splice_sends_its_part_of_the_file_and_fails_out_of_step_or_short() {
        use std::io::{Read, Write};
        let mut tmp = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        tmp.write_all(&content).unwrap();
        let file = Arc::new(tmp);
        let (tx, mut rx) = std::os::unix::net::UnixStream::pair().unwrap();

        let mut part = splice(&file, 1_000, 5_000);
        let mut sent = 0;
        while !part.done() {
            sent += part.send(&tx, 5_000 - sent).unwrap();
        }
        let mut got = vec![0; 5_000];
        rx.read_exact(&mut got).unwrap();
        assert_eq!(got, content[1_000..6_000]);

        // hyper offering a stand-in of another length than the chunk's rest: nothing is sent.
        let mut part = splice(&file, 0, 10);
        assert!(part.send(&tx, 9).is_err());
        // A file shorter than announced: what there is, then an error, never a 0-byte "success".
        let mut part = splice(&file, 99_990, 20);
        assert_eq!(part.send(&tx, 20).unwrap(), 10);
        let err = part.send(&tx, 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A real file whose filesystem cannot `sendfile` (procfs: `EINVAL` on this kernel) still goes
    /// out whole, through user space.
    #[test]
    fn a_file_that_cannot_be_sent_with_sendfile_is_copied() {
        use std::io::Read;
        let path = "/proc/self/limits";
        let mut content = Vec::new();
        File::open(path).unwrap().read_to_end(&mut content).unwrap();
        let file = Arc::new(File::open(path).unwrap());
        let (tx, mut rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut offset = 0;
        // SAFETY: both descriptors are open; `offset` is valid for the call.
        let direct = unsafe { libc::sendfile(tx.as_raw_fd(), file.as_raw_fd(), &mut offset, 8) };
        assert_eq!(
            (direct, io::Error::last_os_error().raw_os_error()),
            (-1, Some(libc::EINVAL)),
            "{path} was meant to be a file sendfile refuses; pick another for this kernel"
        );
        let want = &content[10..];
        let mut part = splice(&file, 10, want.len());
        let mut sent = 0;
        while !part.done() {
            sent += part.send(&tx, want.len() - sent).unwrap();
        }
        let mut got = vec![0; want.len()];
        rx.read_exact(&mut got).unwrap();
        assert_eq!(got, want);
    }
}
