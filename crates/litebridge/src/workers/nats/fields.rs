//! The headers of a message about a call, kept as a bundle carries them.
//!
//! async-nats's `HeaderMap` is a hash map of names to vectors of strings:
//! a table and a string per value to make, a SipHash per name to insert
//! or read, for each message. Under a load of calls in bundles that was
//! about a tenth of both ends' CPU (a profile of `bridge-nats-pipelined`).
//! A message about a call carries at most a dozen headers of known names,
//! so [`Fields`] keeps them as one buffer, in the bundle format's encoding
//! (`bundle`): a bundle entry's headers are copied in and out whole, and a
//! header is found by a scan of a few bytes. A message that goes or comes
//! alone is turned into or out of a `HeaderMap` at the edge.

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::workers::nats::wire;

/// A header a message about a call may carry: its index on the wire of
/// bundles ([`NAMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Name {
    RequestId = 0,
    BudgetMs,
    Deadline,
    Status,
    RunsOn,
    Host,
    Instance,
    Token,
    Started,
    Sent,
    ServiceError,
    ServiceErrorCode,
}

/// Each [`Name`]'s header, by its index.
pub(crate) static NAMES: [HeaderName; 12] = [
    wire::REQUEST_ID,
    wire::BUDGET_MS,
    wire::DEADLINE,
    wire::STATUS,
    wire::RUNS_ON,
    wire::HOST,
    wire::INSTANCE,
    wire::TOKEN,
    wire::STARTED,
    wire::SENT,
    HeaderName::from_static(async_nats::service::NATS_SERVICE_ERROR),
    HeaderName::from_static(async_nats::service::NATS_SERVICE_ERROR_CODE),
];

/// The bytes of a message's usual headers, kept without an allocation (more
/// go to the heap: a long request id, a long host name on an error): a
/// call's (budget, deadline, token) take about 45, an answer's (host,
/// instance, token, started) about 80 with a host name of 20 characters.
const INLINE: usize = 128;

/// The headers of one message: each `name: u8, value length: u16, value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fields {
    raw: SmallVec<[u8; INLINE]>,
    count: u8,
    /// A value is not printable ASCII, or too long, or there are too
    /// many: the message cannot go in a bundle (nor come in one).
    unbundleable: bool,
}

/// Whether a header value may go in a bundle: printable ASCII (spaces
/// allowed), as NATS's own, and at most `u16::MAX` bytes.
pub(crate) fn value_ok(v: &[u8]) -> bool {
    v.len() <= u16::MAX as usize && v.iter().all(|b| (b' '..=b'~').contains(b))
}

impl Fields {
    /// No headers.
    pub(crate) fn new() -> Fields {
        Fields::default()
    }

    /// Appends one header.
    fn push(&mut self, index: u8, value: &[u8]) {
        self.raw.push(index);
        self.raw
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.raw.extend_from_slice(value);
        self.count = self.count.saturating_add(1);
    }

    /// Adds a header (after any of the same name: [`Fields::get`] reads
    /// the first). A value over 64 KiB is cut there (every reader of one
    /// compares it with a short value or reads a number: the outcome is
    /// the same), and the message goes alone.
    pub(crate) fn insert(&mut self, name: Name, value: &str) {
        let mut bytes = value.as_bytes();
        if !value_ok(bytes) || self.count == u8::MAX {
            self.unbundleable = true;
            if self.count == u8::MAX {
                // Not kept: a message about a call has a dozen at most
                // (and `from_map` keeps one per name).
                return;
            }
            bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
        }
        self.push(name as u8, bytes);
    }

    /// Adds a header whose value is a number, written in decimal.
    pub(crate) fn insert_number(&mut self, name: Name, n: u64) {
        self.insert(name, itoa::Buffer::new().format(n));
    }

    /// Adds a header read from a bundle, whose value `bundle` checked.
    pub(crate) fn push_checked(&mut self, index: u8, value: &[u8]) {
        debug_assert!((index as usize) < NAMES.len() && value_ok(value));
        self.push(index, value);
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: Name) -> Option<&str> {
        self.iter()
            .find(|&(n, _)| n == name as u8)
            .map(|(_, v)| match std::str::from_utf8(v) {
                Ok(v) => v,
                // A value cut inside a character (`insert`).
                Err(e) => std::str::from_utf8(&v[..e.valid_up_to()]).unwrap_or_default(),
            })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many headers, and their bytes in a bundle, when it may go in one.
    pub(crate) fn bundled_size(&self) -> Option<(u8, usize)> {
        (!self.unbundleable).then_some((self.count, self.raw.len()))
    }

    /// As a bundle carries them (after their count).
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.raw
    }

