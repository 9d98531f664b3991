//! Reading a request's JSON (and a worker's answer: `workers/protocol.rs`),
//! refusing an object that names a member twice, and an integer litebridge
//! would read inexactly.
//!
//! JSON allows a member twice and serde_json keeps the last one silently,
//! but a proxy or a filter in front of litebridge may have read the first
//! one: `{"sql": "SELECT 1", "sql": "DROP TABLE t"}` would mean one thing to
//! it and another here. And an integer past 64 bits would be read rounded
//! (`litebridge::exact`), then stored or passed on changed. So the whole
//! message is refused instead (`Invalid Request`).
//!
//! **What the tree costs.** A JSON tree takes far more memory than its
//! text: each object is a B-tree whose first node is about 640 bytes, so
//! `[{"":0},{"":0},...]` takes about 96 times its size (a 16 MiB body, 1.7
//! GiB), and any key could send it, before its method or scope was looked
//! at (review 158). So the tree's memory is estimated as it is built, and a
//! message is refused past [`MAX_TREE_BYTES`] (`too_large`); and the
//! messages being handled at once may hold at most [`MAX_TREES_BYTES`]
//! between them (past it, `unavailable`: try again), counted from the
//! first MiB of a tree until the request is answered ([`Held`]). A worker's
//! answer is counted against [`MAX_TREE_BYTES`] alone ([`parse_alone`]),
//! and large ones are read one at a time ([`read_large_answer`]).
//!
//! The binary's transports use it; hidden from the library's documentation.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a message could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// It is not JSON (serde_json's message, with its position).
    Syntax(String),
    /// An object has this member twice.
    Duplicate(String),
    /// This integer is outside the 64-bit range.
    Inexact(String),
    /// Its tree would take more than `limit` bytes ([`MAX_TREE_BYTES`],
    /// shared by its copies for the MCP SDK).
    TooLarge { limit: usize },
    /// The trees of the messages being handled hold [`MAX_TREES_BYTES`]
    /// already (`own`: those of this caller's own hold [`MAX_TREE_BYTES`]).
    Busy { own: bool },
}

/// The most memory one message's tree may take, by `Budget`'s estimate:
/// 1 GiB. A bulk insert of 16 MiB (`execute_many`, rows of two numbers)
/// takes about 550 MiB.
pub const MAX_TREE_BYTES: usize = 1 << 30;

/// The most the trees of the messages being handled may take at once: 2 GiB.
pub const MAX_TREES_BYTES: usize = 2 << 30;

/// Trees under this are not counted against [`MAX_TREES_BYTES`] (the
/// connection and request limits bound them): a tree reserves its share
/// in steps of this, from its first.
const STEP: usize = 1 << 20;

/// The memory the trees being handled hold, as [`Held`] counts it.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The same, per caller (a key's name; `""` for the local user, every
/// session without a key): a caller holds at most [`MAX_TREE_BYTES`] of
/// it, so it cannot keep the others out on its own with a few slow
/// requests of large trees (review 160: two such requests held all of it
/// for their hour), nor with one for the MCP SDK (review 162).
static HELD_BY: std::sync::Mutex<Option<std::collections::HashMap<String, usize>>> =
    std::sync::Mutex::new(None);

/// Reserves `bytes` more for a message of `owner` that holds `mine`
/// already; the refusal if a limit is passed. Under one lock, so a
/// refused reservation never shows in the total (review 162).
fn reserve(owner: &str, mine: usize, bytes: usize, limits: (usize, usize)) -> Result<(), Refused> {
    // One that could never fit a caller's share, however empty the server:
    // too large, not a reason to send it again (a message for the MCP SDK
    // counts its copies).
    if mine + bytes > limits.0 {
        return Err(Refused::TooLarge);
    }
    let mut by = crate::sync::lock(&HELD_BY);
    let by = by.get_or_insert_with(Default::default);
    if by.get(owner).copied().unwrap_or(0) + bytes > limits.0 {
        return Err(Refused::Busy { own: true });
    }
    if HELD.fetch_add(bytes, Ordering::AcqRel) + bytes > limits.1 {
        HELD.fetch_sub(bytes, Ordering::AcqRel);
        return Err(Refused::Busy { own: false });
    }
    *by.entry(owner.to_owned()).or_default() += bytes;
    Ok(())
}

