//! The worker protocol: newline-delimited JSON-RPC 2.0 on the worker's
//! stdin/stdout (the README's "The Python worker SDK" describes it for authors).

use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::Error;

/// A method a worker offers, from its `$/ready`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MethodInfo {
    /// The name callers use.
    pub name: String,
    /// Whether the call may be retried on another worker after a crash.
    #[serde(default = "yes")]
    pub idempotent: bool,
    /// When set, results may be cached this long.
    #[serde(default)]
    pub cache_ttl_s: Option<f64>,
    /// What the method does (the first paragraph of its docstring).
    #[serde(default)]
    pub description: Option<String>,
    /// Its named parameters, when the worker could describe them (at most
    /// 256).
    #[serde(default, deserialize_with = "some_at_most::<MAX_PARAMS, _, _>")]
    pub params: Option<Vec<ParamInfo>>,
    /// It takes its arguments by position only (`*args`, positional-only
    /// parameters, no `**kwargs`), when it has no `params`.
    #[serde(default)]
    pub positional: bool,
}

#[cfg(all(test, feature = "nats"))]
impl MethodInfo {
    /// A method of this name, described no further.
    pub(crate) fn named(name: &str, idempotent: bool) -> MethodInfo {
        MethodInfo {
            name: name.into(),
            idempotent,
            cache_ttl_s: None,
            description: None,
            params: None,
            positional: false,
        }
    }
}

/// One parameter of a worker method, from its `$/ready`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ParamInfo {
    /// The name.
    pub name: String,
    /// Whether the call must give it.
    #[serde(default)]
    pub required: bool,
    /// Its JSON type (`integer`, `number`, `string`, `boolean`, `array`,
    /// `object`), when the handler's annotation says.
    #[serde(default, rename = "type")]
    pub json_type: Option<String>,
    /// Whether it may be `null` although it has a type
    /// (`Optional[int]`, `int | None`).
    #[serde(default)]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// The parameters of `$/ready`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Ready {
    pub(crate) pid: Option<u32>,
    #[serde(default, deserialize_with = "at_most::<MAX_METHODS, _, _>")]
    pub(crate) methods: Vec<MethodInfo>,
    /// Whether it accepts names it did not list (generic dotted-path mode).
    #[serde(default)]
    pub(crate) dynamic: bool,
    /// In generic mode, the dotted prefixes it serves (`None`: not said).
    #[serde(default, deserialize_with = "some_at_most::<MAX_METHODS, _, _>")]
    pub(crate) prefixes: Option<Vec<String>>,
}

/// The most parameters one method may describe.
pub(crate) const MAX_PARAMS: usize = 256;

/// A list of at most `N` items, refused as it is read past that (review
/// 231: a `$/ready` of millions was built whole, then counted).
fn at_most<'de, const N: usize, T, D>(d: D) -> Result<Vec<T>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    struct Bounded<const N: usize, T>(std::marker::PhantomData<T>);
    impl<'de, const N: usize, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<N, T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {N} items")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if out.len() == N {
                    return Err(serde::de::Error::custom(format!(
                        "a list of more than {N} items"
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded::<N, T>(std::marker::PhantomData))
}

/// [`at_most`] of a list that may be `null`.
fn some_at_most<'de, const N: usize, T, D>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    struct Maybe<const N: usize, T>(std::marker::PhantomData<T>);
    impl<'de, const N: usize, T: Deserialize<'de>> serde::de::Visitor<'de> for Maybe<N, T> {
        type Value = Option<Vec<T>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "null or a list of at most {N} items")
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<S: serde::Deserializer<'de>>(self, d: S) -> Result<Self::Value, S::Error> {
            at_most::<N, T, S>(d).map(Some)
        }
    }
    d.deserialize_option(Maybe::<N, T>(std::marker::PhantomData))
}

/// A response's result as the worker wrote it: read into a tree
/// ([`tree`]) only for a call that waits for it.
pub(crate) type Raw = Box<serde_json::value::RawValue>;

/// One line from a worker.
#[derive(Debug)]
pub(crate) enum Incoming {
    Ready(Ready),
    Response {
        id: u64,
        outcome: Result<Raw, Error>,
    },
    /// A notification other than `$/ready` (ignored, logged).
    Notification(String),
}

