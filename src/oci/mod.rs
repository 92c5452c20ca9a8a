//! OCI registries (GHCR or any distribution registry): the nixcache-oci format and a registry client
//! that follows the registry's auth challenge.

pub mod client;
pub mod format;
pub mod publish;
