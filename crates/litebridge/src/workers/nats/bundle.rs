//! Several messages about calls in one NATS message: a bundle.
//!
//! # Design
//!
//! Under a load of many calls at once, NATS costs per message, not per
//! byte: the server routes each, and async-nats encodes, parses and builds
//! a header map for each on both ends (about 20 us of the server's and
//! 23 us of the clients' per call in a profile of `bridge-nats-pipelined`,
//! two messages a call). So an outbox (`outbox`) puts the messages of one
//! pass that go to the same place into one: a front end's calls of one
//! method, a host's answers and notices to one front end. Each keeps its
//! own reply subject (or subject), headers and body inside, and the
//! receiver takes it apart into the messages it would have read one by
//! one: nothing about a call (its token, deadline, acknowledgement, cancel,
//! questions about it) changes. An entry's headers stay in this format's
//! encoding on both ends ([`Fields`]), never a header map.
//!
//! A message that is alone in its pass is sent as itself: calls made one
//! at a time pay nothing. Only what the receiver reads is bundled: a front
//! end bundles a method's calls only while every host it knows to serve
//! the method announces `bundles` in its services-protocol metadata, for
//! the instance heartbeating now, and not in the first heartbeats after it
//! connects or connects again (a host of an older version, or one that
//! replaced another meanwhile, may not be heard yet); a host
//! bundles only the answers and notices of calls that came in a bundle,
//! into the inbox their reply subjects name.
//!
//! A bundle of calls has a reply subject of its own (`<inbox>.g<n>`, `n` a
//! keyed hash of a count, as a call's id is, so no peer can name it ahead),
//! so the server's "no responders" still comes when no host serves the
//! method; the front end hands it to each call of the bundle. A host takes
//! a bundled call only with a reply subject in a front end's inbox (only
//! front ends make bundles), so a bundle cannot make it publish anywhere
//! else.
//!
//! NATS hands each message to one member of the queue group, so a bundle
//! of calls goes to one host: where several serve the method, a front end
//! keeps its bundles small against the calls it has in flight for it and
//! the hosts serving it ([`calls_per_bundle`]), so the load still spreads.
//!
//! # Format
//!
//! A bundle carries the header [`BUNDLE`] (`1`, the format's version) and
//! this body, lengths big-endian:
//!
//! ```text
//! count: u16, then count entries:
//!   subject length: u16, subject (a call's reply subject, or an answer's subject)
//!   headers: u8, then for each: name: u8 (an index into `fields::NAMES`), value length: u16, value
//!   body length: u32, body
//! ```
//!
//! Subjects are at most [`MAX_SUBJECT`] bytes of printable ASCII, header
//! values printable ASCII (spaces allowed), as NATS's own; a message
//! breaking these rules is sent alone ([`entry_size`]). An entry breaking
//! any rule (a length past the end, an unknown name, bytes left over, more
//! than [`MAX_ENTRIES`] entries) makes the whole bundle unreadable, and
//! nothing of it is taken.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, HeaderName, Subject};
use bytes::{BufMut, Bytes, BytesMut};

use crate::sync::lock;
use crate::workers::nats::fields::{Fields, NAMES, value_ok};

/// The header that makes a message a bundle; its value is the format's
/// version.
pub(crate) const BUNDLE: HeaderName = HeaderName::from_static("Litebridge-Bundle");

/// The format's version.
pub(crate) const VERSION: &str = "1";

/// Most entries a bundle is made with.
pub(crate) const MAX_ENTRIES: usize = 64;

/// The longest subject an entry may have (a front end's reply subjects
/// are at most about 120 bytes, with a prefix of 64 characters; the
/// server's own limit on a message's control line is 4 KiB, and a longer
/// one costs the publisher its connection).
pub(crate) const MAX_SUBJECT: usize = 256;

/// About the largest bundle made, in bytes: a message bigger than a
/// quarter of it goes alone.
pub(crate) const MAX_BYTES: usize = 128 * 1024;

/// One message of a bundle, as read.
#[derive(Debug)]
pub(crate) struct Entry {
    /// A call's reply subject, or the subject of an answer or notice.
    pub(crate) subject: Subject,
    pub(crate) fields: Fields,
    pub(crate) body: Bytes,
}

/// The bytes a message takes in a bundle, or `None` when it cannot be put
/// in one (a subject or a header value `read` would refuse).
pub(crate) fn entry_size(subject: &str, fields: &Fields, body: &Bytes) -> Option<usize> {
    if !subject_ok(subject) || body.len() > u32::MAX as usize {
        return None;
    }
    let (_, headers) = fields.bundled_size()?;
    Some(2 + subject.len() + 1 + headers + 4 + body.len())
}

fn subject_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBJECT && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Builds bundles, one entry at a time.
pub(crate) struct Writer {
    body: BytesMut,
    count: u16,
}

