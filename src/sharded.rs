//! State written on every cache hit, kept in one slot per thread so that two threads answering hits
//! at once do not write the same memory.
//!
//! Why: on this 2-core machine the same narinfo hit cost about 1.5 µs more of CPU with two worker
//! threads than with one (docs/benchmarks.md, "Narinfo hits: what two threads share"). Every lock and
//! every atomic counter that both threads write moves its cache line from one core to the other; a hit
//! did a dozen such writes. A slot per thread makes each write local; the reader (the access-time
//! flush, every 30 s) adds the slots up.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Slots per sharded value. Threads beyond this share slots (still correct, only less private).
pub const SLOTS: usize = 16;

/// A value in its own cache line (two lines: adjacent-line prefetch pairs them on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// The slot of the calling thread: threads are numbered as they first ask.
pub fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    // A thread whose locals are already gone (it is ending) shares slot 0.
    SLOT.try_with(|s| *s).unwrap_or(0)
}

/// `SLOTS` values, each in its own cache line; a thread writes its own ([`Sharded::local`]).
#[derive(Debug)]
pub struct Sharded<T> {
    slots: [Padded<T>; SLOTS],
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Sharded<T> {
        Sharded {
            slots: std::array::from_fn(|_| Padded::default()),
        }
    }
}

impl<T> Sharded<T> {
    /// The calling thread's slot.
    pub fn local(&self) -> &T {
        &self.slots[slot()].0
    }

    /// Every slot, to add them up.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn threads_write_their_own_slots_and_the_sum_is_exact() {
        let counter: Sharded<AtomicU64> = Sharded::default();
        std::thread::scope(|s| {
            for _ in 0..(SLOTS + 3) {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counter.local().fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let total: u64 = counter.all().map(|c| c.load(Ordering::Relaxed)).sum();
        assert_eq!(total, (SLOTS as u64 + 3) * 1000);
        assert!(std::mem::align_of::<Padded<AtomicU64>>() >= 128);
        assert_eq!(slot(), slot(), "a thread keeps its slot");
    }
}