/// Gives back what [`reserve`] took.
fn release(owner: &str, bytes: usize) {
    if bytes == 0 {
        return;
    }
    HELD.fetch_sub(bytes, Ordering::AcqRel);
    let mut by = crate::sync::lock(&HELD_BY);
    if let Some(map) = by.as_mut()
        && let Some(held) = map.get_mut(owner)
    {
        *held = held.saturating_sub(bytes);
        if *held == 0 {
            map.remove(owner);
        }
    }
}

/// A message's tree's share of [`MAX_TREES_BYTES`] (and of its caller's
/// [`MAX_TREE_BYTES`]), given back when dropped: kept until the message is
/// answered.
#[derive(Debug, Default)]
#[must_use = "the tree's memory is counted until this is dropped"]
pub struct Held {
    bytes: usize,
    owner: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        release(&self.owner, self.bytes);
    }
}

/// The estimate of a tree's memory as it is built, and its share of
/// [`MAX_TREES_BYTES`] reserved as it grows. Estimated from serde_json's
/// layout: a `Value` is 32 bytes, an object's B-tree node 632 and holds
/// 5 to 11 members (one, for an object of one), and each heap block costs
/// 16 more.
struct Budget<'a> {
    /// [`MAX_TREE_BYTES`] and [`MAX_TREES_BYTES`] (smaller in tests).
    limits: (usize, usize),
    /// Whose message it is (see [`HELD_BY`]).
    owner: &'a str,
    /// How many trees of it will be alive at once, as the shares reserve
    /// it: 1, or 2 for a message the MCP SDK reads again (it buffers it
    /// through its untagged and flattened types, lighter than a tree, then
    /// builds a tree of its own; this one is dropped first). A message's
    /// share is at most a caller's, so its tree at most
    /// [`MAX_TREE_BYTES`] / `copies`. 0: a tree that reserves no share
    /// ([`parse_alone`]).
    copies: usize,
    used: Cell<usize>,
    reserved: Cell<usize>,
    refused: Cell<Option<Refused>>,
}

#[derive(Clone, Copy, Debug)]
enum Refused {
    TooLarge,
    Busy { own: bool },
}

/// An object's first B-tree node (11 members' room: 632 bytes), allocated
/// with its first member.
pub(crate) const NODE: usize = 632 + 16;
/// Each further member's share of the B-tree: a leaf of 5 to 11 members
/// and the internal nodes (744 bytes) above every 6 to 12 leaves; one of
/// 12 members takes 2,040 bytes (review 161: counted at 1,836).
pub(crate) const MEMBER: usize = NODE / 5;
/// An array's first element: its first allocation, room for four `Value`s
/// (review 160: counted as one, `[[[0]]]` took twice the estimate).
const FIRST_ELEMENTS: usize = 4 * std::mem::size_of::<Value>() + 16;

/// What pushing an array's element at `len` adds: its first allocation,
/// then each doubling's new room (a `Vec` grows from 4 to 8 at the fifth,
/// and so on), so an array counts its capacity (review 161: 64 bytes an
/// element fell short at each doubling).
fn element(len: usize) -> usize {
    match len {
        0 => FIRST_ELEMENTS,
        4.. if len.is_power_of_two() => len * std::mem::size_of::<Value>(),
        _ => 0,
    }
}

/// A heap block of `len` bytes, as allocated (none for nothing).
pub(crate) fn block(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.next_multiple_of(16) + 16
    }
}

