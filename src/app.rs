//! The running appliance: configuration, index, store, sources and fills, shared by every request.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::bucket::Bucket;
use crate::budget::Budget;
use crate::config::Config;
use crate::fill::{FillLimits, Fills};
use crate::index::{Index, IndexError};
use crate::metrics::{Metrics, SourceName};
use crate::nix::signing::{PublicKey, SecretKey};
use crate::sources::{BucketSource, OciSource, Sources, Upstream};
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
    /// A push token file cannot be read, or its token is too short or a duplicate (issue 12).
    #[error(transparent)]
    PushToken(#[from] crate::push::TokenError),
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
    pub lookups: crate::turns::Turns<crate::nix::store_path::StoreHash>,
    /// Prometheus metrics and recent activity.
    pub metrics: Metrics,
    /// LAN pushes: tokens, uploads waiting for their narinfo (issue 12).
    pub pushes: crate::push::Pushes,
    /// Issue 16: stored NARs waiting to be transcoded to zstd.
    pub transcoder: crate::transcode::Transcoder,
    /// Issue 16: warm jobs.
    pub warm: crate::warm::WarmJobs,
    /// Issue 14: narinfos and NARs fetched before a client asks.
    pub prefetch: crate::prefetch::Prefetch,
    /// When it started, for `/_status`.
    pub started: Instant,
    /// Cancelled when shutdown begins: no new connections, in-flight requests drain.
    pub shutdown: CancellationToken,
    /// Cancelled when draining is over: downloads still running are abandoned (nothing is stored).
    pub stopped: CancellationToken,
    /// The shared bucket (issue 13), when configured.
    pub bucket: Option<Arc<Bucket>>,
}

impl App {
    /// Tests: an appliance on the embedded defaults in `dir`, with no upstream and none of its
    /// background tasks running (nothing drains its queues or writes behind the test's back).
    #[cfg(test)]
    pub(crate) fn for_tests(dir: &Path) -> Arc<App> {
        let overrides = crate::config::Overrides {
            data_dir: Some(dir.to_path_buf()),
            ..Default::default()
        };
        let mut config = Config::resolve(&overrides, &|_| None).unwrap();
        config.upstreams.clear();
        App::open(config).unwrap()
    }

    /// Opens the data folder (index, then store: the index lock keeps a second daemon out before any file
    /// is touched) and sets up the sources. No network access and no store scan.
    pub fn open(config: Config) -> Result<Arc<App>, StartError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let index_path = dir.join("index.redb");
        let cache = usize::try_from(config.index_cache_size).unwrap_or(usize::MAX);
        let index = Index::open(&index_path, Some(cache)).map_err(|source| StartError::Index {
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
                if u.accept_unsigned {
                    tracing::warn!(source = %crate::redact::url(&u.url), "accepting unsigned narinfos from this source (accept_unsigned)");
                }
                let trust = Trust::configured(u.accept_unsigned, &u.trusted_keys)?;
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
                        .map_err(StartError::Upstream)?
                        .with_token_hosts(&config.limits.oci_token_hosts),
                )
            }
            None => None,
        };
        // LAN pushes (issue 12): their tokens are sources `push:<name>` for trust and metrics.
        let pushes = crate::push::Pushes::new(&config.push)?;
        let push_sources = pushes.policies();
        let signing_key = match &config.signing_key_file {
            Some(path) => Some(load_signing_key(path)?),
            None => None,
        };
        // Issue 13: the shared bucket, a source whose narinfos this appliance's own key also signs.
        let bucket = match &config.bucket {
            Some(c) => {
                let bucket =
                    Arc::new(Bucket::new(c, client.clone()).map_err(StartError::Upstream)?);
                let mut keys = PublicKey::parse_all(&c.trusted_keys)
                    .map_err(|e| StartError::Upstream(e.to_string()))?;
                keys.extend(signing_key.as_ref().map(|k| k.public_key()));
                Some((bucket.clone(), BucketSource::new(bucket, Trust::Keys(keys))))
            }
            None => None,
        };
        let metrics = Metrics::new(
            bucket
                .iter()
                .map(|(b, _)| (b.id(), false))
                .chain(oci.iter().map(|o| (o.id(), true)))
                .chain(upstreams.iter().map(|u| (u.url(), false)))
                .chain(push_sources.iter().map(|(name, _)| (name.as_str(), false)))
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
        let signer = signing_key
            .as_ref()
            .map(|k| k.public_key().to_string())
            .unwrap_or_default();
        let policies = Policies::new(
            bucket
                .iter()
                .map(|(_, s)| (s.id().to_string(), s.trust().clone()))
                .chain(
                    oci.iter()
                        .map(|o: &OciSource| (o.id().to_string(), o.trust().clone())),
                )
                .chain(
                    upstreams
                        .iter()
                        .map(|u: &Upstream| (u.url().to_string(), u.trust().clone())),
                )
                .chain(push_sources),
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
        // Misses remembered under other trust settings prove nothing now.
        if index
            .forget_negative_unless(&policies.digest())
            .map_err(|source| StartError::Index {
                path: index_path.display().to_string(),
                source,
            })?
        {
            tracing::info!(
                "trust settings changed since the last start: remembered misses forgotten"
            );
        }
        let mut sources = Sources::new(oci, upstreams).with_lookup_cap(
            config.limits.max_upstream_lookups,
            metrics.limits().lookups_refused.clone(),
        );
        let bucket = match bucket {
            Some((bucket, source)) => {
                let m = metrics.source(source.id());
                sources = sources.with_bucket(source.with_metrics(m));
                Some(bucket)
            }
            None => None,
        };
        let prefetch = crate::prefetch::Prefetch::new(config.prefetch, config.prefetch_max_size);
        Ok(Arc::new(App {
            config,
            index,
            store,
            sources,
            policies,
            budget,
            signing_key,
            signer,
            admin_token,
            fills,
            lookups: crate::turns::Turns::default(),
            metrics,
            pushes,
            transcoder: Default::default(),
            warm: Default::default(),
            prefetch,
            started: Instant::now(),
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
            bucket,
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