impl Writer {
    pub(crate) fn new(capacity: usize) -> Writer {
        let mut body = BytesMut::with_capacity(capacity + 2);
        body.put_u16(0);
        Writer { body, count: 0 }
    }

    /// Adds a message that [`entry_size`] accepted.
    pub(crate) fn push(&mut self, subject: &str, fields: &Fields, body: &[u8]) {
        debug_assert!((self.count as usize) < MAX_ENTRIES);
        debug_assert!(fields.bundled_size().is_some());
        self.body.put_u16(subject.len() as u16);
        self.body.put_slice(subject.as_bytes());
        // Headers `entry_size` refused are never written (an entry
        // without them, not a corrupt one, should one come here).
        match fields.bundled_size() {
            Some((count, _)) => {
                self.body.put_u8(count);
                self.body.put_slice(fields.encoded());
            }
            None => self.body.put_u8(0),
        }
        self.body.put_u32(body.len() as u32);
        self.body.put_slice(body);
        self.count += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bundle's body, and the headers to send it with.
    pub(crate) fn finish(mut self) -> (HeaderMap, Bytes) {
        self.body[..2].copy_from_slice(&self.count.to_be_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(BUNDLE, VERSION);
        (headers, self.body.freeze())
    }
}

/// The entries of `message` when it is a bundle (`None`: a message
/// alone), or why it cannot be read.
pub(crate) fn entries_of(message: &async_nats::Message) -> Option<Result<Vec<Entry>, String>> {
    let version = message.headers.as_ref()?.get(BUNDLE)?;
    Some(if version.as_str() == VERSION {
        read(&message.payload)
    } else {
        Err(format!("version {:?}, not {VERSION}", version.as_str()))
    })
}

/// Takes a bundle apart, or says why it cannot be read. The entries'
/// subjects and bodies share `body`'s memory (a host's call needs its
/// reply subject as a `Subject`: one made from a `String` was two
/// allocations, a slice is two atomic operations); their headers are
/// copied (into a [`Fields`], usually without an allocation).
pub(crate) fn read(body: &Bytes) -> Result<Vec<Entry>, String> {
    let bytes: &[u8] = body;
    let mut at = 0usize;
    // The next `n` bytes, as a range of `body`.
    let take = |at: &mut usize, n: usize, what: &str| {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format!("{what} runs past the end ({} bytes)", bytes.len()))?;
        let range = *at..end;
        *at = end;
        Ok::<_, String>(range)
    };
    // A big-endian number of the bytes given.
    let n = |r: std::ops::Range<usize>| bytes[r].iter().fold(0usize, |n, &d| (n << 8) | d as usize);
    let count = n(take(&mut at, 2, "the count")?);
    if count > MAX_ENTRIES {
        return Err(format!("{count} entries (at most {MAX_ENTRIES} are read)"));
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let len = n(take(&mut at, 2, "a subject's length")?);
        let range = take(&mut at, len, "a subject")?;
        let subject = Subject::from_utf8(body.slice(range))
            .ok()
            .filter(|s| subject_ok(s))
            .ok_or_else(|| {
                format!(
                    "entry {i}: the subject is not up to {MAX_SUBJECT} bytes of printable ASCII"
                )
            })?;
        let mut fields = Fields::new();
        for _ in 0..n(take(&mut at, 1, "a header count")?) {
            let index = n(take(&mut at, 1, "a header name")?);
            if index >= NAMES.len() {
                return Err(format!(
                    "entry {i}: header name {index} is not one of the format's"
                ));
            }
            let len = n(take(&mut at, 2, "a header value's length")?);
            let value = &bytes[take(&mut at, len, "a header value")?];
            if !value_ok(value) {
                return Err(format!("entry {i}: a header value is not printable ASCII"));
            }
            fields.push_checked(index as u8, value);
        }
        let len = n(take(&mut at, 4, "a body's length")?);
        let body = body.slice(take(&mut at, len, "a body")?);
        entries.push(Entry {
            subject,
            fields,
            body,
        });
    }
    if at != bytes.len() {
        return Err(format!("{} bytes after the last entry", bytes.len() - at));
    }
    Ok(entries)
}

/// How many calls of a method one bundle may carry, at least 1 (sent
/// alone), at most [`MAX_ENTRIES`]: with one host serving it, all of this
/// front end's calls in flight for it; with several, a quarter of each
/// one's share (so NATS's choice of a host per message still spreads
/// them). One host's bundles are not cut for a spread there is none of:
/// on one core, 4 to 8 % more calls a second (`bridge-nats-pipelined`, two
/// series of alternating runs, BENCHMARKS.md), the same on two.
pub(crate) fn calls_per_bundle(in_flight: usize, hosts: usize) -> usize {
    let share = match hosts {
        0 | 1 => in_flight,
        n => in_flight / (4 * n),
    };
    share.clamp(1, MAX_ENTRIES)
}

/// The calls of each bundle by its number, and the bundles' numbers in
/// the order they were opened, with when.
type Held = (HashMap<u64, Vec<u64>>, VecDeque<(Instant, u64)>);

/// The reply subjects of a front end's bundles of calls (`<inbox>.g<n>`),
/// and the calls each holds: from when async-nats has the bundle, for as
/// long as its calls wait for a word of a host (they ask about themselves
/// after that), and at most [`MAX_HELD`] bundles (the oldest go first).
/// Most bundles whose calls [`Replies`] keeps.
const MAX_HELD: usize = 16_384;

pub(crate) struct Replies {
    inbox: String,
    keep: Duration,
    next: AtomicU64,
    /// Bundles' numbers are keyed hashes of a count, as calls' ids are: a
    /// peer cannot name the next one and answer it "no responders" before
    /// a host has it (review 195).
    ids: std::hash::RandomState,
    held: Mutex<Held>,
}

impl Replies {
    pub(crate) fn new(inbox: &str, keep: Duration) -> Replies {
        Replies {
            inbox: inbox.to_owned(),
            keep,
            next: AtomicU64::new(1),
            ids: std::hash::RandomState::new(),
            held: Mutex::default(),
        }
    }

