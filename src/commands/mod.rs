//! The subcommands' glue: turn parsed arguments into work.

pub mod keygen;
pub mod serve;
