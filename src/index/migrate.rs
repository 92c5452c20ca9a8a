//! Upgrades an index written by an older layout, in place and in one transaction: an appliance upgrade
//! must not cost the LAN its cache. A crash during the migration leaves the old layout, migrated again
//! at the next start.

use redb::{ReadableTable, WriteTransaction};

use super::IndexError;
use super::narinfos::add_ref;
use super::records::NarRecord;
use super::tables::*;
use crate::nix::narinfo::NarInfo;

/// Schema 1 → 2: narinfo rows gain their policy tag (0: unknown, so each is checked against today's
/// trust policy before it is served again) and their FileHash; stored rows gain their size; NAR
/// reference counts are computed. The NAR records keep their table (same JSON).
pub(super) fn from_v1(tx: &WriteTransaction) -> Result<(), IndexError> {
    let mut narinfos = 0;
    let mut dropped = 0;
    {
        let old = tx.open_table(v1::NARINFO)?;
        let mut new = tx.open_table(NARINFO)?;
        let mut files = Vec::new();
        for row in old.iter()? {
            let (k, v) = row?;
            let (recorded, source, signer, text) = v.value();
            let Some((file_hash, _)) = NarInfo::parse(text).ok().and_then(|n| n.file_hash_or_nar())
            else {
                dropped += 1;
                continue;
            };
            new.insert(
                k.value(),
                (recorded, 0u64, source, signer, file_hash.0, text),
            )?;
            files.push(file_hash);
            narinfos += 1;
        }
        drop(new);
        for file_hash in files {
            add_ref(tx, &file_hash, 1)?;
        }
    }
    let mut stored_rows = 0;
    {
        let old = tx.open_table(v1::NAR_STORED)?;
        let nars = tx.open_table(NAR)?;
        let mut stored = tx.open_table(STORED)?;
        for row in old.iter()? {
            let (k, v) = row?;
            let size = match nars.get(k.value())? {
                Some(raw) => NarRecord::decode(raw.value())?.file_size.unwrap_or(0),
                None => 0,
            };
            stored.insert(k.value(), (v.value(), size))?;
            stored_rows += 1;
        }
    }
    // NAR records that neither a narinfo nor a stored file needs (schema 1 never removed any).
    let unused: Vec<[u8; 32]> = {
        let refs = tx.open_table(NAR_REFS)?;
        let stored = tx.open_table(STORED)?;
        let mut unused = Vec::new();
        for row in tx.open_table(NAR)?.iter()? {
            let (k, _) = row?;
            if refs.get(k.value())?.is_none() && stored.get(k.value())?.is_none() {
                unused.push(k.value());
            }
        }
        unused
    };
    for key in &unused {
        tx.open_table(NAR)?.remove(*key)?;
    }
    tx.delete_table(v1::NARINFO)?;
    tx.delete_table(v1::NAR_STORED)?;
    tx.open_table(META)?.insert("schema", SCHEMA)?;
    tracing::info!(
        narinfos,
        stored = stored_rows,
        dropped,
        "index migrated from schema 1 to 2"
    );
    Ok(())
}
