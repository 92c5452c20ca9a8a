//! Which narinfos each source may give, and what happens to recorded ones when that changes.
//!
//! Every configured source has a trust policy (keys whose signature makes a narinfo acceptable, or an
//! explicit `accept_unsigned`), and every policy a short tag. Each recorded narinfo carries the tag it
//! was accepted under. A hit whose tag is not its source's current one is checked again before it is
//! served (and refused if today's policy would refuse it, or its source is gone); after start a
//! background sweep does the same for every row and writes the result, so the check at the hit stays
//! rare. The OCI mirror includes the tag in what it compares, so a changed policy re-checks its entries
//! at the next refresh too.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::app::App;
use crate::index::NarinfoRow;
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::PublicKey;

/// Which narinfos of a source are acceptable.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Those with a valid signature by one of these keys.
    Keys(Vec<PublicKey>),
    /// All of them, signed or not (configured explicitly with `accept_unsigned`).
    AcceptUnsigned,
}

impl Trust {
    /// The policy a source's settings say: `accept_unsigned`, or signatures by `trusted_keys`.
    pub fn configured(accept_unsigned: bool, trusted_keys: &[String]) -> Result<Trust, String> {
        if accept_unsigned {
            return Ok(Trust::AcceptUnsigned);
        }
        PublicKey::parse_all(trusted_keys)
            .map(Trust::Keys)
            .map_err(|e| e.to_string())
    }

    /// Whether `narinfo` is acceptable under this policy.
    pub fn accepts(&self, narinfo: &NarInfo) -> bool {
        match self {
            Trust::Keys(keys) => narinfo.verify_with(keys),
            Trust::AcceptUnsigned => true,
        }
    }
}

/// A source's policy and its tag.
#[derive(Debug, Clone)]
pub struct Policy {
    /// What it accepts.
    pub trust: Trust,
    /// Its tag (never 0: 0 marks rows whose policy is unknown, e.g. migrated ones).
    pub tag: u64,
}

/// What today's policy says of a recorded narinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted under the current policy of its source.
    Current,
    /// Accepted under another policy, and today's accepts it too.
    StillAccepted,
    /// Its source is not configured any more.
    SourceGone,
    /// Today's policy of its source refuses it.
    Refused,
}

/// Every source's policy, by the source name recorded in the index.
#[derive(Debug, Default)]
pub struct Policies {
    by_source: HashMap<String, Policy>,
}

impl Policies {
    /// The policies of `sources` (name, trust).
    pub fn new(sources: impl IntoIterator<Item = (String, Trust)>) -> Policies {
        Policies {
            by_source: sources
                .into_iter()
                .map(|(name, trust)| {
                    let tag = tag(&name, &trust);
                    (name, Policy { trust, tag })
                })
                .collect(),
        }
    }

    /// The current policy of `source`.
    pub fn get(&self, source: &str) -> Option<&Policy> {
        self.by_source.get(source)
    }

    /// The current tag of `source`, if it is configured.
    pub fn tag(&self, source: &str) -> Option<u64> {
        self.by_source.get(source).map(|p| p.tag)
    }

    /// A digest of every source's policy: changes when any key, source or `accept_unsigned` does.
    pub fn digest(&self) -> String {
        let mut tags: Vec<u64> = self.by_source.values().map(|p| p.tag).collect();
        tags.sort_unstable();
        let mut sha = Sha256::new();
        for t in tags {
            sha.update(t.to_le_bytes());
        }
        hex::encode(&sha.finalize()[..16])
    }

    /// Whether `row` may be served under today's policies. Cheap when its tag is current (one map
    /// look-up); otherwise the narinfo is parsed and its signatures checked.
    pub fn verdict(&self, row: &NarinfoRow) -> Verdict {
        let Some(policy) = self.by_source.get(&row.source) else {
            return Verdict::SourceGone;
        };
        if policy.tag == row.policy {
            return Verdict::Current;
        }
        match NarInfo::parse(&row.text) {
            Ok(narinfo) if policy.trust.accepts(&narinfo) => Verdict::StillAccepted,
            _ => Verdict::Refused,
        }
    }
}