impl<'a> Budget<'a> {
    fn new(limits: (usize, usize), owner: &'a str, copies: usize) -> Budget<'a> {
        Budget {
            limits,
            owner,
            copies,
            used: Cell::new(0),
            reserved: Cell::new(0),
            refused: Cell::new(None),
        }
    }

    /// Counts `bytes` more; false, with the reason noted, past a limit.
    fn take(&self, bytes: usize) -> bool {
        let used = self.used.get().saturating_add(bytes);
        self.used.set(used);
        if used > self.limits.0 {
            self.refused.set(Some(Refused::TooLarge));
            return false;
        }
        let reserved = self.reserved.get();
        let needed = used.saturating_mul(self.copies);
        if self.copies > 0 && used > STEP && needed > reserved {
            let more = needed.next_multiple_of(STEP) - reserved;
            if let Err(refused) = reserve(self.owner, reserved, more, self.limits) {
                self.refused.set(Some(refused));
                return false;
            }
            self.reserved.set(reserved + more);
        }
        true
    }

    /// The share reserved, held until the message is answered.
    fn held(&self) -> Held {
        Held {
            bytes: self.reserved.replace(0),
            owner: self.owner.to_owned(),
        }
    }
}

impl Drop for Budget<'_> {
    fn drop(&mut self) {
        // A tree refused or dropped half-built gives its share back.
        release(self.owner, self.reserved.get());
    }
}

impl Unreadable {
    /// What a message that is JSON but cannot be taken as it is, is told.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Unreadable::Syntax(_) => None,
            Unreadable::Duplicate(member) => Some(duplicate_refusal(member)),
            Unreadable::Inexact(number) => Some(format!(
                "{}: send it as a string; nothing was done",
                crate::exact::inexact_integer_named(number)
            )),
            Unreadable::TooLarge { .. } | Unreadable::Busy { .. } => Some(self.error().to_string()),
        }
    }

    /// The error a message too large to read, or read while the server's
    /// trees are full, is answered with; only for those
    /// ([`is_over_memory`](Self::is_over_memory)): the others' answers are
    /// the protocol's (a parse error, an invalid request).
    pub fn error(&self) -> crate::Error {
        match self {
            Unreadable::Busy { own: false } => crate::Error::Unavailable {
                what: "the server",
                reason: format!(
                    "the messages it is reading hold {} MiB of memory already; nothing was done, send it again shortly",
                    MAX_TREES_BYTES >> 20
                ),
            },
            Unreadable::Busy { own: true } => crate::Error::Unavailable {
                what: "the server",
                reason: format!(
                    "the messages of this key (or, without one, of the local user) being handled hold {} MiB of memory already; nothing was done, send it again once they are answered",
                    MAX_TREE_BYTES >> 20
                ),
            },
            Unreadable::TooLarge { limit } => crate::Error::TooLarge {
                what:
                    "the message, read into memory (its objects and values are many for its size), \
                       nothing was done; send fewer values per message, or large data as a string,"
                        .into(),
                limit: *limit as u64,
            },
            _ => crate::Error::Internal {
                message: "a message refused for its syntax, a duplicate or an inexact integer has no memory error".into(),
            },
        }
    }

    /// Whether this is answered with [`Unreadable::error`].
    pub fn is_over_memory(&self) -> bool {
        matches!(self, Unreadable::TooLarge { .. } | Unreadable::Busy { .. })
    }
}

/// What a request that names a member twice is told.
pub fn duplicate_refusal(member: &str) -> String {
    format!(
        "an object names the member {member:?} twice; which one was meant is not clear, so nothing was done"
    )
}

/// Parses `input`, a message of `owner` (a key's name, `""` for the local
/// user), as one JSON value whose objects name each member once, within
/// the memory limits; the tree, and its share of [`MAX_TREES_BYTES`] to
/// keep until the message is answered.
pub fn parse(input: &[u8], owner: &str) -> Result<(Value, Held), Unreadable> {
    parse_within(input, (MAX_TREE_BYTES, MAX_TREES_BYTES), owner, 1)
}