    /// A reply subject for a bundle of the calls numbered `calls`, and
    /// its number for [`Replies::handed`].
    pub(crate) fn open(&self, calls: Vec<u64>) -> (Subject, u64) {
        let n =
            std::hash::BuildHasher::hash_one(&self.ids, self.next.fetch_add(1, Ordering::Relaxed));
        let now = Instant::now();
        let mut held = lock(&self.held);
        let (by_bundle, order) = &mut *held;
        while let Some(&(at, old)) = order.front() {
            if now.saturating_duration_since(at) < self.keep && order.len() < MAX_HELD {
                break;
            }
            order.pop_front();
            by_bundle.remove(&old);
        }
        by_bundle.insert(n, calls);
        order.push_back((now, n));
        (format!("{}.g{n}", self.inbox).into(), n)
    }

    /// Bundle `n` is with async-nats now: its time counts from here (a
    /// congested link may have held it).
    pub(crate) fn handed(&self, n: u64) {
        let now = Instant::now();
        if let Some(last) = lock(&self.held).1.back_mut().filter(|(_, m)| *m == n) {
            last.0 = now;
        }
    }

    /// The calls of the bundle whose reply subject ends in `tail`
    /// (`g<n>`), taken out; `None` for any other tail.
    pub(crate) fn take(&self, tail: &str) -> Option<Vec<u64>> {
        let n = tail.strip_prefix('g')?.parse::<u64>().ok()?;
        lock(&self.held).0.remove(&n)
    }

    /// Whether `tail` names a bundle's reply subject (taken or not).
    pub(crate) fn names_a_bundle(tail: &str) -> bool {
        tail.strip_prefix('g')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::nats::fields::Name;

    fn headers(pairs: &[(Name, &str)]) -> Fields {
        let mut h = Fields::new();
        for (n, v) in pairs {
            h.insert(*n, v);
        }
        h
    }

    #[test]
    fn entries_come_out_as_they_went_in() {
        let a = headers(&[
            (Name::Token, "00ff00ff00ff00ff"),
            (Name::BudgetMs, "30000"),
            (Name::Deadline, "1764950000000"),
            (Name::RequestId, "req-1"),
        ]);
        let b = Fields::new();
        let bodies = [Bytes::from_static(b"[1]"), Bytes::new()];
        let mut w = Writer::new(64);
        w.push("_INBOX_lb.x.1", &a, &bodies[0]);
        w.push("_INBOX_lb.x.2", &b, &bodies[1]);
        let (h, body) = w.finish();
        assert_eq!(h.get(BUNDLE).map(|v| v.as_str()), Some(VERSION));
        assert_eq!(
            body.len(),
            2 + entry_size("_INBOX_lb.x.1", &a, &bodies[0]).unwrap()
                + entry_size("_INBOX_lb.x.2", &b, &bodies[1]).unwrap()
        );
        let entries = read(&body).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].subject.as_str(), "_INBOX_lb.x.1");
        assert_eq!(&entries[0].body[..], b"[1]");
        assert_eq!(entries[0].fields, a);
        assert_eq!(entries[0].fields.get(Name::Deadline), Some("1764950000000"));
        assert_eq!(entries[1].subject.as_str(), "_INBOX_lb.x.2");
        assert!(entries[1].fields.is_empty() && entries[1].body.is_empty());
    }

