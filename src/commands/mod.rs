//! The subcommands' glue: turn parsed arguments into work.

pub mod serve;
