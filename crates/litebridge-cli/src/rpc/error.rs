//! [`RpcError`]: a failed request, and the one place it becomes a JSON-RPC
//! error object. Every transport reads what it needs from here (`kind`,
//! `code`, `data`, `is_recoverable`) rather than from the wire JSON.

use litebridge::{Error, ErrorKind};
use serde_json::{Map, Value as Json, json};

/// A failed request, before it is put on the wire.
#[derive(Debug)]
pub(crate) enum RpcError {
    Parse(String),
    InvalidRequest(String),
    MethodNotFound(String),
    InvalidParams(String),
    /// The client withdrew the request (`$/cancelRequest` over stdio).
    Cancelled,
    App(Error),
}

impl From<Error> for RpcError {
    fn from(e: Error) -> RpcError {
        match e {
            Error::InvalidArgument { .. } => RpcError::InvalidParams(e.to_string()),
            other => RpcError::App(other),
        }
    }
}

impl RpcError {
    /// The error's kind as the wire's `data.kind`, the metrics' `outcome`
    /// label and MCP's error results name it: litebridge's kind for an
    /// application error, the JSON-RPC error's name otherwise.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            RpcError::Parse(_) => "parse_error",
            RpcError::InvalidRequest(_) => "invalid_request",
            RpcError::MethodNotFound(_) => "method_not_found",
            RpcError::InvalidParams(_) => "invalid_params",
            RpcError::Cancelled => "cancelled",
            RpcError::App(e) => e.kind().as_str(),
        }
    }

    /// Whether the same request may succeed later (false for every request
    /// error: it must be changed first).
    pub(crate) fn is_recoverable(&self) -> bool {
        matches!(self, RpcError::App(e) if e.is_recoverable())
    }

    /// The JSON-RPC error code: the specification's for request errors,
    /// litebridge's (-32000 to -32012, the error table of the product
    /// contract) for the rest.
    pub(crate) fn code(&self) -> i64 {
        match self {
            RpcError::Parse(_) => -32700,
            RpcError::InvalidRequest(_) => -32600,
            RpcError::MethodNotFound(_) => -32601,
            RpcError::InvalidParams(_) => -32602,
            // The Language Server Protocol's RequestCancelled, which
            // `$/cancelRequest` comes from.
            RpcError::Cancelled => -32800,
            // By kind, so a new variant of a kind gets its kind's code.
            RpcError::App(e) => match e.kind() {
                ErrorKind::Sql => -32000,
                ErrorKind::Timeout => -32001,
                ErrorKind::Overloaded | ErrorKind::Busy => -32002,
                ErrorKind::CircuitOpen => -32003,
                ErrorKind::WorkerError => -32004,
                ErrorKind::WorkerCrashed => -32005,
                ErrorKind::Unauthorized => -32006,
                ErrorKind::Forbidden => -32007,
                ErrorKind::QuotaExceeded => -32008,
                ErrorKind::ReadOnly => -32009,
                ErrorKind::Corrupt | ErrorKind::Unavailable => -32010,
                ErrorKind::TooLarge => -32011,
                ErrorKind::Unsupported => -32012,
                ErrorKind::OutcomeUnknown => -32013,
                ErrorKind::InvalidArgument => -32602,
                _ => -32603,
            },
        }
    }

    /// The message: what went wrong, naming the parameter, key or value.
    pub(crate) fn message(&self) -> String {
        match self {
            RpcError::Parse(m) => format!("Parse error: {m}"),
            RpcError::InvalidRequest(m) => format!("Invalid Request: {m}"),
            RpcError::MethodNotFound(m) => format!("Method not found: {m}"),
            RpcError::InvalidParams(m) => format!("Invalid params: {m}"),
            RpcError::Cancelled => "Request cancelled by the client".to_owned(),
            RpcError::App(e) => e.to_string(),
        }
    }

    /// The error's `data`: for an application error its kind, whether it is
    /// recoverable, when to retry, and the facts of its kind (the SQLite
    /// codes, the breaker, the worker's traceback, the quota...); none for
    /// request errors.
    pub(crate) fn data(&self) -> Option<Map<String, Json>> {
        let RpcError::App(e) = self else {
            return None;
        };
        let mut data = Map::new();
        data.insert("kind".into(), json!(e.kind().as_str()));
        data.insert("recoverable".into(), json!(e.is_recoverable()));
        if let Some(r) = e.retry_after() {
            data.insert("retry_after_ms".into(), json!(r.as_millis() as u64));
        }
        let mut put = |k: &str, v: Json| {
            data.insert(k.into(), v);
        };
        match e {
            Error::Sql {
                code,
                extended_code,
                ..
            } => {
                put("sqlite_code", json!(code));
                put("sqlite_extended_code", json!(extended_code));
            }
            Error::Postgres { sqlstate, .. } => put("sqlstate", json!(sqlstate)),
            Error::Timeout { after, .. } => put("timeout_ms", json!(after.as_millis() as u64)),
            Error::CircuitOpen { breaker, .. } => put("breaker", json!(breaker)),
            Error::WorkerError {
                type_name,
                traceback,
                ..
            } => {
                put("type", json!(type_name));
                put("traceback", json!(traceback));
            }
            // Not its stderr: the process wrote it for every caller it served.
            Error::WorkerCrashed { pid, exit, .. } => {
                put("pid", json!(pid));
                put("exit", json!(exit));
            }
            Error::HostLost { host, .. } => put("host", json!(host)),
            Error::QuotaExceeded { quota, limit, .. } => {
                put("quota", json!(quota));
                put("limit", json!(limit));
            }
            Error::TooLarge { what, limit } => {
                put("what", json!(what));
                put("limit", json!(limit));
            }
            Error::Unsupported { backend, .. } => put("backend", json!(backend)),
            _ => {}
        }
        Some(data)
    }

    /// The JSON-RPC error object.
    pub(crate) fn to_wire(&self) -> Json {
        let mut err = Map::new();
        err.insert("code".into(), json!(self.code()));
        err.insert("message".into(), json!(self.message()));
        if let Some(d) = self.data() {
            err.insert("data".into(), Json::Object(d));
        }
        Json::Object(err)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Each kind of failure: its code, kind, recoverability and data, as the
    /// README's error table lists them.
    #[test]
    fn every_failure_has_its_code_kind_and_data() {
        let cases: Vec<(RpcError, i64, &str, bool)> = vec![
            (RpcError::Parse("x".into()), -32700, "parse_error", false),
            (
                RpcError::InvalidRequest("x".into()),
                -32600,
                "invalid_request",
                false,
            ),
            (
                RpcError::MethodNotFound("x".into()),
                -32601,
                "method_not_found",
                false,
            ),
            (RpcError::Cancelled, -32800, "cancelled", false),
            (
                RpcError::InvalidParams("x".into()),
                -32602,
                "invalid_params",
                false,
            ),
            (
                RpcError::App(Error::Timeout {
                    after: Duration::from_millis(1500),
                    stage: litebridge::TimeoutStage::Running,
                }),
                -32001,
                "timeout",
                true,
            ),
            (
                RpcError::App(Error::Forbidden {
                    message: "no".into(),
                }),
                -32007,
                "forbidden",
                false,
            ),
            (
                RpcError::App(Error::TooLarge {
                    what: "the result".into(),
                    limit: 10,
                }),
                -32011,
                "too_large",
                false,
            ),
            (
                RpcError::App(Error::Unsupported {
                    what: "events.subscribe".into(),
                    here: "over HTTP".into(),
                    instead: "read GET /events".into(),
                    backend: "sqlite",
                }),
                -32012,
                "unsupported",
                false,
            ),
            (
                RpcError::App(Error::HostLost {
                    host: "host-a".into(),
                    reason: "no heartbeat for 3000 ms".into(),
                    idempotent: true,
                }),
                -32005,
                "worker_crashed",
                true,
            ),
            (
                RpcError::App(Error::HostLost {
                    host: "host-a".into(),
                    reason: "no heartbeat for 3000 ms".into(),
                    idempotent: false,
                }),
                -32005,
                "worker_crashed",
                false,
            ),
            (
                RpcError::App(Error::CallOutcomeUnknown {
                    method: "charge".into(),
                    reason: "the connection to NATS was lost".into(),
                    idempotent: false,
                }),
                -32013,
                "outcome_unknown",
                false,
            ),
            (
                RpcError::App(Error::CallOutcomeUnknown {
                    method: "summarize".into(),
                    reason: "the connection to NATS was lost".into(),
                    idempotent: true,
                }),
                -32013,
                "outcome_unknown",
                true,
            ),
        ];
        for (e, code, kind, recoverable) in cases {
            assert_eq!(e.code(), code, "{e:?}");
            assert_eq!(e.kind(), kind, "{e:?}");
            assert_eq!(e.is_recoverable(), recoverable, "{e:?}");
            let wire = e.to_wire();
            assert_eq!(wire["code"], code);
            assert_eq!(wire["message"], e.message());
            match &e {
                RpcError::App(_) => assert_eq!(wire["data"]["kind"], kind),
                _ => assert!(wire.get("data").is_none()),
            }
        }
        let timeout = RpcError::App(Error::Timeout {
            after: Duration::from_millis(1500),
            stage: litebridge::TimeoutStage::Running,
        });
        assert_eq!(timeout.data().unwrap()["timeout_ms"], 1500);
        let lost = RpcError::App(Error::HostLost {
            host: "host-a".into(),
            reason: "gone".into(),
            idempotent: true,
        });
        assert_eq!(lost.data().unwrap()["host"], "host-a");
        // An invalid argument from the library is a parameter error.
        let e: RpcError = Error::InvalidArgument {
            param: "lane".into(),
            message: "must be read or heavy".into(),
        }
        .into();
        assert_eq!((e.code(), e.kind()), (-32602, "invalid_params"));
    }
}
