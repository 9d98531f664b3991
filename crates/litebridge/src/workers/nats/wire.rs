//! What crosses NATS: subjects, headers, answers and errors.
//!
//! | subject | what |
//! |---|---|
//! | `<prefix>.v1.call.<method>` | a call, to the queue group; body = the params (JSON); or a bundle of calls (`bundle`) |
//! | the call's reply subject | an acknowledgement (only for calls still running after `ack_delay`), then the answer |
//! | `<front end's inbox>.b` | a bundle of acknowledgements, answers and notices (`bundle`) |
//! | `<front end's inbox>.g<n>` | the reply subject of a bundle of calls: the server's "no responders" for them |
//! | `<prefix>.v1.cancel` | the reply subject of a call its caller gave up on; with that subject as its own reply, a question (`asking`): each host answers there [`UNSEEN`] or [`MAYBE`] |
//! | `<prefix>.v1.hb.<host>` | a host's heartbeat ([`Heartbeat`]) |
//! | `$SRV.PING\|INFO\|STATS.litebridge_workers_<prefix>` | the services protocol (ADR-32), one endpoint per method |

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderName;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::error::{Error, TimeoutStage};
use crate::workers::protocol::prefix;
use crate::workers::{MethodInfo, ParamInfo};

/// The services-protocol name of the worker hosts of the deployment whose
/// subjects start with `prefix`: `litebridge_workers_<prefix>`. The
/// protocol's subjects (`$SRV.INFO.<name>`) carry no prefix of their own,
/// so one name shared by every deployment let another deployment's users
/// answer a front end's discovery with a method list of their choosing
/// (a method declared idempotent, or cached for a century), and made
/// permissions keeping deployments apart impossible to write.
pub(crate) fn service(prefix: &str) -> String {
    format!("litebridge_workers_{prefix}")
}

// Header names are built once (a name given as `&str` is validated and
// copied on every `get` and `insert`: a tenth of the hosts' and front ends'
// time per call in a profile of `bridge-nats-pipelined`).

/// The request's id for the worker's logs.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("Litebridge-Request-Id");
/// Milliseconds left of the call's deadline when it was sent.
pub(crate) const BUDGET_MS: HeaderName = HeaderName::from_static("Litebridge-Budget-Ms");
/// The deadline as Unix milliseconds (a host refuses a call already past it).
pub(crate) const DEADLINE: HeaderName = HeaderName::from_static("Litebridge-Deadline");
/// On a notice about a call, never on its answer: `accepted` (an
/// acknowledgement), [`RUNNING`] or [`DONE`].
pub(crate) const STATUS: HeaderName = HeaderName::from_static("Litebridge-Status");
/// The [`STATUS`] of a notice that a call's worker runs on after its caller
/// gave up (sent when a cancel found it running): the front end keeps the
/// call's place of its key until [`DONE`] comes, or the host is lost.
pub(crate) const RUNNING: &str = "running";
/// `1` on an answer sent at the host's deadline while the call's worker
/// runs on: as [`RUNNING`], a [`DONE`] follows.
pub(crate) const RUNS_ON: HeaderName = HeaderName::from_static("Litebridge-Runs-On");
/// The [`STATUS`] of a notice that a call given up on is over on its host:
/// its worker answered it or ended, or it never reached a worker.
pub(crate) const DONE: &str = "done";
/// The [`STATUS`] of a host's answer to a question (`asking`) when it never
/// took the call (and now never will: the question cancelled it there).
pub(crate) const UNSEEN: &str = "unseen";
/// The [`STATUS`] of a host's answer to a question when it may have taken
/// the call (it ran it, runs it, or cannot be sure).
pub(crate) const MAYBE: &str = "maybe";
/// On a question: when its call was handed to NATS, as Unix milliseconds.
pub(crate) const SENT: HeaderName = HeaderName::from_static("Litebridge-Sent");
/// The id of the host answering.
pub(crate) const HOST: HeaderName = HeaderName::from_static("Litebridge-Host");
/// Which run of that host (its services-protocol id): a host restarted
/// under the same id is another instance.
pub(crate) const INSTANCE: HeaderName = HeaderName::from_static("Litebridge-Instance");
/// A token the front end draws for each call it sends (16 hex digits, a
/// keyed hash of the call's number), echoed on every notice and answer
/// about the call: a front end counts only those that carry it, so a user
/// of the hosts' grants can forge them only for the calls it received
/// (with the queue-only grant of `docs/examples/nats-permissions.conf`).
pub(crate) const TOKEN: HeaderName = HeaderName::from_static("Litebridge-Token");
/// `0` when the call was never started (safe to send elsewhere), `1` when it was.
pub(crate) const STARTED: HeaderName = HeaderName::from_static("Litebridge-Started");

