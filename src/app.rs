//! The running appliance: configuration, index, store, sources and fills, shared by every request.

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fill::Fills;
use crate::index::{Index, IndexError};
use crate::sources::{Sources, Upstream};
use crate::store::{NarStore, StoreError};

/// How many NAR downloads run at once; more wait for a slot.
pub const MAX_CONCURRENT_FILLS: usize = 16;

/// Why the appliance could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data folder cannot be created or used.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The index cannot be opened (another nixcache may hold it).
    #[error("index {path}: {source}")]
    Index {
        /// The index file.
        path: String,
        /// Why.
        source: IndexError,
    },
    /// The NAR store cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client or an upstream could not be set up.
    #[error("upstream: {0}")]
    Upstream(String),
}

/// Everything a request handler or background task needs.
pub struct App {
    /// The configuration it runs with.
    pub config: Config,
    /// The redb index.
    pub index: Index,
    /// The NAR files.
    pub store: NarStore,
    /// The upstream caches.
    pub sources: Sources,
    /// NAR downloads in progress.
    pub fills: Fills,
    /// When it started, for `/_status`.
    pub started: Instant,
    /// Cancelled when shutdown begins: no new connections, in-flight requests drain.
    pub shutdown: CancellationToken,
    /// Cancelled when draining is over: downloads still running are abandoned (nothing is stored).
    pub stopped: CancellationToken,
}

impl App {
    /// Opens the data folder (index, then store: the index lock keeps a second daemon out before any file
    /// is touched) and sets up the sources. No network access and no store scan.
    pub fn open(config: Config) -> Result<Arc<App>, StartError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let index_path = dir.join("index.redb");
        let index = Index::open(&index_path).map_err(|source| StartError::Index {
            path: index_path.display().to_string(),
            source,
        })?;
        let store = NarStore::open(Path::new(dir))?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("nixcache/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.upstream_timeout)
            .build()
            .map_err(|e| StartError::Upstream(e.to_string()))?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, client.clone(), config.upstream_timeout))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Upstream)?;
        Ok(Arc::new(App {
            config,
            index,
            store,
            sources: Sources::new(upstreams),
            fills: Fills::new(MAX_CONCURRENT_FILLS),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
        }))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