/// A line as read: its parameters, result and error's data are kept as
/// text, not trees (review 230: a worker's line of 64 MiB of small objects
/// took gigabytes as a tree, read before anything looked whether a call
/// waited for it).
#[derive(Deserialize)]
struct Line {
    jsonrpc: Option<String>,
    id: Option<Raw>,
    method: Option<String>,
    params: Option<Raw>,
    result: Option<Raw>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireError {
    code: i64,
    message: String,
    data: Option<Raw>,
}

/// What litebridge reads of an error's `data` (the rest is skipped, not
/// built), each member on its own: one of another type leaves the others
/// read (review 231).
#[derive(Deserialize, Default)]
struct ErrorData {
    #[serde(rename = "type")]
    type_name: Option<Raw>,
    traceback: Option<Raw>,
    deliberate: Option<Raw>,
}

impl ErrorData {
    /// The data of an error, if it is an object.
    fn of(data: Option<&serde_json::value::RawValue>) -> ErrorData {
        data.filter(|d| d.get().starts_with('{'))
            .and_then(|d| serde_json::from_str(d.get()).ok())
            .unwrap_or_default()
    }

    fn read<T: serde::de::DeserializeOwned>(member: Option<&Raw>) -> Option<T> {
        serde_json::from_str(member?.get()).ok()
    }
}

/// The tree of an answer's result, its memory counted as it is built, as a
/// request's is (`crate::json`): past [`crate::json::MAX_TREE_BYTES`] the
/// call fails with `too_large`. Counted against that alone, not in the
/// shares of the requests being read: the call ran, and `unavailable`, a
/// retry's cue, would have it run again (review 231).
pub(crate) fn tree(raw: &serde_json::value::RawValue) -> Result<Json, Error> {
    use crate::json::Unreadable;
    match crate::json::parse_alone(raw.get().as_bytes(), crate::json::MAX_TREE_BYTES) {
        Ok(tree) => Ok(tree),
        Err(Unreadable::TooLarge { limit }) => Err(Error::TooLarge {
            what: "the worker's answer, read into memory (its objects and values are many for \
                   its size): return fewer values, or large data as a string,"
                .into(),
            limit: limit as u64,
        }),
        Err(Unreadable::Duplicate(member)) => Err(protocol_error(format!(
            "the worker's answer names the member {member:?} twice in one object"
        ))),
        Err(Unreadable::Inexact(number)) => Err(protocol_error(format!(
            "the worker's answer holds {}: return it as a string",
            crate::exact::inexact_integer_named(&number)
        ))),
        Err(e @ (Unreadable::Syntax(_) | Unreadable::Busy { .. })) => Err(protocol_error(format!(
            "the worker's answer cannot be read: {e:?}"
        ))),
    }
}

/// How the error of a `$/ready` that cannot be taken begins.
pub(crate) const BAD_READY: &str = "bad $/ready";

/// The most methods one `$/ready` may announce, and the longest name: the
/// names of every start are kept (`names.rs`), and a worker announcing
/// others at each start grew them without bound (review 230).
pub(crate) const MAX_METHODS: usize = 4096;
pub(crate) const MAX_METHOD_NAME: usize = 256;

/// The most of a method's description kept (bytes; a longer one is cut).
pub(crate) const MAX_DESCRIPTION: usize = 4096;

/// The most parameters one `$/ready` may describe, its methods together.
pub(crate) const MAX_ALL_PARAMS: usize = 16_384;

/// `ready` within its limits: the names' lengths and the parameters of all
/// its methods (their counts are bounded as they are read), its
/// descriptions cut to [`MAX_DESCRIPTION`] (review 232: a worker kept
/// megabytes of them, copied at each MCP tool call).
fn checked(mut ready: Ready) -> Result<Ready, String> {
    if let Some(m) = ready
        .methods
        .iter()
        .find(|m| m.name.len() > MAX_METHOD_NAME)
    {
        return Err(format!(
            "a method's name is {} bytes long, longer than {MAX_METHOD_NAME} ({}...)",
            m.name.len(),
            m.name.chars().take(40).collect::<String>()
        ));
    }
    let params: usize = ready
        .methods
        .iter()
        .map(|m| m.params.as_ref().map_or(0, Vec::len))
        .sum();
    if params > MAX_ALL_PARAMS {
        return Err(format!(
            "its methods describe {params} parameters, more than {MAX_ALL_PARAMS}"
        ));
    }
    for d in ready
        .methods
        .iter_mut()
        .filter_map(|m| m.description.as_mut())
    {
        let kept = prefix(d, MAX_DESCRIPTION).len();
        d.truncate(kept);
    }
    Ok(ready)
}

/// `text` cut to at most `max` bytes, at a character's boundary.
pub(crate) fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The call a response's id names, and whether it is written as the
/// integer the call was sent with.
struct CallId {
    call: u64,
    exact: bool,
}

fn as_call_id(raw: &serde_json::value::RawValue) -> Option<CallId> {
    // Read only when it is short: an id of megabytes was built whole
    // (review 231).
    if raw.get().len() > 40 {
        return None;
    }
    let id: Json = serde_json::from_str(raw.get()).ok()?;
    if let Some(call) = id.as_u64() {
        return Some(CallId { call, exact: true });
    }
    let call = match &id {
        Json::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15)
            .map(|f| f as u64),
        Json::String(s) => s.parse::<u64>().ok(),
        _ => None,
    }?;
    Some(CallId { call, exact: false })
}