/// [`parse`] for a message the MCP SDK reads again: its memory counted
/// twice (see `Budget::copies`).
pub fn parse_for_sdk(input: &[u8], owner: &str) -> Result<(Value, Held), Unreadable> {
    parse_within(input, (MAX_TREE_BYTES, MAX_TREES_BYTES), owner, SDK_COPIES)
}

/// [`parse`] of a tree counted against `limit` alone, not in the shares of
/// the messages being handled: a worker's answer (`workers/protocol.rs`),
/// whose call ran already, so that a server busy with requests cannot
/// answer it `unavailable`, a retry's cue (review 231).
pub fn parse_alone(input: &[u8], limit: usize) -> Result<Value, Unreadable> {
    parse_within(input, (limit, usize::MAX), "", 0).map(|(tree, _nothing_held)| tree)
}

/// Answers longer than this are read into trees one at a time in the
/// process, off the runtime's threads ([`read_large_answer`]): 1 MiB, whose
/// tree takes at most about 100 MiB however it is written.
pub const LARGE_ANSWER_BYTES: usize = 1 << 20;

/// The turn of large answers ([`read_large_answer`]).
static LARGE_ANSWERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// `read` (an answer read into a tree with [`parse_alone`]) in the turn
/// of large answers, on a thread that may block (a tree of a gigabyte
/// takes seconds to build); `None` if the turn did not come by `until`.
/// The turn is the thread's until `read` returns, whatever becomes of this
/// future: dropped while `read` runs, it let the next answer be read at
/// once (review 233). A panic in `read` is an `internal` error.
///
/// Each answer's tree is held to [`MAX_TREE_BYTES`], not to a share of a
/// total (its call ran: refusing it for room would lose what it did), so
/// answers read at once held that much each, some 1.2 GiB a worker (review
/// 233). In turn, large answers hold at most one such tree while it is
/// built, and each other answer at most about 100 MiB. (A tree handed to
/// its caller lives until the call is answered, as a request's result
/// does.)
pub async fn read_large_answer(
    until: Option<tokio::time::Instant>,
    read: impl FnOnce() -> crate::Result<Value> + Send + 'static,
) -> Option<crate::Result<Value>> {
    read_in_turn(&LARGE_ANSWERS, until, read).await
}

/// [`read_large_answer`] in the turns of `turns`.
async fn read_in_turn(
    turns: &'static tokio::sync::Semaphore,
    until: Option<tokio::time::Instant>,
    read: impl FnOnce() -> crate::Result<Value> + Send + 'static,
) -> Option<crate::Result<Value>> {
    let turn = turns.acquire();
    let turn = match until {
        Some(until) => tokio::time::timeout_at(until, turn).await.ok()?,
        None => turn.await,
    }
    .expect("the turn of large answers is never closed");
    let built = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        read()
    })
    .await;
    Some(built.unwrap_or_else(|e| {
        if e.is_cancelled() {
            return Err(crate::Error::Unavailable {
                what: "workers",
                reason: "the runtime stopped while a worker's answer was read".into(),
            });
        }
        let why = e
            .try_into_panic()
            .ok()
            .and_then(|p| {
                p.downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
            })
            .unwrap_or_default();
        Err(crate::Error::Internal {
            message: format!("reading a worker's answer failed: {why}"),
        })
    }))
}

/// Whether `input`'s tree, as [`parse_alone`] would count it, fits within
/// `limit`, found without building it: [`Unreadable::TooLarge`] when it
/// does not, [`Unreadable::Syntax`] for what is not JSON. (Members named
/// twice and inexact integers are not looked for.) Checking a value about
/// to be stored this way costs a walk, not a tree of up to `limit` beside
/// the request's own (review 250).
pub fn fits_within(input: &[u8], limit: usize) -> Result<(), Unreadable> {
    let budget = Budget::new((limit, usize::MAX), "", 0);
    let mut de = serde_json::Deserializer::from_slice(input);
    let walked = Measure(&budget)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match (walked, budget.refused.get()) {
        (_, Some(_)) => Err(Unreadable::TooLarge { limit }),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(Unreadable::Syntax(e.to_string())),
    }
}