    /// Each header's name index and value, in order.
    fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let mut at = 0usize;
        let raw = &self.raw;
        std::iter::from_fn(move || {
            let index = *raw.get(at)?;
            let len = u16::from_be_bytes([*raw.get(at + 1)?, *raw.get(at + 2)?]) as usize;
            let value = raw.get(at + 3..at + 3 + len)?;
            at += 3 + len;
            Some((index, value))
        })
    }

    /// The headers of a message that came alone: the first value of each
    /// of [`NAMES`] (the only ones read of a message about a call once it
    /// is routed; the server's "no responders" is told from the map).
    pub(crate) fn from_map(headers: Option<&HeaderMap>) -> Fields {
        let mut fields = Fields::new();
        let Some(headers) = headers else {
            return fields;
        };
        for (name, values) in headers.iter() {
            let Some(index) = NAMES.iter().position(|n| n == name) else {
                continue;
            };
            // The first is the one read.
            if let Some(value) = values.first() {
                fields.insert(NAME_OF[index], value.as_ref());
            }
        }
        fields
    }

    /// As a `HeaderMap`, for a message that goes alone.
    pub(crate) fn to_map(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (index, value) in self.iter() {
            if let (Some(name), Ok(value)) = (NAMES.get(index as usize), std::str::from_utf8(value))
            {
                headers.append(name.clone(), HeaderValue::from(value));
            }
        }
        headers
    }
}

/// Each index's [`Name`].
const NAME_OF: [Name; 12] = [
    Name::RequestId,
    Name::BudgetMs,
    Name::Deadline,
    Name::Status,
    Name::RunsOn,
    Name::Host,
    Name::Instance,
    Name::Token,
    Name::Started,
    Name::Sent,
    Name::ServiceError,
    Name::ServiceErrorCode,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 30_000, 1_764_950_000_000, u64::MAX] {
            let mut f = Fields::new();
            f.insert_number(Name::Deadline, n);
            assert_eq!(f.get(Name::Deadline), Some(n.to_string().as_str()));
        }
    }

    #[test]
    fn names_and_indices_agree() {
        for (i, n) in NAME_OF.iter().enumerate() {
            assert_eq!(*n as usize, i);
        }
    }

    #[test]
    fn headers_read_back_as_given_and_through_a_header_map() {
        let mut f = Fields::new();
        f.insert(Name::Token, "abc123");
        f.insert(Name::Status, "accepted");
        f.insert(Name::Token, "second");
        assert_eq!(f.get(Name::Token), Some("abc123"));
        assert_eq!(f.get(Name::Status), Some("accepted"));
        assert_eq!(f.get(Name::Host), None);
        let map = f.to_map();
        assert_eq!(map.get(wire::TOKEN).map(|v| v.as_str()), Some("abc123"));
        let back = Fields::from_map(Some(&map));
        assert_eq!(back.get(Name::Token), Some("abc123"));
        assert_eq!(back.get(Name::Status), Some("accepted"));
        assert!(Fields::from_map(None).is_empty());
    }

    #[test]
    fn a_value_a_bundle_cannot_carry_keeps_the_message_out_of_bundles() {
        let mut f = Fields::new();
        f.insert(Name::RequestId, "ok value");
        assert!(f.bundled_size().is_some());
        f.insert(Name::Host, "new\nline");
        assert_eq!(f.bundled_size(), None);
        // Still read (and sent alone) as given.
        assert_eq!(f.get(Name::Host), Some("new\nline"));
    }

    #[test]
    fn a_map_reads_as_header_map_get_does_whatever_a_peer_sent() {
        let mut map = HeaderMap::new();
        map.append(wire::TOKEN, "x".repeat(70_000).as_str());
        map.append(wire::TOKEN, "abc");
        map.insert(wire::STATUS, "\u{e9}".repeat(40_000).as_str());
        let f = Fields::from_map(Some(&map));
        // The first value, cut to 64 KiB (a long token matches no call).
        assert_eq!(f.get(Name::Token), Some("x".repeat(65_535).as_str()));
        // Cut inside a character: read up to it, still a status none knows.
        assert!(f.get(Name::Status).is_some_and(|s| s.starts_with('\u{e9}')));
        assert_eq!(f.bundled_size(), None);
    }

    #[test]
    fn unknown_names_of_a_map_are_not_kept() {
        let mut map = HeaderMap::new();
        map.insert("X-Other", "1");
        map.insert(wire::HOST, "h1");
        let f = Fields::from_map(Some(&map));
        assert_eq!(f.get(Name::Host), Some("h1"));
        assert_eq!(f.bundled_size(), Some((1, 3 + 2)));
    }
}