/// A parse error's text, cut short: serde quotes a string of the wrong
/// type whole, so a worker's line of 64 MiB made a message (a log line, a
/// call's error) of as much (review 232).
fn short(e: &serde_json::Error) -> String {
    cut(&e.to_string())
}

/// `text`, at most [`SHOWN`] characters of it.
pub(crate) fn cut(text: &str) -> String {
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_owned(),
    }
}

/// The most characters of a worker's text quoted in a message.
const SHOWN: usize = 200;

/// A `ProtocolError`: the worker's answer broke the protocol.
fn protocol_error(message: String) -> Error {
    Error::WorkerError {
        code: -32603,
        message,
        type_name: "ProtocolError".into(),
        traceback: String::new(),
        deliberate: false,
    }
}

/// Parses one line (with its `\n`, when it came whole); `Err` describes
/// what is wrong with it. A whole line that cannot be read but is a
/// response naming its call (JSON that is not UTF-8, from a worker that
/// wrote a lone surrogate; `NaN` in a result; its id where responses put
/// it) fails that call at once, as an error naming the problem, rather than
/// leave its caller waiting for its deadline. A line cut short by the
/// worker's end is left to the crash that ends the call.
pub(crate) fn parse(line: &[u8]) -> Result<Incoming, String> {
    parse_line(line, true)
}

/// [`parse`] of a line from a worker that is ready: a `$/ready` is a
/// notification like any other, not read (review 231: one of millions of
/// methods was built, then ignored, as often as it was sent).
pub(crate) fn parse_after_ready(line: &[u8]) -> Result<Incoming, String> {
    parse_line(line, false)
}

fn parse_line(line: &[u8], ready_wanted: bool) -> Result<Incoming, String> {
    let l: Line = match serde_json::from_slice(line) {
        Ok(l) => l,
        Err(e) => return unreadable(line, &e),
    };
    if l.jsonrpc.as_deref() != Some("2.0") {
        return Err("missing \"jsonrpc\": \"2.0\"".into());
    }
    if let Some(method) = l.method {
        if method == "$/ready" && ready_wanted {
            let params = l.params.as_deref().map_or("null", |p| p.get());
            let ready: Ready =
                serde_json::from_str(params).map_err(|e| format!("{BAD_READY}: {}", short(&e)))?;
            return checked(ready)
                .map(Incoming::Ready)
                .map_err(|e| format!("{BAD_READY}: {e}"));
        }
        return Ok(Incoming::Notification(method));
    }
    let id = match l.id.as_deref().map(|id| (id.get(), as_call_id(id))) {
        Some((_, Some(id))) if id.exact => id.call,
        // The number of a call, written otherwise (`1.0`, `"1"`): that call
        // fails at once, not at its deadline (review 230).
        Some((written, Some(id))) => {
            return Ok(Incoming::Response {
                id: id.call,
                outcome: Err(protocol_error(format!(
                    "the worker answered call {} with the id {written}: answer with the id as it \
                     was sent, the integer {}",
                    id.call, id.call
                ))),
            });
        }
        _ => return Err("a response without an id of a call (an integer)".to_owned()),
    };
    let outcome = match (l.result, l.error) {
        (_, Some(e)) => Err(worker_error(e)),
        // Read rounded (found by review 121: Python's integers have no
        // bound): the caller gets an error, not a changed number.
        (Some(_), None) if let Some(number) = crate::exact::inexact_integer(line) => {
            Err(protocol_error(format!(
                "the worker's answer holds {}: return it as a string",
                crate::exact::inexact_integer_named(number)
            )))
        }
        (Some(r), None) => Ok(r),
        (None, None) => Ok(null()),
    };
    Ok(Incoming::Response { id, outcome })
}