/// The trees a message for the MCP SDK counts (see [`Budget::copies`])./// The trees a message for the MCP SDK counts (see [`Budget::copies`]).
const SDK_COPIES: usize = 2;

/// [`parse`] with other limits than [`MAX_TREE_BYTES`] and
/// [`MAX_TREES_BYTES`], counting `copies` trees.
fn parse_within(
    input: &[u8],
    limits: (usize, usize),
    owner: &str,
    copies: usize,
) -> Result<(Value, Held), Unreadable> {
    let duplicate = RefCell::new(None);
    let budget = Budget::new(limits, owner, copies);
    let mut de = serde_json::Deserializer::from_slice(input);
    let parsed = Strict(&duplicate, &budget)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate.into_inner(), budget.refused.get()) {
        (_, Some(member), _) => Err(Unreadable::Duplicate(member)),
        (_, None, Some(Refused::TooLarge)) => Err(Unreadable::TooLarge {
            limit: limits.0 / copies.max(1),
        }),
        (_, None, Some(Refused::Busy { own })) => Err(Unreadable::Busy { own }),
        (Ok(v), None, None) => match crate::exact::inexact_integer(input) {
            Some(number) => Err(Unreadable::Inexact(number.to_owned())),
            None => Ok((v, budget.held())),
        },
        (Err(e), None, None) => Err(Unreadable::Syntax(e.to_string())),
    }
}

/// The `id` of a message refused for what it holds (a member named twice,
/// an integer past 64 bits, nesting past 128 levels, a tree too large),
/// read without building anything: its top-level object's `id` member, if
/// it is a string or an integer and named once. Answered with it, a
/// client over stdio matches the refusal to its call (answered with a null
/// id, the JS and Python clients waited for good: review 159).
pub fn top_level_id(input: &[u8]) -> Option<Value> {
    let mut at = skip_space(input, 0);
    if input.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut id = None;
    loop {
        at = skip_space(input, at);
        if input.get(at) == Some(&b'}') {
            return id;
        }
        let key_end = string_end(input, at)?;
        let key: String = serde_json::from_slice(&input[at..key_end]).ok()?;
        at = skip_space(input, key_end);
        if input.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(input, at + 1);
        let end = value_end(input, at)?;
        if key == "id" {
            if id.is_some() {
                return None; // named twice: which one is meant is not clear
            }
            // Only a string or a number is read: an array or an object
            // would be built whole, uncounted, for a message just refused
            // for its size (review 160).
            if !matches!(input[at], b'"' | b'-' | b'0'..=b'9') {
                return None;
            }
            let value: Value = serde_json::from_slice(&input[at..end]).ok()?;
            if !(value.is_string() || value.is_i64() || value.is_u64()) {
                return None;
            }
            id = Some(value);
        }
        at = skip_space(input, end);
        match input.get(at) {
            Some(b',') => at += 1,
            Some(b'}') => return id,
            _ => return None,
        }
    }
}

fn skip_space(input: &[u8], mut at: usize) -> usize {
    while input.get(at).is_some_and(|b| b" \t\r\n".contains(b)) {
        at += 1;
    }
    at
}

