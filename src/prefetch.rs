//! Fetching ahead (issue 14): what a client will ask for next, fetched from the sources before it asks.
//!
//! A Nix client copying a closure asks for the narinfos one at a time, following References, then for
//! the NARs one at a time, leaves first, each ask waiting for the answer to the last. On a cold
//! appliance every one of those answers waits for a source, and the first machine of the LAN pays for
//! it. So, when a narinfo is fetched from a source, the narinfos of its references are fetched too (and
//! theirs in turn); and when a client asks for a narinfo whose NAR is not on disk, that NAR is fetched.
//! By the time the client asks, the narinfo is an index hit and the NAR is on disk or a fill already
//! under way, which the client joins (`fill.rs`): nothing is downloaded twice.
//!
//! What is fetched ahead goes through the same paths as a client's ask: narinfos are validated,
//! signed and recorded by `lookup.rs`, NARs verified by a fill before anything is kept.
//!
//! Bounds: [`NARINFO_WORKERS`] lookups and [`NAR_WORKERS`] NAR downloads at once; at most [`QUEUE_MAX`]
//! of each waiting (more are dropped: the client then asks for them itself, as without fetching ahead).
//! A NAR is fetched ahead only for a narinfo a client asked for with GET (a HEAD, as `nix copy --to`
//! sends for every path before pushing, costs narinfos, never NARs), only when it is at most
//! `prefetch_max_size`, and only while a download slot is free for clients. `prefetch = false` turns
//! all of it off.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::app::App;
use crate::fill::{Fills, Joined, Want};
use crate::lookup::Asker;
use crate::metrics::NarinfoResult;
use crate::nix::nar_name::NarName;
use crate::nix::store_path::StoreHash;

/// Narinfo lookups fetched ahead at once (a Nix client asks for one at a time).
pub const NARINFO_WORKERS: usize = 4;
/// NARs fetched ahead at once.
pub const NAR_WORKERS: usize = 2;
/// Most hashes waiting in each queue, and most narinfos fetched ahead that wait for a client's ask.
pub const QUEUE_MAX: usize = 100_000;

/// What is waiting to be fetched ahead.
pub struct Prefetch {
    enabled: bool,
    max_nar_size: u64,
    state: Mutex<State>,
    /// `State::ahead` counted by [`AheadFilter`] cell, read without the lock on every narinfo hit.
    ahead_filter: AheadFilter,
    narinfo_ready: Notify,
    nar_ready: Notify,
}

#[derive(Default)]
struct State {
    /// Narinfos to look up, in the order their referrers were fetched (the order a client asks).
    narinfos: VecDeque<StoreHash>,
    /// Those hashes, and those being looked up: each is queued once at a time.
    queued: HashSet<StoreHash>,
    /// NARs to fetch, newest first: a client asks for the narinfos from the top of a closure down and
    /// for the NARs from the leaves up.
    nars: Vec<StoreHash>,
    /// Narinfos fetched ahead whose NAR waits for a client to ask for the narinfo.
    ahead: HashSet<StoreHash>,
}

impl Prefetch {
    /// Nothing queued. `max_nar_size`: the largest NAR file fetched ahead.
    pub fn new(enabled: bool, max_nar_size: u64) -> Prefetch {
        Prefetch {
            enabled,
            max_nar_size,
            state: Mutex::default(),
            ahead_filter: AheadFilter::default(),
            narinfo_ready: Notify::new(),
            nar_ready: Notify::new(),
        }
    }

    /// A narinfo of `hash` was just fetched from a source for `asker`, with these references.
    pub fn fetched(
        &self,
        app: &App,
        hash: StoreHash,
        references: impl Iterator<Item = StoreHash>,
        asker: Asker,
    ) {
        if !self.enabled || asker == Asker::Warm {
            return;
        }
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let mut queued = 0;
        for r in references.filter(|r| *r != hash) {
            if s.queued.contains(&r) {
                continue;
            }
            if s.narinfos.len() >= QUEUE_MAX {
                app.metrics.prefetch("narinfo", "dropped");
                continue;
            }
            s.queued.insert(r);
            s.narinfos.push_back(r);
            queued += 1;
        }
        match asker {
            Asker::Client => self.queue_nar(app, &mut s, hash),
            Asker::Probe | Asker::Ahead => {
                if s.ahead.len() >= QUEUE_MAX {
                    // Narinfos fetched ahead that no client asked for: forgotten together.
                    s.ahead.clear();
                    self.ahead_filter.clear();
                }
                if s.ahead.insert(hash) {
                    self.ahead_filter.add(&hash, 1);
                }
            }
            Asker::Warm => {}
        }
        drop(s);
        for _ in 0..queued.min(NARINFO_WORKERS) {
            self.narinfo_ready.notify_one();
        }
    }

    /// A client's GET of the narinfo of `hash` found it in the index: if it was fetched ahead (or
    /// probed with HEAD), its NAR is fetched now. One atomic read when it was not.
    pub fn asked(&self, app: &App, hash: &StoreHash) {
        if !self.ahead_filter.may_hold(hash) {
            return;
        }
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.ahead.remove(hash) {
            self.ahead_filter.add(hash, -1);
            self.queue_nar(app, &mut s, *hash);
        }
    }

