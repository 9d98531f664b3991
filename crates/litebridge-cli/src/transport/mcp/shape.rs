//! The shape of an MCP message, checked before the SDK reads it.
//!
//! rmcp answers a message it cannot read as one of its types with whatever
//! its parser ends on: a `tools/call` whose `arguments` is an array got
//! "-32601 tools/call" (method not found), an `id` of 1.5 or `null` an
//! error with no `id` member at all, and over HTTP `params` as an array a
//! bare 415 (review 192). JSON-RPC 2.0 says which error each is, and the
//! brief asks that an error name what is wrong: [`refusal`] does, for
//! stdio and `/mcp` alike.

use serde_json::Value;

use crate::rpc::RpcError;

/// Why `message` (one JSON-RPC message, already parsed; not a batch) is
/// not one MCP reads, if it is not: -32600 for the envelope (`jsonrpc`,
/// `method`, `id`), -32602 for a request's `params`.
pub(crate) fn refusal(message: &Value) -> Option<RpcError> {
    let invalid = |what: &str| Some(RpcError::InvalidRequest(what.to_owned()));
    let Value::Object(m) = message else {
        return invalid("a message must be a JSON object");
    };
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("`jsonrpc` must be \"2.0\"");
    }
    // rmcp reads a number id as an i64 (review 193: one past it was
    // answered with no id).
    if let Some(id) = m.get("id")
        && !(id.is_string() || id.is_i64())
    {
        return invalid("`id` must be a string or an integer of 64 bits (MCP allows no null id)");
    }
    let method = match m.get("method") {
        Some(Value::String(method)) => method.as_str(),
        Some(_) => return invalid("`method` must be a string"),
        // The client's answer to a request of the server's.
        None if m.contains_key("id") && (m.contains_key("result") || m.contains_key("error")) => {
            return None;
        }
        None => return invalid("`method` is missing"),
    };
    let params = match m.get("params") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => {
            return Some(RpcError::InvalidParams(
                "`params` must be an object (MCP's methods take named parameters)".into(),
            ));
        }
    };
    if method == "tools/call" {
        let name = params.and_then(|p| p.get("name"));
        if !name.is_some_and(Value::is_string) {
            return Some(RpcError::InvalidParams(
                "`params.name` must be a string: the name of a tool from tools/list".into(),
            ));
        }
        if params
            .and_then(|p| p.get("arguments"))
            .is_some_and(|a| !a.is_object())
        {
            return Some(RpcError::InvalidParams(
                "`params.arguments` must be an object of the tool's arguments by name".into(),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_mcp_reads_passes_and_the_rest_is_named() {
        for ok in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "query", "arguments": {"sql": "SELECT 1"}}}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "pool_health"}}),
            json!({"jsonrpc": "2.0", "id": 4, "result": {}}),
        ] {
            assert!(refusal(&ok).is_none(), "{ok}");
        }
        for (bad, code, names) in [
            (json!("ping"), -32600, "object"),
            (json!({"id": 1, "method": "ping"}), -32600, "`jsonrpc`"),
            (
                json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}),
                -32600,
                "`jsonrpc`",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}),
                -32600,
                "`id`",
            ),
            (
                json!({"jsonrpc": "2.0", "id": null, "method": "ping"}),
                -32600,
                "`id`",
            ),
            (
                json!({"jsonrpc": "2.0", "id": {}, "method": "ping"}),
                -32600,
                "`id`",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": 7}),
                -32600,
                "`method`",
            ),
            (json!({"jsonrpc": "2.0", "id": 1}), -32600, "`method`"),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}),
                -32602,
                "`params`",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}),
                -32602,
                "`params.name`",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}),
                -32602,
                "`params.name`",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "query", "arguments": ["SELECT 1"]}}),
                -32602,
                "`params.arguments`",
            ),
            (
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "query", "arguments": "SELECT 1"}}),
                -32602,
                "`params.arguments`",
            ),
        ] {
            let e = refusal(&bad).unwrap_or_else(|| panic!("{bad} passed"));
            assert_eq!(e.code(), code, "{bad}");
            assert!(e.message().contains(names), "{bad}: {}", e.message());
        }
    }
}