/// A line that could not be read: the call it answers, if it names one,
/// gets an error.
fn unreadable(line: &[u8], e: &serde_json::Error) -> Result<Incoming, String> {
    if !line.ends_with(b"\n") {
        return Err(format!("not JSON-RPC: {}", short(e)));
    }
    let (id, why) = match std::str::from_utf8(line) {
        Err(bad) => {
            // Read again with the bad bytes replaced, for its id only.
            let id = serde_json::from_str::<Line>(&String::from_utf8_lossy(line))
                .ok()
                .filter(|l| l.method.is_none() && l.jsonrpc.as_deref() == Some("2.0"))
                .and_then(|l| l.id.as_deref().and_then(as_call_id))
                .filter(|id| id.exact)
                .map(|id| id.call);
            let why = format!(
                "is not valid UTF-8 (byte {} of the line): text the handler returned holds bytes that are not Unicode",
                bad.valid_up_to()
            );
            (id, why)
        }
        Ok(_) => (
            None,
            format!(
                "is not JSON that litebridge can read ({}) (NaN or Infinity in a result, say)",
                short(e)
            ),
        ),
    };
    match id.or_else(|| leading_id(line)) {
        Some(id) => Ok(Incoming::Response {
            id,
            outcome: Err(protocol_error(format!("the worker's answer {why}"))),
        }),
        None => Err(format!("not JSON-RPC: {}", short(e))),
    }
}

