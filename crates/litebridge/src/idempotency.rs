//! [`IdempotencyKey`]: a write that carries one applies at most once,
//! however often it is sent again (a client retrying after a lost answer,
//! or after `outcome_unknown` across a failover).
//!
//! The key a client gives is a string of its own choosing, scoped to its
//! caller (two API keys may use the same string). What travels inside
//! litebridge is a SHA-256 of the caller and the string, so the options
//! that carry it stay `Copy`; the PostgreSQL backend keys its records with
//! a second hash under a secret of its own (see `pg/claims.rs`), so that
//! nobody who can run SQL there can compute, and claim first, another
//! caller's key.

use sha2::Digest as _;

use crate::error::{Error, Result};

/// The longest idempotency key a client may give, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A write's idempotency key, for one caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyKey(..)")
    }
}

impl IdempotencyKey {
    /// The key `key` of `caller` (an API key's id; 0 for local callers).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty key or one longer than
    /// [`MAX_IDEMPOTENCY_KEY`] bytes.
    pub fn new(caller: u64, key: &str) -> Result<IdempotencyKey> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(Error::invalid(
                "idempotency_key",
                format!("is {} bytes; give 1 to {MAX_IDEMPOTENCY_KEY}", key.len()),
            ));
        }
        let mut h = sha2::Sha256::new();
        h.update(caller.to_le_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        Ok(IdempotencyKey(h.finalize().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_to_their_caller_and_bounded() {
        let a = IdempotencyKey::new(1, "order-7").unwrap();
        assert_eq!(a, IdempotencyKey::new(1, "order-7").unwrap());
        assert_ne!(a, IdempotencyKey::new(2, "order-7").unwrap());
        assert_ne!(a, IdempotencyKey::new(1, "order-8").unwrap());
        assert!(IdempotencyKey::new(1, "").is_err());
        assert!(IdempotencyKey::new(1, &"x".repeat(201)).is_err());
        assert!(format!("{a:?}").contains(".."));
    }
}
