//! Transports: framing only; every request goes through [`crate::rpc`].

pub(crate) mod accept;
pub(crate) mod http;
pub(crate) mod mcp;
pub(crate) mod peer;
pub(crate) mod standby;
pub(crate) mod stdio;