    fn queue_nar(&self, app: &App, s: &mut State, hash: StoreHash) {
        if s.nars.len() >= QUEUE_MAX {
            app.metrics.prefetch("nar", "dropped");
            return;
        }
        s.nars.push(hash);
        self.nar_ready.notify_one();
    }
}

/// Cells of the [`AheadFilter`] (64 KiB): with a thousand narinfos waiting, one hit in twenty takes
/// the lock for nothing.
const FILTER_CELLS: usize = 1 << 14;

/// How many hashes of `State::ahead` fall in each cell, written under the state lock and read without
/// it. A hit on a hash whose cell is 0 was not fetched ahead: no lock taken. Narinfos fetched ahead that
/// no client ever asks for (paths its machines already had) stay there until `QUEUE_MAX`, so a count
/// of them would make every hit take the lock, which both cores then pass between them (see
/// `sharded.rs`).
struct AheadFilter {
    cells: Box<[AtomicU32]>,
}

impl Default for AheadFilter {
    fn default() -> AheadFilter {
        AheadFilter {
            cells: (0..FILTER_CELLS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl AheadFilter {
    fn cell(&self, hash: &StoreHash) -> &AtomicU32 {
        let mut head = [0; 8];
        head.copy_from_slice(&hash.as_str().as_bytes()[..8]);
        // Fibonacci hashing: the top bits of the product mix all eight bytes.
        let mixed = u64::from_le_bytes(head).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.cells[(mixed >> (64 - FILTER_CELLS.trailing_zeros())) as usize]
    }

    /// Whether `hash` may be in the set (false: it is not).
    fn may_hold(&self, hash: &StoreHash) -> bool {
        self.cell(hash).load(Ordering::Relaxed) != 0
    }

    /// Counts `hash` in (`1`) or out (`-1`); under the state lock.
    fn add(&self, hash: &StoreHash, by: i32) {
        let cell = self.cell(hash);
        cell.store(
            cell.load(Ordering::Relaxed).saturating_add_signed(by),
            Ordering::Relaxed,
        );
    }

    /// Empties it; under the state lock.
    fn clear(&self) {
        for cell in self.cells.iter() {
            cell.store(0, Ordering::Relaxed);
        }
    }
}

/// Runs the workers until shutdown.
pub async fn run(app: Arc<App>) {
    if !app.prefetch.enabled {
        return;
    }
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..NARINFO_WORKERS {
        workers.spawn(worker(
            app.clone(),
            "narinfo",
            |s| s.narinfos.pop_front(),
            |p| &p.narinfo_ready,
            lookup_narinfo,
        ));
    }
    for _ in 0..NAR_WORKERS {
        workers.spawn(worker(
            app.clone(),
            "nar",
            |s| s.nars.pop(),
            |p| &p.nar_ready,
            fetch_nar,
        ));
    }
    while let Some(ended) = workers.join_next().await {
        if let Err(e) = ended {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// Takes hashes from one queue (`take`), waiting on `ready` while it is empty, and runs `job` on each
/// until shutdown; each job's result is counted under `kind`.
async fn worker<Fut>(
    app: Arc<App>,
    kind: &'static str,
    take: fn(&mut State) -> Option<StoreHash>,
    ready: fn(&Prefetch) -> &Notify,
    job: impl Fn(Arc<App>, StoreHash) -> Fut,
) where
    Fut: Future<Output = &'static str>,
{
    let p = &app.prefetch;
    loop {
        let next = p.state.lock().ok().and_then(|mut s| take(&mut s));
        let Some(hash) = next else {
            tokio::select! {
                () = ready(p).notified() => continue,
                () = app.stopped.cancelled() => return,
            }
        };
        let result = tokio::select! {
            r = job(app.clone(), hash) => r,
            () = app.stopped.cancelled() => return,
        };
        app.metrics.prefetch(kind, result);
    }
}

/// Looks up the narinfo of `hash` as fetching ahead; the metric result.
async fn lookup_narinfo(app: Arc<App>, hash: StoreHash) -> &'static str {
    let result = match crate::lookup::narinfo_as(&app, hash, Asker::Ahead).await {
        Ok((NarinfoResult::Fetched, _)) => "fetched",
        Ok((NarinfoResult::Hit, _)) => "known",
        Ok(_) => "absent",
        Err(_) => "failed",
    };
    if let Ok(mut s) = app.prefetch.state.lock() {
        s.queued.remove(&hash);
    }
    result
}

/// Fetches the NAR of the recorded narinfo of `hash` unless it is on disk; the metric result.
async fn fetch_nar(app: Arc<App>, hash: StoreHash) -> &'static str {
    let app = &app;
    let Ok(Some(row)) = app.index.narinfo_shared(&hash) else {
        return "skipped";
    };
    let Ok(Some((record, stored))) = app.index.nar(&row.file_hash) else {
        return "skipped";
    };
    if stored {
        return "known";
    }
    if record.file_size.unwrap_or(record.nar_size) > app.prefetch.max_nar_size
        || !app.fills.has_free_slot()
    {
        return "skipped";
    }
    let name = NarName {
        file_hash: row.file_hash,
        compression: record.compression,
    };
    // A transcoded twin whose file went is made again from its original, as for a client.
    match crate::transcode::regenerate(app, &name).await {
        Ok(true) => return "known",
        Ok(false) => {}
        Err(_) => return "failed",
    }
    match Fills::join_or_start(app, name, record, Want::Keep) {
        Ok(Joined::Fill(sub)) => match sub.fill().finished().await {
            Ok(_) => "fetched",
            Err(_) => "failed",
        },
        Ok(Joined::Stored) => "known",
        Ok(Joined::PassThrough) => "skipped",
        Err(_) => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: usize) -> StoreHash {
        const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        // Distinct for every i below 2^30: five bits per character, the rest fixed.
        let text: String = (0..32)
            .map(|k| ALPHABET[if k < 6 { (i >> (5 * k)) % 32 } else { k }] as char)
            .collect();
        text.parse().unwrap()
    }

    /// The filter never says "not there" of a hash that is there, and mostly says it of the others.
    #[test]
    fn the_ahead_filter_holds_what_was_added_until_it_is_taken_out() {
        let filter = AheadFilter::default();
        let held: Vec<StoreHash> = (0..1000).map(hash).collect();
        for h in &held {
            filter.add(h, 1);
        }
        assert!(held.iter().all(|h| filter.may_hold(h)));
        let others = (1000..11_000)
            .filter(|i| filter.may_hold(&hash(*i)))
            .count();
        assert!(
            others < 1500,
            "{others} of 10000 other hashes take the lock"
        );
        for h in &held[..500] {
            filter.add(h, -1);
        }
        assert!(held[500..].iter().all(|h| filter.may_hold(h)));
        for h in &held[500..] {
            filter.add(h, -1);
        }
        assert!(held.iter().all(|h| !filter.may_hold(h)), "all counted out");
        filter.add(&held[0], 1);
        filter.clear();
        assert!(!filter.may_hold(&held[0]));
    }

    /// An appliance with fetching ahead on whose workers never run: what is queued stays queued.
    fn app_without_workers(dir: &std::path::Path) -> Arc<App> {
        let app = App::for_tests(dir);
        assert!(app.prefetch.enabled, "fetching ahead is on by default");
        app
    }

    /// One narinfo whose references would take the narinfo queue past `QUEUE_MAX`: the rest are
    /// dropped and counted.
    #[tokio::test]
    async fn the_narinfo_queue_is_capped_and_what_does_not_fit_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_without_workers(dir.path());
        let references = (1..=QUEUE_MAX + 3).map(hash);
        app.prefetch
            .fetched(&app, hash(0), references, Asker::Probe);
        assert_eq!(app.prefetch.state.lock().unwrap().narinfos.len(), QUEUE_MAX);
        assert_eq!(app.metrics.prefetch_count("narinfo", "dropped"), 3);
    }

    #[tokio::test]
    async fn the_nar_queue_is_capped_and_what_does_not_fit_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_without_workers(dir.path());
        for i in 0..QUEUE_MAX + 3 {
            app.prefetch
                .fetched(&app, hash(i), std::iter::empty(), Asker::Client);
        }
        assert_eq!(app.metrics.prefetch_count("nar", "dropped"), 3);
        let s = app.prefetch.state.lock().unwrap();
        assert_eq!(s.nars.len(), QUEUE_MAX);
        assert_eq!(
            s.nars[QUEUE_MAX - 1],
            hash(QUEUE_MAX - 1),
            "the last that fit"
        );
    }

    #[tokio::test]
    async fn narinfos_fetched_ahead_that_nobody_asks_for_are_forgotten_together_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_without_workers(dir.path());
        for i in 0..QUEUE_MAX {
            app.prefetch
                .fetched(&app, hash(i), std::iter::empty(), Asker::Probe);
        }
        assert_eq!(app.prefetch.state.lock().unwrap().ahead.len(), QUEUE_MAX);
        assert!(app.prefetch.ahead_filter.may_hold(&hash(0)));
        // One more: the set was full, so all of them go (and the filter with them), then it is kept.
        app.prefetch
            .fetched(&app, hash(QUEUE_MAX), std::iter::empty(), Asker::Probe);
        let s = app.prefetch.state.lock().unwrap();
        assert_eq!(s.ahead.len(), 1);
        assert!(s.ahead.contains(&hash(QUEUE_MAX)));
        drop(s);
        assert!(app.prefetch.ahead_filter.may_hold(&hash(QUEUE_MAX)));
        // A client's later GET of a forgotten one fetches no NAR for it.
        app.prefetch.asked(&app, &hash(0));
        assert!(app.prefetch.state.lock().unwrap().nars.is_empty());
    }
}