/// The id of a response whose line begins as responses are written:
/// `{"jsonrpc":"2.0","id":N,` (the SDK's order) or `{"id":N,"jsonrpc":"2.0",`
/// then `"result"` or `"error"`, with or without spaces between the tokens.
pub(crate) fn leading_id(line: &[u8]) -> Option<u64> {
    fn token<'a>(rest: &'a [u8], t: &[u8]) -> Option<&'a [u8]> {
        rest.trim_ascii_start().strip_prefix(t)
    }
    // `"jsonrpc":"2.0",`, which may come before the id or after it.
    fn jsonrpc(rest: &[u8]) -> Option<&[u8]> {
        let r = token(rest, br#""jsonrpc""#)?;
        token(token(token(r, b":")?, br#""2.0""#)?, b",")
    }
    let open = token(line, b"{")?;
    let rest = jsonrpc(open).unwrap_or(open);
    let rest = token(token(rest, br#""id""#)?, b":")?.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let after = token(&rest[digits..], b",")?;
    let after = jsonrpc(after).unwrap_or(after);
    token(after, br#""result""#).or_else(|| token(after, br#""error""#))?;
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The id of a response whose line ends with its id, as some JSON-RPC
/// libraries write it: `..., "id": N}` (`tail`: the line's last bytes, its
/// newline not counted). Only the object's own last member can end the line
/// so: in a string a quote would be escaped, in a nested object a second
/// `}` would follow.
pub(crate) fn trailing_id(tail: &[u8]) -> Option<u64> {
    let rest = tail.trim_ascii_end().strip_suffix(b"}")?.trim_ascii_end();
    let digits = rest.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (rest, number) = rest.split_at(rest.len() - digits);
    let rest = rest.trim_ascii_end().strip_suffix(b":")?.trim_ascii_end();
    let rest = rest.strip_suffix(br#""id""#)?.trim_ascii_end();
    if !rest.ends_with(b",") && !rest.ends_with(b"{") {
        return None;
    }
    std::str::from_utf8(number).ok()?.parse().ok()
}

/// A `null` result.
fn null() -> Raw {
    serde_json::value::RawValue::from_string("null".into()).expect("null is JSON")
}

fn worker_error(e: WireError) -> Error {
    // Fields of another type than litebridge reads are left out, as an
    // object's other members are.
    let data = ErrorData::of(e.data.as_deref());
    match e.code {
        -32601 => Error::invalid("method", e.message),
        -32602 => Error::invalid("params", e.message),
        _ => Error::WorkerError {
            code: e.code,
            message: e.message,
            type_name: ErrorData::read::<String>(data.type_name.as_ref())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "Error".to_owned()),
            traceback: ErrorData::read(data.traceback.as_ref()).unwrap_or_default(),
            deliberate: ErrorData::read(data.deliberate.as_ref()).unwrap_or(false),
        },
    }
}

#[derive(serde::Serialize)]
struct Request<'a> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: &'a Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Meta<'a>>,
}

/// What litebridge tells a worker about a call besides its params (an extra
/// member of the request object, which JSON-RPC peers ignore).
#[derive(serde::Serialize)]
struct Meta<'a> {
    request_id: &'a str,
}

/// A request line (with its newline), serialized straight from borrowed parts.
pub(crate) fn request(id: u64, method: &str, params: &Json, request_id: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + method.len());
    let _ = serde_json::to_writer(
        &mut out,
        &Request {
            jsonrpc: "2.0",
            id,
            method,
            params,
            meta: request_id.map(|request_id| Meta { request_id }),
        },
    );
    out.push(b'\n');
    out
}

/// A notification line (with its newline).
pub(crate) fn notification(method: &str, params: &Json) -> Vec<u8> {
    let mut out = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0", "method": method, "params": params,
    }))
    .unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_responses_and_errors() {
        match parse(br#"{"jsonrpc":"2.0","method":"$/ready","params":{"pid":7,"methods":[{"name":"a"},{"name":"b","idempotent":false,"cache_ttl_s":60}]}}"#).unwrap() {
            Incoming::Ready(r) => {
                assert_eq!(r.pid, Some(7));
                assert!(r.methods[0].idempotent);
                assert!(!r.methods[1].idempotent);
                assert_eq!(r.methods[1].cache_ttl_s, Some(60.0));
            }
            other => panic!("{other:?}"),
        }
        match parse(br#"{"jsonrpc":"2.0","id":3,"result":[1,2]}"#).unwrap() {
            Incoming::Response {
                id: 3,
                outcome: Ok(v),
            } => assert_eq!(tree(&v).unwrap(), serde_json::json!([1, 2])),
            other => panic!("{other:?}"),
        }
        match parse(br#"{"jsonrpc":"2.0","id":4,"error":{"code":-32004,"message":"boom","data":{"type":"ValueError","traceback":"tb"}}}"#).unwrap() {
            Incoming::Response { id: 4, outcome: Err(Error::WorkerError { type_name, traceback, .. }) } => {
                assert_eq!(type_name, "ValueError");
                assert_eq!(traceback, "tb");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(b"garbage").is_err());
        assert!(parse(br#"{"id":1,"result":1}"#).is_err());
        // The id at either end of a line too long to read whole.
        assert_eq!(trailing_id(br#"xxxx"], "id": 12}"#), Some(12));
        assert_eq!(trailing_id(br#"xxxx"],"id":12}  "#), Some(12));
        assert_eq!(trailing_id(br#"x\",\"id\":12}"}"#), None, "in a string");
        assert_eq!(trailing_id(br#"{"a":1,"id":12}}"#), None, "nested");
        assert_eq!(trailing_id(br#"x"],"xid":12}"#), None);
        // Found by review 121: read as 1.8446744073709552e19 before.
        match parse(br#"{"jsonrpc":"2.0","id":5,"result":{"n":18446744073709551617}}"#).unwrap() {
            Incoming::Response {
                id: 5,
                outcome: Err(e @ Error::WorkerError { .. }),
            } => assert!(
                e.to_string()
                    .contains("holds the integer 18446744073709551617, outside the 64-bit range"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// Review 232: serde quotes a string of the wrong type whole, so a line
    /// of 64 MiB made a log line, or a call's error, of as much.
    #[test]
    fn what_a_line_cannot_be_read_for_is_said_in_few_words() {
        let big = "\u{85}".repeat(1 << 20);
        let e = parse(format!(r#"{{"jsonrpc":"2.0","error":"{big}"}}"#).as_bytes()).unwrap_err();
        assert!(e.len() < 4096, "{} bytes", e.len());
        let line = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{{\"code\":\"{big}\"}}}}\n");
        match parse(line.as_bytes()) {
            Ok(Incoming::Response {
                id: 1,
                outcome: Err(e),
            }) => assert!(e.to_string().len() < 4096, "{} bytes", e.to_string().len()),
            other => panic!("{other:?}"),
        }
    }

    /// Review 231: each member of an error's data is read on its own.
    #[test]
    fn an_errors_data_is_read_member_by_member() {
        let error = |data: &str| {
            let line = format!(
                r#"{{"jsonrpc":"2.0","id":1,"error":{{"code":-32004,"message":"m","data":{data}}}}}"#
            );
            match parse(line.as_bytes()) {
                Ok(Incoming::Response {
                    outcome:
                        Err(Error::WorkerError {
                            type_name,
                            traceback,
                            deliberate,
                            ..
                        }),
                    ..
                }) => (type_name, traceback, deliberate),
                other => panic!("{data}: {other:?}"),
            }
        };
        assert_eq!(
            error(r#"{"type":"ValueError","traceback":["a"],"deliberate":true}"#),
            ("ValueError".into(), String::new(), true)
        );
        assert_eq!(
            error(r#"{"type":7,"traceback":"tb","deliberate":1,"other":[1,2]}"#),
            ("Error".into(), "tb".into(), false)
        );
        assert_eq!(
            error(r#"["ValueError","tb",true]"#),
            ("Error".into(), String::new(), false),
            "not read by position"
        );
    }

    /// Review 230: an id written otherwise than the integer the call was
    /// sent with (`1.0`, `"1"`) left the call waiting for its deadline.
    #[test]
    fn an_answer_naming_its_call_otherwise_fails_it_at_once() {
        for (line, want) in [
            (&br#"{"jsonrpc":"2.0","id":1.0,"result":1}"#[..], 1),
            (br#"{"jsonrpc":"2.0","id":"7","result":1}"#, 7),
            (
                br#"{"jsonrpc":"2.0","error":{"code":1,"message":"m"},"id":3.0}"#,
                3,
            ),
        ] {
            match parse(line) {
                Ok(Incoming::Response {
                    id,
                    outcome: Err(e @ Error::WorkerError { .. }),
                }) if id == want => assert!(e.to_string().contains("with the id"), "{e}"),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
            }
        }
        for line in [
            &br#"{"jsonrpc":"2.0","id":-1,"result":1}"#[..],
            br#"{"jsonrpc":"2.0","id":1.5,"result":1}"#,
            br#"{"jsonrpc":"2.0","id":"x","result":1}"#,
            br#"{"jsonrpc":"2.0","id":[1],"result":1}"#,
        ] {
            assert!(parse(line).is_err(), "{}", String::from_utf8_lossy(line));
        }
    }

    /// Review 230: a `$/ready` may announce at most [`MAX_METHODS`]
    /// methods, each named in at most [`MAX_METHOD_NAME`] bytes.
    #[test]
    fn a_ready_past_its_limits_is_refused_naming_them() {
        let ready = |methods: Vec<String>| {
            let methods: Vec<Json> = methods
                .into_iter()
                .map(|m| serde_json::json!({"name": m}))
                .collect();
            let line = serde_json::json!({"jsonrpc": "2.0", "method": "$/ready", "params": {"methods": methods}});
            parse(line.to_string().as_bytes())
        };
        assert!(ready((0..MAX_METHODS).map(|i| format!("m{i}")).collect()).is_ok());
        let e = ready((0..=MAX_METHODS).map(|i| format!("m{i}")).collect()).unwrap_err();
        assert!(
            e.starts_with(BAD_READY) && e.contains("more than 4096 items"),
            "{e}"
        );
        // Review 232: all methods' parameters together, and descriptions.
        let line = |methods: Json| {
            serde_json::json!({"jsonrpc": "2.0", "method": "$/ready", "params": {"methods": methods}})
                .to_string()
        };
        let many: Vec<Json> = (0..65)
            .map(|i| serde_json::json!({"name": format!("m{i}"), "params": vec![serde_json::json!({"name": "p"}); 256]}))
            .collect();
        let e = parse(line(Json::Array(many)).as_bytes()).unwrap_err();
        assert!(e.contains("16640 parameters, more than 16384"), "{e}");
        let long = serde_json::json!([{"name": "m", "description": "é".repeat(1 << 19)}]);
        match parse(line(long).as_bytes()).unwrap() {
            Incoming::Ready(r) => {
                let d = r.methods[0].description.as_deref().unwrap();
                assert_eq!(d.len(), MAX_DESCRIPTION);
            }
            other => panic!("{other:?}"),
        }
        let e = parse(line(serde_json::json!([{"name": 1}])).as_bytes()).unwrap_err();
        assert!(e.starts_with(BAD_READY), "{e}");
        // A string of the wrong type, quoted by serde, is cut (review 232).
        let e = parse(line(Json::String("\u{85}".repeat(1 << 20))).as_bytes()).unwrap_err();
        assert!(e.len() < 4096, "{} bytes", e.len());
        assert!(ready(vec!["x".repeat(MAX_METHOD_NAME)]).is_ok());
        let e = ready(vec!["x".repeat(MAX_METHOD_NAME + 1)]).unwrap_err();
        assert!(e.starts_with(BAD_READY) && e.contains("257 bytes"), "{e}");
    }

    #[test]
    fn a_response_that_cannot_be_read_but_names_its_call_fails_it_at_once() {
        let fails = |line: &[u8], want: u64| match parse(line) {
            Ok(Incoming::Response {
                id,
                outcome: Err(Error::WorkerError { message, .. }),
            }) if id == want => message,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(line)),
        };
        // What Python's "surrogatepass" writes for a lone surrogate.
        let m = fails(
            b"{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":\"caf\xed\xb3\xa9\"}\n",
            9,
        );
        assert!(m.contains("not valid UTF-8"), "{m}");
        // NaN and Infinity, which Python's json writes by default, in any
        // member order and with json.dumps's spaces.
        let m = fails(b"{\"jsonrpc\":\"2.0\",\"id\":12,\"result\":NaN}\n", 12);
        assert!(m.contains("NaN"), "{m}");
        fails(
            b"{\"id\":13,\"jsonrpc\":\"2.0\",\"result\":[Infinity]}\n",
            13,
        );
        fails(b"{\"jsonrpc\": \"2.0\", \"id\": 14, \"result\": NaN}\n", 14);
        // Cut short after its id, yet whole as a line: its call fails.
        fails(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[1,\n", 1);
        // A result that names a method of its own is still a result.
        fails(
            b"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"method\":\"GET\",\"x\":NaN}}\n",
            2,
        );
        // Cut short by the worker's end (no newline): left to the crash.
        assert!(parse(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[1,").is_err());
        assert!(parse(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":\"\xed\xb3\xa9\"}").is_err());
        // Without an id to answer, or not a response: ignored, as before.
        for line in [
            &b"{\"jsonrpc\":\"2.0\",\"result\":\"\xff\"}\n"[..],
            b"{\"jsonrpc\":\"2.0\",\"method\":\"x\xff\",\"id\":3}\n",
            b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"x\xff\"}\n",
            b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":NaN}\n",
            b"\xff\xfe\n",
            b"{\"jsonrpc\":\"2.0\",\"id\":\"7\",\"result\":NaN}\n",
            b"{\"jsonrpc\":\"2.0\",\"id\":99999999999999999999999,\"result\":NaN}\n",
            b"{\"jsonrpc\":\"2.0\",\"id\":1\n",
            b"{\"jsonrpc\":\"2.0\",\"id\":1}x\n",
        ] {
            assert!(parse(line).is_err(), "{}", String::from_utf8_lossy(line));
        }
    }
}