/// The tag of `trust` for `source`: the first 8 bytes of a sha256 over the source and its keys.
pub fn tag(source: &str, trust: &Trust) -> u64 {
    let mut sha = Sha256::new();
    sha.update(source.as_bytes());
    sha.update([0]);
    match trust {
        Trust::AcceptUnsigned => sha.update(b"accept-unsigned"),
        Trust::Keys(keys) => {
            let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            keys.sort();
            for k in keys {
                sha.update(k.as_bytes());
                sha.update([0]);
            }
        }
    }
    let digest: [u8; 32] = sha.finalize().into();
    let tag = u64::from_le_bytes(digest[..8].try_into().unwrap_or([1; 8]));
    tag.max(1)
}

/// Rows checked per index transaction by the sweep.
const SWEEP_PAGE: usize = 2048;

/// Checks every recorded narinfo against today's policies once: rows still accepted get the current
/// tag, the others are removed (and counted). Runs in the background after start, unless every row was
/// already checked against exactly today's policies (so an unchanged configuration costs no scan).
pub async fn sweep(app: Arc<App>) {
    let a = app.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(usize, usize), String> {
        let digest = a.policies.digest();
        if a.index
            .trust_checked()
            .map_err(|e| e.to_string())?
            .as_deref()
            == Some(digest.as_str())
        {
            return Ok((0, 0));
        }
        let (mut retagged, mut removed) = (0, 0);
        let mut after: Option<String> = None;
        loop {
            let page = a
                .index
                .narinfo_page(after.as_deref(), SWEEP_PAGE)
                .map_err(|e| e.to_string())?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let (mut keep, mut drop) = (Vec::new(), Vec::new());
            for (hash, row) in &page {
                match a.policies.verdict(row) {
                    Verdict::Current => {}
                    Verdict::StillAccepted => {
                        keep.push((hash.clone(), a.policies.tag(&row.source).unwrap_or(0)))
                    }
                    verdict @ (Verdict::SourceGone | Verdict::Refused) => {
                        a.metrics.trust_dropped(verdict == Verdict::SourceGone);
                        drop.push(hash.clone());
                    }
                }
            }
            if !keep.is_empty() {
                a.index.retag_narinfos(&keep).map_err(|e| e.to_string())?;
            }
            if !drop.is_empty() {
                a.index.remove_narinfos(&drop).map_err(|e| e.to_string())?;
            }
            retagged += keep.len();
            removed += drop.len();
            if page.len() < SWEEP_PAGE {
                break;
            }
            if a.stopped.is_cancelled() {
                return Ok((retagged, removed));
            }
        }
        a.index
            .set_trust_checked(&digest)
            .map_err(|e| e.to_string())?;
        Ok((retagged, removed))
    })
    .await;
    match result {
        Ok(Ok((0, 0))) => {}
        Ok(Ok((retagged, removed))) => tracing::info!(
            retagged,
            removed,
            "recorded narinfos checked against today's trust policies"
        ),
        Ok(Err(e)) => tracing::error!(error = %e, "trust sweep failed"),
        Err(e) => tracing::error!(error = %e, "trust sweep task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::test_vectors::{PUBLIC_KEY_FILE, TOP_XZ};

    fn row(source: &str, policy: u64) -> NarinfoRow {
        NarinfoRow {
            recorded: 0,
            policy,
            source: source.into(),
            signer: String::new(),
            file_hash: crate::nix::hash::Sha256Hash([0; 32]),
            text: TOP_XZ.into(),
        }
    }

    #[test]
    fn a_changed_policy_rechecks_and_a_removed_key_refuses() {
        let key = PublicKey::parse(PUBLIC_KEY_FILE).unwrap();
        let signed_by_key = Policies::new([("http://a/".to_string(), Trust::Keys(vec![key]))]);
        let tag_now = signed_by_key.tag("http://a/").unwrap();
        assert_eq!(
            signed_by_key.verdict(&row("http://a/", tag_now)),
            Verdict::Current
        );
        assert_eq!(
            signed_by_key.verdict(&row("http://a/", 0)),
            Verdict::StillAccepted
        );
        assert_eq!(
            signed_by_key.verdict(&row("http://gone/", tag_now)),
            Verdict::SourceGone
        );
        let no_keys = Policies::new([("http://a/".to_string(), Trust::Keys(vec![]))]);
        assert_eq!(
            no_keys.verdict(&row("http://a/", tag_now)),
            Verdict::Refused
        );
        let unsigned = Policies::new([("http://a/".to_string(), Trust::AcceptUnsigned)]);
        assert_ne!(unsigned.tag("http://a/"), Some(tag_now));
        assert_eq!(
            unsigned.verdict(&row("http://a/", tag_now)),
            Verdict::StillAccepted
        );
    }
}