/// How much a host's clock may differ from the front end's before a call
/// that looks expired is refused anyway.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// The subjects of one deployment.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: format!("{prefix}.v1"),
        }
    }

    pub(crate) fn call(&self, method: &str) -> String {
        format!("{}.call.{method}", self.prefix)
    }

    /// Every call (a host in generic mode).
    pub(crate) fn any_call(&self) -> String {
        format!("{}.call.>", self.prefix)
    }

    /// The method a call subject names.
    pub(crate) fn method_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".call.")
            .filter(|m| !m.is_empty())
    }

    pub(crate) fn cancel(&self) -> String {
        format!("{}.cancel", self.prefix)
    }

    pub(crate) fn heartbeat(&self, host: &str) -> String {
        format!("{}.hb.{host}", self.prefix)
    }

    pub(crate) fn heartbeats(&self) -> String {
        format!("{}.hb.*", self.prefix)
    }

    /// Where a front end sends itself probes of its link (`token`: its
    /// own, from its inbox).
    pub(crate) fn probe(&self, token: &str) -> String {
        format!("{}.probe.{token}", self.prefix)
    }
}

/// Whether `method` can be a subject's tail: dot-separated tokens of
/// letters, digits, `_` and `-` (no wildcards, no spaces).
pub(crate) fn method_is_subject_safe(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= 200
        && method.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// The `methods_hash` of a host's heartbeats before its endpoints are all
/// there: its methods are read once another hash comes (an INFO read
/// before then may list some of them only).
pub(crate) const NONE_ANNOUNCED: &str = "starting";

/// The `methods_hash` of an announcement: the endpoint metadata of every
/// method announced, in any order, and generic mode, so front ends read the
/// methods again when any of it changes. A front end takes a host's INFO
/// only when it hashes to what the host's heartbeats say: anyone who may
/// answer the services protocol's requests may answer for another host,
/// and once made a method that was not idempotent look so (review 225).
pub(crate) fn methods_hash(announced: &[HashMap<String, String>], dynamic: bool) -> String {
    use sha2::Digest;
    let mut described: Vec<Vec<(&String, &String)>> = announced
        .iter()
        .map(|meta| {
            let mut meta: Vec<_> = meta.iter().collect();
            meta.sort();
            meta
        })
        .collect();
    described.sort();
    let mut h = sha2::Sha256::new();
    for meta in &described {
        for (k, v) in meta {
            for part in [k, v] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        h.update([0xff]);
    }
    h.update([u8::from(dynamic)]);
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a host announces every heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub(crate) host: String,
    /// Its id in the services protocol (for `$SRV.INFO.<name>.<id>`).
    pub(crate) service_id: String,
    /// Changes when the methods it serves change.
    pub(crate) methods_hash: String,
    pub(crate) in_flight: usize,
    pub(crate) processes: usize,
    pub(crate) healthy: bool,
    pub(crate) restarts: u64,
    pub(crate) crashes: u64,
    pub(crate) draining: bool,
    /// Its last heartbeat: it stopped, answered questions for an
    /// acknowledgement's time after, and takes no call any more.
    #[serde(default)]
    pub(crate) retired: bool,
    #[serde(default)]
    pub(crate) workers: Vec<HeartbeatWorker>,
}

/// One worker process of a host, in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeartbeatWorker {
    pub(crate) pid: u32,
    pub(crate) in_flight: usize,
    pub(crate) calls: u64,
    pub(crate) uptime_ms: u64,
}

/// A method's description, as endpoint metadata (strings only, per ADR-32).
pub(crate) fn method_metadata(m: &MethodInfo) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    meta.insert("method".into(), m.name.clone());
    meta.insert("idempotent".into(), m.idempotent.to_string());
    if let Some(ttl) = m.cache_ttl_s {
        meta.insert("cache_ttl_s".into(), ttl.to_string());
    }
    if let Some(d) = &m.description {
        meta.insert("description".into(), d.clone());
    }
    if let Some(params) = &m.params {
        let v: Vec<Json> = params
            .iter()
            .map(|p| {
                let mut v = json!({"name": p.name, "required": p.required, "type": p.json_type});
                if p.nullable {
                    v["nullable"] = json!(true);
                }
                v
            })
            .collect();
        meta.insert("params".into(), Json::Array(v).to_string());
    }
    if m.positional {
        meta.insert("positional".into(), "true".into());
    }
    meta
}