    #[test]
    fn a_message_a_bundle_cannot_carry_goes_alone() {
        let long = "x".repeat(MAX_SUBJECT + 1);
        assert_eq!(entry_size(&long, &Fields::new(), &Bytes::new()), None);
        // A value `read` would refuse (not printable ASCII) is not written.
        let accented = headers(&[(Name::RequestId, "caf\u{e9}")]);
        assert_eq!(entry_size("s", &accented, &Bytes::new()), None);
    }

    #[test]
    fn a_hostile_bundle_is_refused_whole() {
        let mut w = Writer::new(16);
        w.push("r.1", &headers(&[(Name::Token, "ab")]), b"[1]");
        let (_, good) = w.finish();
        // Every cut short is refused, never read in part.
        for end in 0..good.len() {
            assert!(read(&good.slice(..end)).is_err(), "cut at {end}");
        }
        let mut extra = good.to_vec();
        extra.push(0);
        assert!(
            read(&Bytes::from(extra))
                .unwrap_err()
                .contains("after the last")
        );
        // A count beyond what is read, a length past the end, a name the
        // format lacks, a value with a line break, a subject with a space.
        assert!(
            read(&Bytes::from_static(&[0xff, 0xff]))
                .unwrap_err()
                .contains("65535")
        );
        assert!(
            read(&Bytes::from_static(&[0, 65]))
                .unwrap_err()
                .contains("at most 64")
        );
        // A subject longer than any of a front end's: the server would
        // close the connection of a host publishing to it.
        let long = "x".repeat(MAX_SUBJECT + 1);
        let mut b = vec![0, 1];
        b.extend((long.len() as u16).to_be_bytes());
        b.extend(long.as_bytes());
        b.extend([0, 0, 0, 0, 0]);
        assert!(read(&Bytes::from(b)).unwrap_err().contains("subject"));
        let mut past = good.to_vec();
        past[2..4].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(read(&Bytes::from(past)).is_err());
        let name_at = 2 + 2 + 3 + 1;
        let mut name = good.to_vec();
        name[name_at] = 200;
        assert!(read(&Bytes::from(name)).unwrap_err().contains("200"));
        let mut value = good.to_vec();
        value[name_at + 3] = b'\n';
        assert!(read(&Bytes::from(value)).unwrap_err().contains("printable"));
        let mut subject = good.to_vec();
        subject[5] = b' ';
        assert!(read(&Bytes::from(subject)).unwrap_err().contains("subject"));
        // An empty bundle reads as none.
        assert!(read(&Bytes::from_static(&[0, 0])).unwrap().is_empty());
    }

    #[test]
    fn bundles_stay_small_against_the_hosts_serving_a_method() {
        assert_eq!(calls_per_bundle(1, 1), 1);
        assert_eq!(calls_per_bundle(40, 1), 40);
        assert_eq!(calls_per_bundle(128, 1), MAX_ENTRIES);
        assert_eq!(calls_per_bundle(128, 2), 16);
        assert_eq!(calls_per_bundle(16, 2), 2);
        assert_eq!(calls_per_bundle(7, 2), 1);
        assert_eq!(calls_per_bundle(100_000, 3), MAX_ENTRIES);
        assert_eq!(calls_per_bundle(10, 0), 10);
    }

    #[test]
    fn a_bundles_reply_subject_names_its_calls_until_it_is_old() {
        let r = Replies::new("_INBOX_lb.x", Duration::from_millis(30));
        let tail = |n: u64| format!("g{n}");
        let (first, n) = r.open(vec![1, 2]);
        assert_eq!(first.as_str(), format!("_INBOX_lb.x.{}", tail(n)));
        assert!(Replies::names_a_bundle(&tail(n)) && !Replies::names_a_bundle("17"));
        assert_eq!(r.take(&tail(n)), Some(vec![1, 2]));
        assert_eq!(r.take(&tail(n)), None, "taken once");
        let (_, old) = r.open(vec![3]);
        std::thread::sleep(Duration::from_millis(40));
        // Opening another forgets those past their time...
        let (_, new) = r.open(vec![4]);
        assert_eq!(r.take(&tail(old)), None);
        assert_eq!(r.take(&tail(new)), Some(vec![4]));
        assert_eq!(r.take(&new.to_string()), None);
        // Numbers no peer can name ahead: another front end's first
        // bundles are numbered otherwise, and none follows from the last.
        let other = Replies::new("_INBOX_lb.x", Duration::from_millis(30));
        let (_, o) = other.open(vec![1]);
        assert!(o != n && new != old.wrapping_add(1));
        // ...counted from when async-nats had them.
        let (_, n) = r.open(vec![5]);
        std::thread::sleep(Duration::from_millis(40));
        r.handed(n);
        r.open(vec![6]);
        assert_eq!(r.take(&format!("g{n}")), Some(vec![5]));
    }
}
