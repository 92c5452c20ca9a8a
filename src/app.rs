//! The running appliance: configuration, index, store, sources and fills, shared by every request.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::budget::Budget;
use crate::config::Config;
use crate::fill::{FillLimits, Fills};
use crate::index::{Index, IndexError};
use crate::metrics::{Metrics, SourceName};
use crate::nix::signing::{PublicKey, SecretKey};
use crate::sources::{OciSource, Sources, Upstream};
use crate::store::{NarStore, StoreError};
use crate::trust::{Policies, Trust};

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
    /// The admin token file cannot be read.
    #[error("admin token file {path}: {source}")]
    AdminToken {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The signing key file cannot be read or is not a Nix secret key (its content is never shown).
    #[error("signing key file {path}: {reason}")]
    SigningKey {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
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
    /// Every source's trust policy, which recorded narinfos are checked against.
    pub policies: Policies,
    /// The disk budget.
    pub budget: Arc<Budget>,
    /// The key the appliance signs with, if any.
    pub signing_key: Option<SecretKey>,
    /// Its public half as `name:base64`, or empty: recorded with each signed narinfo.
    pub signer: String,
    /// The token that allows `POST /_refresh` from other hosts than loopback.
    pub admin_token: Option<String>,
    /// NAR downloads in progress.
    pub fills: Fills,
    /// Upstream narinfo lookups in progress, one per hash.
    pub lookups: crate::lookup::Lookups,
    /// Prometheus metrics and recent activity.
    pub metrics: Metrics,
    /// Issue 16: stored NARs waiting to be transcoded to zstd.
    pub transcoder: crate::transcode::Transcoder,
    /// Issue 16: warm jobs.
    pub warm: crate::warm::WarmJobs,
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
        let index = Index::open(&index_path, None).map_err(|source| StartError::Index {
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
            .map(|u| {
                let trust = if u.accept_unsigned {
                    tracing::warn!(source = %u.url, "accepting unsigned narinfos from this source (accept_unsigned)");
                    Trust::AcceptUnsigned
                } else {
                    let keys = u.trusted_keys.iter().map(|k| PublicKey::parse(k));
                    Trust::Keys(keys.collect::<Result<_, _>>().map_err(|e| e.to_string())?)
                };
                Upstream::new(&u.url, client.clone(), config.upstream_timeout, trust)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Upstream)?;
        let oci = match &config.oci {
            Some(c) => {
                if c.accept_unsigned {
                    tracing::warn!(repo = %c.repo, "accepting unsigned narinfos from the OCI source (oci_accept_unsigned)");
                }
                Some(
                    OciSource::new(c, client.clone(), config.upstream_timeout)
                        .map_err(StartError::Upstream)?,
                )
            }
            None => None,
        };
        let metrics = Metrics::new(
            oci.iter()
                .map(|o| (o.id(), true))
                .chain(upstreams.iter().map(|u| (u.url(), false)))
                .map(|(name, oci)| SourceName {
                    name: name.to_string(),
                    oci,
                })
                .collect(),
        );
        let oci = oci.map(|o| {
            let m = metrics.source(o.id());
            o.with_metrics(m)
        });
        let upstreams: Vec<Upstream> = upstreams
            .into_iter()
            .map(|u| {
                let m = metrics.source(u.url());
                u.with_metrics(m)
            })
            .collect();
        let admin_token = match &config.admin_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| StartError::AdminToken {
                        path: path.display().to_string(),
                        source: e,
                    })?,
            )
            .filter(|t| !t.is_empty()),
            None => None,
        };
        let signing_key = match &config.signing_key_file {
            Some(path) => Some(load_signing_key(path)?),
            None => None,
        };
        let signer = signing_key
            .as_ref()
            .map(|k| k.public_key().to_string())
            .unwrap_or_default();
        let policies = Policies::new(
            oci.iter()
                .map(|o: &OciSource| (o.id().to_string(), o.trust().clone()))
                .chain(
                    upstreams
                        .iter()
                        .map(|u: &Upstream| (u.url().to_string(), u.trust().clone())),
                ),
        );
        let fills = Fills::new(FillLimits {
            max_running: config.max_fills,
            max_queued: config.fill_queue,
            abandon_grace: config.fill_abandon_grace,
            min_rate: config.fill_min_rate,
            rate_window: config.fill_rate_window,
            stall_timeout: config.stall_timeout,
        });
        let budget = Budget::new(config.max_size, config.min_free);
        Ok(Arc::new(App {
            config,
            index,
            store,
            sources: Sources::new(oci, upstreams),
            policies,
            budget,
            signing_key,
            signer,
            admin_token,
            fills,
            lookups: crate::lookup::Lookups::default(),
            metrics,
            transcoder: Default::default(),
            warm: Default::default(),
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
        }))
    }

    /// Starts the appliance's background work (see `housekeeping.rs`); await the result at shutdown.
    pub fn start_background(self: &Arc<Self>) -> crate::housekeeping::Background {
        crate::housekeeping::start(self)
    }
}

/// Reads the appliance's secret key, warning when others than its owner may read the file.
fn load_signing_key(path: &Path) -> Result<SecretKey, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |reason: String| StartError::SigningKey {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "signing key file is readable by group or others; chmod 600 it"
        );
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    // The parse error names what is wrong with the format, never the key material.
    SecretKey::parse(&text).map_err(|e| fail(format!("not a Nix secret key: {e}")))
}
