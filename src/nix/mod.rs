//! Pure Nix formats: nix32, hashes, store paths, narinfo files, NAR file names and signing keys.
//!
//! Nothing here does I/O. Every type parses strictly so that garbage from a client or an upstream is
//! rejected before it reaches a lookup, a file name or a signature.

pub mod hash;
pub mod nar_name;
pub mod narinfo;
pub mod nix32;
pub mod signing;
pub mod store_path;

#[cfg(test)]
pub(crate) mod test_vectors;

/// The only store directory nixcache serves; narinfos naming another one are rejected.
pub const STORE_DIR: &str = "/nix/store";
