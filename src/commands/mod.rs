//! The subcommands' glue: turn parsed arguments into work.

pub mod discover;
pub mod gc;
pub mod keygen;
pub mod publish_common;
pub mod push;
pub mod serve;
pub mod verify;
pub mod warm;
