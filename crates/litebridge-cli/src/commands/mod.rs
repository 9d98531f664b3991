//! One module per command.

pub(crate) mod backup;
pub(crate) mod check;
pub(crate) mod keys;
pub(crate) mod query;
pub(crate) mod serve;
pub(crate) mod worker_host;
