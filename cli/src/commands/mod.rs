//! One module per group of subcommands.

pub mod collect;
pub mod read;
pub mod up;