/// The method an endpoint's metadata describes (`None`: not one of ours).
pub(crate) fn method_from_metadata(meta: &HashMap<String, String>) -> Option<MethodInfo> {
    // A name that could not be called (nor named in a subject) is no method.
    let name = meta
        .get("method")
        .filter(|n| method_is_subject_safe(n))?
        .clone();
    // Kept within bounds: a front end keeps every host's methods, and an
    // announcement may be as large as the server's max_payload (review
    // 191: 300 hosts of 1,000 long methods each took 400 MB).
    let params = meta
        .get("params")
        .filter(|p| p.len() <= MAX_PARAMS_TEXT)
        .and_then(|p| {
            let v: Vec<Json> = serde_json::from_str(p).ok()?;
            Some(
                v.into_iter()
                    .filter_map(|p| {
                        Some(ParamInfo {
                            name: p
                                .get("name")?
                                .as_str()
                                .filter(|n| n.len() <= MAX_NAME)?
                                .to_owned(),
                            required: p.get("required").and_then(Json::as_bool).unwrap_or(false),
                            json_type: p
                                .get("type")
                                .and_then(Json::as_str)
                                .filter(|t| t.len() <= MAX_NAME)
                                .map(str::to_owned),
                            nullable: p.get("nullable").and_then(Json::as_bool).unwrap_or(false),
                        })
                    })
                    .take(MAX_PARAMS)
                    .collect(),
            )
        });
    Some(MethodInfo {
        name,
        idempotent: meta.get("idempotent").is_some_and(|v| v == "true"),
        cache_ttl_s: meta.get("cache_ttl_s").and_then(|v| v.parse().ok()),
        description: meta
            .get("description")
            .map(|d| prefix(d, MAX_DESCRIPTION).to_owned()),
        params,
        positional: meta.get("positional").is_some_and(|v| v == "true"),
    })
}

/// The most of a method's description a front end keeps (bytes), as a
/// worker's own.
pub(crate) const MAX_DESCRIPTION: usize = crate::workers::protocol::MAX_DESCRIPTION;
/// The longest text of a method's parameters read (a longer one is not
/// read: the method is taken without them).
const MAX_PARAMS_TEXT: usize = 16 * 1024;
/// The most parameters of a method kept.
const MAX_PARAMS: usize = 64;
/// The longest name or type of a parameter kept.
const MAX_NAME: usize = 128;

/// An answer's body: `{"result": ...}` or `{"error": {...}}`.
pub(crate) fn answer_body(outcome: &Result<Json, Error>) -> Vec<u8> {
    /// A result written as it is, with no object built around it.
    #[derive(Serialize)]
    struct Answered<'a> {
        result: &'a Json,
    }
    match outcome {
        Ok(result) => serde_json::to_vec(&Answered { result }),
        Err(e) => serde_json::to_vec(&json!({ "error": encode_error(e) })),
    }
    .unwrap_or_default()
}

/// An answer as read: an object with a result (which may be `null`) or an
/// error; any other member is ignored, and of a member given twice the
/// last counts. Each member is kept as text and read into a tree counted as
/// it is built, as a local worker's answer is (`protocol::tree`): a peer on
/// the bus sending an answer of small objects built a tree of a hundred
/// times its size, uncounted.
struct Answer {
    result: Option<Box<serde_json::value::RawValue>>,
    error: Option<Box<serde_json::value::RawValue>>,
}

/// `raw` read into a tree within [`crate::json::MAX_TREE_BYTES`].
fn counted(raw: &serde_json::value::RawValue) -> Result<Json, crate::json::Unreadable> {
    crate::json::parse_alone(raw.get().as_bytes(), crate::json::MAX_TREE_BYTES)
}

impl<'de> Deserialize<'de> for Answer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Answer, D::Error> {
        /// A member's name, read without a copy.
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Member {
            Result,
            Error,
            #[serde(other)]
            Other,
        }
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Answer;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Answer, A::Error> {
                let mut answer = Answer {
                    result: None,
                    error: None,
                };
                while let Some(member) = map.next_key()? {
                    match member {
                        Member::Result => answer.result = Some(map.next_value()?),
                        Member::Error => answer.error = Some(map.next_value()?),
                        // Read, not skipped: a member a map of them would
                        // refuse (a number past f64, a lone surrogate,
                        // nesting past the parser's depth) still makes the
                        // answer unreadable (review 171).
                        Member::Other => {
                            let raw: Box<serde_json::value::RawValue> = map.next_value()?;
                            counted(&raw).map_err(|e| {
                                serde::de::Error::custom(format!("a member cannot be read: {e:?}"))
                            })?;
                        }
                    }
                }
                Ok(answer)
            }
        }
        d.deserialize_map(Members)
    }
}

