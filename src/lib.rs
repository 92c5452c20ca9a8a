//! nixcache: a LAN cache appliance for Nix — one verified, persistent binary cache for every machine
//! on the network. The binary (`main.rs`) only parses arguments; everything lives here so that tests can
//! drive it.

pub mod activity;
pub mod app;
pub mod bucket;
pub mod budget;
pub mod capped;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod fill;
pub mod health;
pub mod housekeeping;
pub mod index;
pub mod integrity;
pub mod lookup;
pub mod mdns;
pub mod metrics;
pub mod mirror;
pub mod nix;
pub mod oci;
pub mod pins;
pub mod prefetch;
pub mod priority;
pub mod push;
pub mod redact;
pub mod server;
pub mod sources;
pub mod store;
pub mod systemd;
pub mod transcode;
pub mod trust;
pub mod turns;
pub mod verify;
pub mod warm;
