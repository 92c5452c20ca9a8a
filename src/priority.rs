//! Background work that must not compete with clients: the calling thread's priority lowered.

/// Nice 19 and the idle I/O class for the calling thread only (Linux threads have their own). Used by
/// threads that exist for background work alone (transcoding, verifying a NAR fetched ahead): it cannot
/// be undone without privileges, so never call it on a pooled thread.
pub fn lower() {
    // SAFETY: plain syscalls on the calling thread's id; failures only leave the priority as it was.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) != 0 {
            tracing::warn!("cannot lower a background thread's CPU priority");
        }
        // IOPRIO_WHO_PROCESS (1) of this thread (0), class IDLE (3) in the top bits.
        libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
    }
}