/// Whether an error from a host's pool means the call never started.
pub(crate) fn not_started(e: &Error) -> bool {
    matches!(
        e,
        Error::Overloaded { .. }
            | Error::CircuitOpen { .. }
            | Error::InvalidArgument { .. }
            | Error::Unavailable { .. }
            | Error::Timeout {
                stage: TimeoutStage::Queued,
                ..
            }
    )
}

/// An error of a host's pool, for the wire.
fn encode_error(e: &Error) -> Json {
    let mut v = json!({ "kind": e.kind().as_str(), "message": e.to_string() });
    let extra = match e {
        Error::WorkerError {
            code,
            message,
            type_name,
            traceback,
            deliberate,
        } => {
            json!({"code": code, "detail": message, "type": type_name, "traceback": traceback, "deliberate": deliberate})
        }
        // Not its stderr: written while it served every caller, it stays in
        // the host's log.
        Error::WorkerCrashed {
            pid, worker, exit, ..
        } => json!({"pid": pid, "worker": worker, "exit": exit}),
        Error::Timeout { after, stage } => json!({
            "timeout_ms": after.as_millis() as u64,
            "queued": matches!(stage, TimeoutStage::Queued),
        }),
        Error::Overloaded {
            capacity,
            retry_after,
            ..
        } => json!({"capacity": capacity, "retry_after_ms": retry_after.as_millis() as u64}),
        Error::CircuitOpen {
            breaker,
            retry_after,
        } => json!({"breaker": breaker, "retry_after_ms": retry_after.as_millis() as u64}),
        Error::InvalidArgument { param, message } => json!({"param": param, "detail": message}),
        Error::TooLarge { what, limit } => json!({"what": what, "limit": limit}),
        _ => json!({}),
    };
    if let (Some(v), Json::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}

/// An error from a host, back into litebridge's own: the kind and its
/// fields survive; the host is named where the kind has room for it.
pub(crate) fn decode_error(v: &Json, host: &str) -> Error {
    let s = |k: &str| {
        v.get(k)
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let n = |k: &str| v.get(k).and_then(Json::as_u64).unwrap_or_default();
    let ms = |k: &str| Duration::from_millis(n(k));
    match v.get("kind").and_then(Json::as_str).unwrap_or_default() {
        "worker_error" => Error::WorkerError {
            code: v.get("code").and_then(Json::as_i64).unwrap_or(-32004),
            message: s("detail"),
            type_name: s("type"),
            traceback: s("traceback"),
            deliberate: v.get("deliberate").and_then(Json::as_bool).unwrap_or(false),
        },
        "worker_crashed" => Error::WorkerCrashed {
            pid: u32::try_from(n("pid")).unwrap_or_default(),
            worker: n("worker"),
            exit: format!("{}, on worker host {host}", s("exit")),
            stderr: Vec::new(),
            idempotent: false,
        },
        "timeout" => Error::Timeout {
            after: ms("timeout_ms"),
            stage: if v.get("queued").and_then(Json::as_bool) == Some(true) {
                TimeoutStage::Queued
            } else {
                TimeoutStage::InWorker { idempotent: false }
            },
        },
        "overloaded" => Error::Overloaded {
            queue: "worker host",
            capacity: usize::try_from(n("capacity")).unwrap_or_default(),
            retry_after: ms("retry_after_ms"),
        },
        // That host's breaker: the call did not start, and another host may
        // take it (the front end's own breaker judges the method).
        "circuit_open" => Error::Unavailable {
            what: "worker host",
            reason: format!("{host}: {}", s("message")),
        },
        "invalid_argument" => Error::InvalidArgument {
            param: s("param"),
            message: s("detail"),
        },
        "too_large" => Error::TooLarge {
            what: s("what"),
            limit: n("limit"),
        },
        "unavailable" => Error::Unavailable {
            what: "worker host",
            reason: format!("{host}: {}", s("message")),
        },
        _ => Error::Internal {
            message: format!("worker host {host}: {}", s("message")),
        },
    }
}

/// An answer from a host, back into a call's outcome.
pub(crate) fn decode_answer(body: &[u8], host: &str) -> Result<Json, Error> {
    // Read into its two members, not into a map of them (a map and its
    // keys were three allocations of a call's answer).
    let v: Answer = serde_json::from_slice(body).map_err(|e| Error::Internal {
        message: format!(
            "worker host {host} sent an answer that is not a JSON object of a result or an error: {e}"
        ),
    })?;
    // A host's own pool refuses a worker's such answer; a peer on the bus
    // could send one all the same (review 125).
    if let Some(number) = crate::exact::inexact_integer(body) {
        return Err(Error::Internal {
            message: format!(
                "worker host {host} sent an answer holding {}",
                crate::exact::inexact_integer_named(number)
            ),
        });
    }
    let read = |raw: &serde_json::value::RawValue| {
        counted(raw).map_err(|e| Error::Internal {
            message: format!(
                "worker host {host} sent an answer that cannot be read: {}",
                match e {
                    crate::json::Unreadable::TooLarge { limit } => format!(
                        "its tree would take more than {} MiB of memory",
                        limit >> 20
                    ),
                    other => crate::workers::protocol::cut(&format!("{other:?}")),
                }
            ),
        })
    };
    match v {
        Answer {
            result: Some(r), ..
        } => read(&r),
        Answer { error: Some(e), .. } => Err(decode_error(&read(&e)?, host)),
        Answer { .. } => Err(Error::Internal {
            message: format!("worker host {host} sent an answer with neither result nor error"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_a_pool_gives_keeps_its_kind_across_the_wire() {
        let errors = [
            Error::WorkerError {
                code: -32004,
                message: "boom".into(),
                type_name: "ValueError".into(),
                traceback: "tb".into(),
                deliberate: true,
            },
            Error::WorkerCrashed {
                pid: 7,
                worker: 3,
                exit: "signal 9 (SIGKILL)".into(),
                stderr: vec!["last".into()],
                idempotent: false,
            },
            Error::Timeout {
                after: Duration::from_millis(1500),
                stage: TimeoutStage::Queued,
            },
            Error::Overloaded {
                queue: "worker",
                capacity: 3,
                retry_after: Duration::from_millis(50),
            },
            Error::CircuitOpen {
                breaker: "m".into(),
                retry_after: Duration::from_millis(900),
            },
            Error::invalid("params", "missing `x`"),
            Error::TooLarge {
                what: "result".into(),
                limit: 10,
            },
            Error::Unavailable {
                what: "workers",
                reason: "shutting down".into(),
            },
        ];
        for e in errors {
            let body = answer_body(&Err(e.clone()));
            let back = decode_answer(&body, "h1").unwrap_err();
            assert_eq!(not_started(&back), not_started(&e), "{e}");
            if let Error::CircuitOpen { .. } = e {
                // One host's breaker: another host may take the call.
                assert!(matches!(
                    back,
                    Error::Unavailable {
                        what: "worker host",
                        ..
                    }
                ));
                continue;
            }
            assert_eq!(back.kind(), e.kind(), "{e}");
            assert_eq!(back.retry_after(), e.retry_after(), "{e}");
        }
        let crashed = decode_answer(
            &answer_body(&Err(Error::WorkerCrashed {
                pid: 7,
                worker: 12,
                exit: "exit code 1".into(),
                stderr: vec!["another caller's token".into()],
                idempotent: true,
            })),
            "h1",
        )
        .unwrap_err();
        assert!(crashed.to_string().contains("worker host h1"), "{crashed}");
        // What the worker wrote to stderr stays on the host; which of its
        // workers died crosses (deaths are told apart by it).
        assert!(
            matches!(&crashed, Error::WorkerCrashed { stderr, worker: 12, .. } if stderr.is_empty()),
            "{crashed:?}"
        );
        let body = answer_body(&Err(Error::WorkerCrashed {
            pid: 7,
            worker: 12,
            exit: "exit code 1".into(),
            stderr: vec!["another caller's token".into()],
            idempotent: true,
        }));
        assert!(!String::from_utf8_lossy(&body).contains("token"));
        assert_eq!(
            decode_answer(&answer_body(&Ok(json!({"a": [1, 2]}))), "h").unwrap(),
            json!({"a": [1, 2]})
        );
    }

    #[test]
    fn garbage_from_a_host_is_an_internal_error_naming_it() {
        let deep = format!(
            "{{\"x\": {}1{}, \"result\": 1}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in [
            &b"not json"[..],
            b"[1]",
            b"{}",
            b"[[1], null]",
            b"1",
            br#"{"x": 1e400, "result": 1}"#,
            b"{\"x\": \"\xff\", \"result\": 1}",
            br#"{"x": "\ud800", "result": 1}"#,
            deep.as_bytes(),
        ] {
            let e = decode_answer(body, "h9").unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Internal);
            assert!(e.to_string().contains("h9"), "{e}");
        }
    }

    #[test]
    fn an_answer_is_read_by_its_members() {
        let ok = |body: &str| decode_answer(body.as_bytes(), "h").unwrap();
        assert_eq!(ok(r#"{"result": null}"#), Json::Null);
        assert_eq!(ok(r#"{"x": [1, {"y": 2}], "result": [3]}"#), json!([3]));
        // The last of a member given twice, as a map of them read it; and
        // a name written with an escape is the same name.
        assert_eq!(ok(r#"{"result": 1, "result": 2}"#), json!(2));
        assert_eq!(ok(r#"{"res\u0075lt": "r"}"#), json!("r"));
        let sent = Error::Timeout {
            after: Duration::from_millis(5),
            stage: TimeoutStage::Running,
        };
        let body = answer_body(&Err(sent.clone()));
        let e = decode_answer(&body, "h").unwrap_err();
        assert_eq!(e.kind(), sent.kind());
        assert_eq!(
            decode_answer(&answer_body(&Ok(json!({"a": [1]}))), "h").unwrap(),
            json!({"a": [1]})
        );
    }

    #[test]
    fn method_names_that_would_change_a_subject_are_not_safe() {
        for ok in ["echo", "text.analyze", "a-b_c.d1"] {
            assert!(method_is_subject_safe(ok), "{ok}");
        }
        for bad in ["", "a b", "a.*", ">", "a..b", "a.", "x\r\nPUB y", "é"] {
            assert!(!method_is_subject_safe(bad), "{bad:?}");
        }
        let s = Subjects::new("lb");
        assert_eq!(s.method_of(&s.call("a.b")), Some("a.b"));
        assert_eq!(s.method_of("lb.v1.hb.x"), None);
        assert_eq!(s.method_of("lbx.v1.call.a"), None);
    }

    #[test]
    fn a_method_survives_its_metadata() {
        let m = MethodInfo {
            name: "analyze".into(),
            idempotent: false,
            cache_ttl_s: Some(2.5),
            description: Some("Analyses.".into()),
            params: Some(vec![
                ParamInfo {
                    name: "text".into(),
                    required: true,
                    json_type: Some("string".into()),
                    nullable: false,
                },
                ParamInfo {
                    name: "limit".into(),
                    required: true,
                    json_type: Some("integer".into()),
                    nullable: true,
                },
            ]),
            positional: false,
        };
        assert_eq!(method_from_metadata(&method_metadata(&m)), Some(m));
    }

    #[test]
    fn an_announcement_is_kept_within_bounds() {
        let long = "é".repeat(MAX_DESCRIPTION);
        let many: Vec<Json> = (0..200)
            .map(|i| json!({"name": format!("p{i}"), "type": "string"}))
            .collect();
        let meta = HashMap::from([
            ("method".to_owned(), "m".to_owned()),
            ("description".to_owned(), long),
            ("params".to_owned(), Json::Array(many).to_string()),
        ]);
        let m = method_from_metadata(&meta).unwrap();
        let d = m.description.unwrap();
        assert!(
            d.len() <= MAX_DESCRIPTION && d.len() > MAX_DESCRIPTION - 2,
            "{}",
            d.len()
        );
        assert_eq!(m.params.unwrap().len(), MAX_PARAMS);
        // Parameters' text past its bound is not read; a name past its own
        // is not kept.
        let huge = json!([{"name": "x".repeat(MAX_PARAMS_TEXT)}]).to_string();
        let odd = json!([{"name": "x".repeat(MAX_NAME + 1)}, {"name": "ok"}]).to_string();
        for (params, kept) in [(huge, None), (odd, Some(1))] {
            let meta = HashMap::from([
                ("method".to_owned(), "m".to_owned()),
                ("params".to_owned(), params),
            ]);
            let m = method_from_metadata(&meta).unwrap();
            assert_eq!(m.params.map(|p| p.len()), kept);
        }
    }
}
