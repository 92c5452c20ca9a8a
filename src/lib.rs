//! nixcache: a LAN cache appliance for Nix — one verified, persistent binary cache for every machine
//! on the network. The binary (`main.rs`) only parses arguments; everything lives here so that tests can
//! drive it.

pub mod activity;
pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod fill;
pub mod health;
pub mod housekeeping;
pub mod index;
pub mod lookup;
pub mod mdns;
pub mod metrics;
pub mod nix;
pub mod oci;
pub mod server;
pub mod sources;
pub mod store;
pub mod systemd;
pub mod verify;
