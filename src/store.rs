//! The NAR store: compressed NAR files on disk, content-addressed by FileHash, outside redb.
//!
//! A file appears under its final name only after it was verified and made durable:
//! temp file in `tmp/` (same filesystem) → write → `sync_all` → rename → fsync the folder → index row.
//! Temp files are named `<NAR name>.<n>.part`; at start the ones with such names are removed (a crash
//! mid-download leaves nothing behind), and anything else someone put in `tmp/` is left alone.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::nix::nar_name::NarName;

/// Failures of the store, with the path involved (logged, never shown to clients).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The folder of NAR files.
#[derive(Debug)]
pub struct NarStore {
    nar_dir: PathBuf,
    tmp_dir: PathBuf,
    next_temp: AtomicU64,
}

impl NarStore {
    /// Opens the store under `data_dir`, creating its folders, emptying `tmp/` and checking it is writable.
    pub fn open(data_dir: &Path) -> Result<NarStore, StoreError> {
        let nar_dir = data_dir.join("nar");
        let tmp_dir = data_dir.join("tmp");
        for dir in [&nar_dir, &tmp_dir] {
            std::fs::create_dir_all(dir).map_err(io_err("create folder", dir))?;
        }
        for entry in std::fs::read_dir(&tmp_dir).map_err(io_err("list", &tmp_dir))? {
            let path = entry.map_err(io_err("list", &tmp_dir))?.path();
            if is_temp_name(&path) {
                std::fs::remove_file(&path).map_err(io_err("remove leftover temp file", &path))?;
            } else {
                tracing::warn!(path = ?path, "leaving a file nixcache did not name in its tmp folder");
            }
        }
        let probe = tmp_dir.join("write-probe");
        File::create(&probe).map_err(io_err("write to", &tmp_dir))?;
        std::fs::remove_file(&probe).map_err(io_err("remove", &probe))?;
        Ok(NarStore {
            nar_dir,
            tmp_dir,
            next_temp: AtomicU64::new(0),
        })
    }

    /// Where the file of `name` lives: `nar/<first two chars>/<name>`.
    pub fn path(&self, name: &NarName) -> PathBuf {
        // Built in one allocation: every NAR hit asks for it.
        let file = name.to_string();
        let mut path = PathBuf::with_capacity(self.nar_dir.as_os_str().len() + 4 + file.len());
        path.push(&self.nar_dir);
        path.push(&file[..2]);
        path.push(file);
        path
    }

    /// Creates a new temp file for `name`, readable and writable, removed when the guard drops.
    pub fn temp_file(&self, name: &NarName) -> Result<(TempGuard, File), StoreError> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp_dir.join(format!("{name}.{n}.{TEMP_SUFFIX}"));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create temp file", &path))?;
        Ok((TempGuard { path: Some(path) }, file))
    }

    /// Makes a verified temp file durable under its final name. The index row is the caller's next step.
    pub fn commit(&self, temp: TempGuard, file: &File, name: &NarName) -> Result<(), StoreError> {
        let Some(temp_path) = temp.path.as_deref() else {
            return Ok(());
        };
        file.sync_all().map_err(io_err("sync", temp_path))?;
        let target = self.path(name);
        let dir = target.parent().unwrap_or(&self.nar_dir);
        std::fs::create_dir_all(dir).map_err(io_err("create folder", dir))?;
        std::fs::rename(temp_path, &target).map_err(io_err("rename into", &target))?;
        temp.disarm();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync folder", dir))?;
        Ok(())
    }

    /// Keeps the file just committed under `name` only if its index row was written: `recorded` is
    /// the outcome of writing it, `Ok(None)` when the record changed meanwhile. Otherwise the file is
    /// removed again: it must not outlive a row it does not have (the orphan sweep would remove it
    /// later, and meanwhile it counts against the budget).
    pub fn keep_if_recorded<T, E: From<StoreError>>(
        &self,
        name: &NarName,
        recorded: Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        match recorded {
            Ok(Some(v)) => Ok(Some(v)),
            Ok(None) => {
                self.remove(name)?;
                Ok(None)
            }
            Err(e) => {
                let _ = self.remove(name);
                Err(e)
            }
        }
    }

    /// Every NAR file on disk with its name and modification time (a scan: for the background orphan
    /// sweep only). Files whose names are not canonical NAR names are skipped.
    pub fn files(&self) -> Result<Vec<(NarName, std::time::SystemTime)>, StoreError> {
        let mut out = Vec::new();
        for fan in std::fs::read_dir(&self.nar_dir).map_err(io_err("list", &self.nar_dir))? {
            let fan = fan.map_err(io_err("list", &self.nar_dir))?.path();
            if !fan.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&fan).map_err(io_err("list", &fan))? {
                let file = file.map_err(io_err("list", &fan))?;
                let Some(name) = file
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<NarName>().ok())
                else {
                    continue;
                };
                let modified = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .map_err(io_err("stat", &file.path()))?;
                out.push((name, modified));
            }
        }
        Ok(out)
    }

    /// Bytes free on the store's filesystem for unprivileged users (`statvfs`).
    pub fn free_bytes(&self) -> io::Result<u64> {
        free_bytes(&self.nar_dir)
    }

    /// Temp files in `tmp/` named by the appliance (running fills, or leftovers), for checks.
    pub fn temp_files(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.tmp_dir).map_err(io_err("list", &self.tmp_dir))? {
            let path = entry.map_err(io_err("list", &self.tmp_dir))?.path();
            if is_temp_name(&path) {
                out.push(path);
            }
        }
        Ok(out)
    }

    /// Removes a stored file (eviction). A missing file is not an error.
    pub fn remove(&self, name: &NarName) -> Result<(), StoreError> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
            _ => Ok(()),
        }
    }
}

/// The last part of every temp file's name.
const TEMP_SUFFIX: &str = "part";

/// Whether `path` is named like the appliance's temp files: `<NAR name>.<n>.part`.
fn is_temp_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(rest) = name
        .strip_suffix(TEMP_SUFFIX)
        .and_then(|r| r.strip_suffix('.'))
    else {
        return false;
    };
    let Some((nar, n)) = rest.rsplit_once('.') else {
        return false;
    };
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && nar.parse::<NarName>().is_ok()
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a writable statvfs.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Removes its temp file when dropped, unless the file was committed.
#[derive(Debug)]
pub struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    /// Where the temp file is.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn disarm(mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_its_own_temp_files_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = NarStore::open(dir.path()).unwrap();
        let name: NarName = "1ycmgz5w1mh7iyw2dc6w2qkwa5vgaqyrbhrflbdbzq2idfyhk3yf.nar.xz"
            .parse()
            .unwrap();
        let (guard, _file) = store.temp_file(&name).unwrap();
        let ours = guard.path().unwrap().to_path_buf();
        std::mem::forget(guard);
        let theirs = dir.path().join("tmp").join("notes.txt");
        std::fs::write(&theirs, "keep me").unwrap();
        assert_eq!(store.temp_files().unwrap(), vec![ours.clone()]);
        drop(store);
        NarStore::open(dir.path()).unwrap();
        assert!(!ours.exists(), "a leftover temp file survived the start");
        assert!(theirs.exists(), "a file nixcache did not name was removed");
        assert!(free_bytes(dir.path()).unwrap() > 0);
    }
}