/// Past the end of the string starting at `at` (its opening quote).
fn string_end(input: &[u8], at: usize) -> Option<usize> {
    if input.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    loop {
        match input.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Past the end of the value starting at `at`, nested values skipped by
/// counting brackets (no recursion, whatever the depth).
fn value_end(input: &[u8], at: usize) -> Option<usize> {
    match input.get(at)? {
        b'"' => string_end(input, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match input.get(i)? {
                    b'"' => {
                        i = string_end(input, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = at;
            while input.get(i).is_some_and(|b| !b" \t\r\n,}]".contains(b)) {
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
}

/// Builds a `Value`, noting the first duplicated member (and failing
/// there), and counting its memory in a [`Budget`] (failing past it).
#[derive(Clone, Copy)]
struct Strict<'a>(&'a RefCell<Option<String>>, &'a Budget<'a>);

impl Strict<'_> {
    /// Counts `bytes` of the tree, or fails the parse past a limit.
    fn take<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        if self.1.take(bytes) {
            Ok(())
        } else {
            Err(E::custom("the message takes too much memory to read"))
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.take(block(v.len()))?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.take(block(v.capacity()))?;
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(self)? {
            self.take(element(items.len()))?;
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                *self.0.borrow_mut() = Some(shown);
                return Err(de::Error::custom("a member appears twice"));
            }
            self.take(if members.is_empty() { NODE } else { MEMBER } + block(key.capacity()))?;
            let value = map.next_value_seed(self)?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

/// [`Strict`]'s count of a value, building nothing ([`fits_within`]).
#[derive(Clone, Copy)]
struct Measure<'a>(&'a Budget<'a>);

impl Measure<'_> {
    fn take<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        if self.0.take(bytes) {
            Ok(())
        } else {
            Err(E::custom("the value takes too much memory to read"))
        }
    }
}

impl<'de> DeserializeSeed<'de> for Measure<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Measure<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.take(block(v.len()))
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut len = 0;
        while seq.next_element_seed(self)?.is_some() {
            self.take(element(len))?;
            len += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut members = 0;
        while let Some(key) = map.next_key_seed(KeyLength)? {
            self.take(if members == 0 { NODE } else { MEMBER } + block(key))?;
            map.next_value_seed(self)?;
            members += 1;
        }
        Ok(())
    }
}

/// A member's name read for its length alone: the capacity of the
/// `String` [`Strict`] reads it into.
struct KeyLength;

impl<'de> DeserializeSeed<'de> for KeyLength {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyLength {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member's name")
    }

    fn visit_str<E>(self, v: &str) -> Result<usize, E> {
        Ok(v.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value's walk counts what its tree counts, to the byte: a value
    /// checked with `fits_within` when stored is read back with
    /// `parse_alone` within the same limit.
    #[test]
    fn a_walk_counts_what_a_tree_counts() {
        let samples = [
            r#"{"":0}"#,
            r#"[{"":0},{"":0},{"":0},{"":0},{"":0}]"#,
            r#"{"a":{"b":{"c":[1,2,3,"four",null,true]}},"k":"v\n\u00e9"}"#,
            r#"[[],[[]],[[[]]],{},[{}],"",[""]]"#,
            r#"{"one":1,"two":2,"three":3,"four":4,"five":5,"six":6,"seven":7,"eight":8,"nine":9,"ten":10,"eleven":11,"twelve":12,"thirteen":13}"#,
            r#""a string of some length, with an escape \" inside""#,
            r#"[1.5e300,-0.0,18446744073709551615,-9223372036854775808]"#,
        ];
        for sample in samples {
            assert!(parse_alone(sample.as_bytes(), 1 << 20).is_ok(), "{sample}");
            for limit in (0..6000).step_by(7) {
                assert_eq!(
                    fits_within(sample.as_bytes(), limit).is_ok(),
                    parse_alone(sample.as_bytes(), limit).is_ok(),
                    "{sample} within {limit}"
                );
            }
        }
        assert!(matches!(
            fits_within(b"[1,", 1 << 20),
            Err(Unreadable::Syntax(_))
        ));
    }

    /// Review 233: the turn was the future's, so a caller gone while its
    /// answer was read let the next be read at once, beside it; a panic
    /// reading one is an error, and a turn that does not come by `until`
    /// is `None`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_answers_are_read_one_at_a_time_whatever_their_callers_do() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        // A turn of its own: the other tests' answers take the process's.
        static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let read = |ms: u64| {
            let (now, most) = (now.clone(), most.clone());
            move || {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        };
        let first = tokio::spawn(read_in_turn(&TURNS, None, read(300)));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        first.abort();
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(100);
        assert!(
            read_in_turn(&TURNS, Some(soon), read(0)).await.is_none(),
            "the turn came while the first was read"
        );
        assert!(read_in_turn(&TURNS, None, read(10)).await.unwrap().is_ok());
        assert_eq!(most.load(Ordering::SeqCst), 1, "read at once");
        let e = read_in_turn(&TURNS, None, || panic!("a bug"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Internal, "{e}");
        assert!(e.to_string().contains("a bug"), "{e}");
        // The turn is free again after the panic.
        assert!(read_in_turn(&TURNS, None, read(0)).await.unwrap().is_ok());
    }

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth() {
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELECT 1","sql":"DROP TABLE t"},"id":1}"#,
            r#"[{"id": 1}, {"x": [{"k": 1, "k": 1}]}]"#,
        ] {
            assert!(
                matches!(parse(text.as_bytes(), ""), Err(Unreadable::Duplicate(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn everything_else_reads_as_serde_json_reads_it() {
        for text in [
            r#"{"a": 1, "b": [1, 2.5, -3, 18446744073709551615, "x", null, true, {}]}"#,
            r#"[]"#,
            r#""\u00e9""#,
            r#"1.7976931348623157e308"#,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text.as_bytes(), "").unwrap().0, expected, "{text}");
        }
        assert!(matches!(parse(b"{", ""), Err(Unreadable::Syntax(_))));
        // Found by review 121: rounded to 1.8446744073709552e19 before.
        assert_eq!(
            parse(br#"{"params": [18446744073709551617]}"#, "").err(),
            Some(Unreadable::Inexact("18446744073709551617".into()))
        );
        assert!(matches!(parse(b"1 2", ""), Err(Unreadable::Syntax(_))));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            parse(deep.as_bytes(), ""),
            Err(Unreadable::Syntax(_))
        ));
    }

    /// `n` one-member objects in an array: about 680 bytes of tree each
    /// (by the estimate: a B-tree node and an element), 7 bytes of text.
    fn small_objects(n: usize) -> Vec<u8> {
        format!("[{}]", vec![r#"{"":0}"#; n].join(",")).into_bytes()
    }

    #[test]
    fn a_refused_messages_id_is_read_without_building_it() {
        let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        let cases: [(String, Option<Value>); 9] = [
            (
                format!(r#"{{"jsonrpc":"2.0","method":"m","params":{deep},"id":7}}"#),
                Some(7.into()),
            ),
            (
                format!(r#" {{ "id" : "a\"b" , "params": [{deep}, "}}]"] }}"#),
                Some("a\"b".into()),
            ),
            (
                r#"{"params":[18446744073709551617],"id":18446744073709551615}"#.into(),
                Some(u64::MAX.into()),
            ),
            (r#"{"id":1,"params":{"a":1,"a":2}}"#.into(), Some(1.into())),
            (r#"{"id":1,"id":2}"#.into(), None),
            (r#"{"id":1.5}"#.into(), None),
            (r#"{"id":[1]}"#.into(), None),
            (r#"[{"id":1}]"#.into(), None),
            (r#"{"id":1,"params":[1,2"#.into(), None),
        ];
        for (text, want) in cases {
            assert_eq!(
                top_level_id(text.as_bytes()),
                want,
                "{}",
                &text[..text.len().min(80)]
            );
        }
    }

    /// The tests that reserve memory, one at a time (they count [`HELD`]).
    static RESERVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_tree_over_its_limit_is_refused_as_it_is_built() {
        let _one = RESERVING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // 2,000 small objects: 14 KB of text, about 1.4 MB of tree.
        let text = small_objects(2_000);
        assert_eq!(
            parse_within(&text, (1 << 20, 1 << 30), "t", 1).err(),
            Some(Unreadable::TooLarge { limit: 1 << 20 })
        );
        assert!(parse_within(&text, (4 << 20, 1 << 30), "t", 1).is_ok());
        // Its answer names the limit and says nothing was done.
        let e = Unreadable::TooLarge { limit: 1 << 20 }.error();
        assert_eq!(e.kind().as_str(), "too_large");
        assert!(e.to_string().contains("nothing was done"), "{e}");
        assert!(e.to_string().contains("1048576"), "{e}");
        // Big strings count too: 3 MiB of one string.
        let long = format!("[\"{}\"]", "x".repeat(3 << 20));
        assert_eq!(
            parse_within(long.as_bytes(), (2 << 20, 1 << 30), "t", 1).err(),
            Some(Unreadable::TooLarge { limit: 2 << 20 })
        );
    }

    #[test]
    fn trees_held_together_are_bounded_until_answered() {
        let _one = RESERVING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Each about 1.4 MB of tree (2 steps reserved); together at most 5
        // MiB more than held now.
        let text = small_objects(2_000);
        let base = HELD.load(Ordering::Acquire);
        let limits = (64 << 20, base + (5 << 20));
        let first = parse_within(&text, limits, "t", 1).unwrap();
        let second = parse_within(&text, limits, "t", 1).unwrap();
        assert_eq!(
            parse_within(&text, limits, "t", 1).err(),
            Some(Unreadable::Busy { own: false }),
            "held: {}",
            HELD.load(Ordering::Acquire) - base
        );
        let e = Unreadable::Busy { own: false }.error();
        assert_eq!(e.kind().as_str(), "unavailable");
        // Answered: its share is given back, and another fits.
        drop(first);
        assert!(parse_within(&text, limits, "t", 1).is_ok());
        drop(second);
        // A small message reserves nothing.
        let before = HELD.load(Ordering::Acquire);
        let (_small, held) = parse(br#"{"a": [1, 2, 3]}"#, "").unwrap();
        assert_eq!(held.bytes, 0);
        assert_eq!(HELD.load(Ordering::Acquire), before);
    }

    #[test]
    fn one_caller_holds_at_most_a_messages_share() {
        let _one = RESERVING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // 2 MiB reserved each (1.4 MB estimated); a caller may hold 3 MiB
        // (review 160: two slow requests of one key held everyone's share
        // for an hour).
        let text = small_objects(2_000);
        let limits = (3 << 20, 1 << 30);
        let first = parse_within(&text, limits, "k", 1).unwrap();
        assert_eq!(
            parse_within(&text, limits, "k", 1).err(),
            Some(Unreadable::Busy { own: true })
        );
        let other = parse_within(&text, limits, "j", 1).unwrap();
        drop(first);
        assert!(parse_within(&text, limits, "k", 1).is_ok());
        drop(other);
        // Read for the MCP SDK: its share counts its copies.
        let (_, once) = parse_within(&text, limits, "k", 1).unwrap();
        let (_, twice) = parse_within(&text, (8 << 20, 1 << 30), "m", 2).unwrap();
        assert!(twice.bytes > once.bytes, "{} {}", twice.bytes, once.bytes);
        drop((once, twice));
        // Past the total with another's share: send it again later; past
        // a caller's share alone: too large, the limit its tree's part
        // (review 162: a message for the SDK took nearly the whole total).
        let base = HELD.load(Ordering::Acquire);
        let total = (8 << 20, base + (4 << 20));
        let other = parse_within(&text, total, "j", 1).unwrap();
        assert_eq!(
            parse_within(&text, total, "m", 2).err(),
            Some(Unreadable::Busy { own: false })
        );
        drop(other);
        assert!(parse_within(&text, total, "m", 2).is_ok());
        assert_eq!(
            parse_within(&text, (2 << 20, 1 << 30), "m", 2).err(),
            Some(Unreadable::TooLarge { limit: 1 << 20 })
        );
        // Small arrays count their first allocation (review 160).
        let nested = format!("[{}]", vec!["[[[[0]]]]"; 2_000].join(","));
        let (_, held) = parse_within(nested.as_bytes(), (64 << 20, 1 << 30), "k", 1).unwrap();
        assert!(held.bytes >= 2 << 20, "{}", held.bytes);
    }
}
