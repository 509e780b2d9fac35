//! One module per group of subcommands.

pub mod collect;
pub mod fleet;
pub mod join;
pub mod operator;
pub mod policy;
pub mod read;
pub mod up;
