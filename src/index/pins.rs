//! Named pins (issue 16): each pin holds the NARs of a closure, and every NAR it holds is protected
//! from eviction (one holder per pin in the protection count). Replacing a pin takes the new set's
//! holds before it gives up the old one's, in one transaction, so a NAR both sets share is never
//! unprotected in between and a NAR only the old set held is released.

use std::collections::{HashMap, HashSet};

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::nars::protect_in;
use super::tables::*;
use super::{Index, IndexError};
use crate::nix::hash::Sha256Hash;

/// A pin as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The store paths asked for (the roots of the closure).
    pub roots: Vec<String>,
    /// How many store paths their closure has.
    pub paths: u64,
    /// FileHashes (nix32) of the closure's NARs, each held by this pin.
    pub file_hashes: Vec<String>,
    /// Unix time it was set.
    pub set_at: u64,
    /// Who set it: `config` (the config file's `pins`) or `api` (`nixcache warm --pin`).
    pub origin: String,
}

impl PinRecord {
    fn hashes(&self) -> Vec<Sha256Hash> {
        self.file_hashes
            .iter()
            .filter_map(|h| Sha256Hash::from_nix32(h).ok())
            .collect()
    }
}

/// A pin with what it holds on disk now.
#[derive(Debug, Clone, Serialize)]
pub struct PinUsage {
    /// Its name.
    pub name: String,
    /// The record.
    #[serde(flatten)]
    pub record: PinRecord,
    /// NARs it holds.
    pub nars: u64,
    /// Of which on disk.
    pub nars_stored: u64,
    /// Bytes of those on disk.
    pub bytes: u64,
}

fn decode(raw: &[u8]) -> Result<PinRecord, IndexError> {
    serde_json::from_slice(raw).map_err(|e| IndexError::Corrupt(e.to_string()))
}

fn encode(pin: &PinRecord) -> Result<Vec<u8>, IndexError> {
    serde_json::to_vec(pin).map_err(|e| IndexError::Corrupt(e.to_string()))
}

impl Index {
    /// Every pin with its size on disk, by name.
    pub fn pins(&self) -> Result<Vec<PinUsage>, IndexError> {
        self.read(|tx| {
            let stored = tx.open_table(STORED)?;
            let mut out = Vec::new();
            for row in tx.open_table(PINS)?.iter()? {
                let (k, v) = row?;
                let record = decode(v.value())?;
                let (mut nars_stored, mut bytes) = (0, 0);
                for h in record.hashes() {
                    if let Some(s) = stored.get(h.0)? {
                        nars_stored += 1;
                        bytes += s.value().1;
                    }
                }
                out.push(PinUsage {
                    name: k.value().to_string(),
                    nars: record.file_hashes.len() as u64,
                    record,
                    nars_stored,
                    bytes,
                });
            }
            Ok(out)
        })
    }

    /// Bytes the protected NARs would take if pin `name` held exactly `new` (FileHash, size when not on
    /// disk yet) instead of what it holds now: what the disk budget must fit.
    pub fn pinned_bytes_with(
        &self,
        name: &str,
        new: &[(Sha256Hash, u64)],
    ) -> Result<u64, IndexError> {
        self.read(|tx| {
            let old: HashSet<Sha256Hash> = match tx.open_table(PINS)?.get(name)? {
                Some(v) => decode(v.value())?.hashes().into_iter().collect(),
                None => HashSet::new(),
            };
            let new_sizes: HashMap<Sha256Hash, u64> = new.iter().copied().collect();
            let stored = tx.open_table(STORED)?;
            let mut total = 0;
            for row in tx.open_table(PROTECTED)?.iter()? {
                let (k, v) = row?;
                let h = Sha256Hash(k.value());
                let holders = v.value().saturating_sub(u64::from(old.contains(&h)))
                    + u64::from(new_sizes.contains_key(&h));
                if holders > 0 {
                    total += stored.get(h.0)?.map_or(0, |s| s.value().1);
                }
            }
            let protected = tx.open_table(PROTECTED)?;
            for (h, size) in &new_sizes {
                if protected.get(h.0)?.is_none() {
                    total += stored.get(h.0)?.map_or(*size, |s| s.value().1);
                }
            }
            Ok(total)
        })
    }

    /// Sets (or replaces) pin `name`: its NARs are protected, and what only the previous version held is
    /// released. Durable.
    pub fn set_pin(&self, name: &str, pin: &PinRecord) -> Result<(), IndexError> {
        self.write(true, |tx| {
            let old = match tx.open_table(PINS)?.get(name)? {
                Some(v) => Some(decode(v.value())?),
                None => None,
            };
            protect_in(tx, &pin.hashes(), 1)?;
            if let Some(old) = old {
                protect_in(tx, &old.hashes(), -1)?;
            }
            tx.open_table(PINS)?.insert(name, encode(pin)?.as_slice())?;
            Ok(())
        })
    }

    /// Removes pin `name`, releasing what it held. False when there was none.
    pub fn remove_pin(&self, name: &str) -> Result<bool, IndexError> {
        self.write(true, |tx| {
            let Some(old) = tx
                .open_table(PINS)?
                .remove(name)?
                .map(|v| decode(v.value()))
                .transpose()?
            else {
                return Ok(false);
            };
            protect_in(tx, &old.hashes(), -1)?;
            Ok(true)
        })
    }
}

/// A NAR was transcoded: the pins holding the original hold the twin instead, inside `tx`.
pub(super) fn transfer(
    tx: &WriteTransaction,
    original: &Sha256Hash,
    twin: &Sha256Hash,
) -> Result<(), IndexError> {
    if tx.open_table(PROTECTED)?.get(original.0)?.is_none() {
        return Ok(());
    }
    let (from, to) = (original.to_nix32(), twin.to_nix32());
    let mut changed = Vec::new();
    for row in tx.open_table(PINS)?.iter()? {
        let (k, v) = row?;
        let mut pin = decode(v.value())?;
        if let Some(at) = pin.file_hashes.iter().position(|h| *h == from) {
            pin.file_hashes[at] = to.clone();
            changed.push((k.value().to_string(), pin));
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let mut pins = tx.open_table(PINS)?;
    for (name, pin) in &changed {
        pins.insert(name.as_str(), encode(pin)?.as_slice())?;
    }
    drop(pins);
    let n = changed.len() as i64;
    protect_in(tx, &[*twin], n)?;
    protect_in(tx, &[*original], -n)
}
