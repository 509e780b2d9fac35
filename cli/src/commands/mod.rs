//! One module per group of subcommands.

pub mod collect;
pub mod diff;
pub mod fleet;
pub mod history;
pub mod join;
pub mod operator;
pub mod policy;
pub mod read;
pub mod up;
