//! The dashboard: a page at `/` that shows the server living, and the JSON
//! behind it at `GET /api/dashboard`.
//!
//! # Why it is built this way
//!
//! - **Nothing to install.** The page is three files embedded in the binary
//!   (`page/`), plain HTML, CSS and JavaScript with no build step and no
//!   library: its charts are SVG polylines of a few lines each.
//! - **History on the server.** A sampler ([`history`]) takes the figures
//!   every second and keeps five minutes, so a page opened late, or brought
//!   back from a hidden tab, shows the last minutes at once; the page asks
//!   for the points after the last it has (`?since=SEQ`) every second (a change shows within two),
//!   and not at all while hidden. Polling passes through every proxy and
//!   needs no connection held open (the event stream's places are few).
//! - **Cheap to ask.** The sampler also builds the figures once a second
//!   (and reads the backup directory every five, off the runtime); a
//!   request copies them and the points it lacks, so pages polling cost
//!   next to nothing and a slow disk never holds a request.
//! - **Honest when the server is not.** The figures carry the time they
//!   were built and the run of the server: the page says "stale" when they
//!   stop moving, gives up on an answer after 5 s, and starts its charts
//!   over when the server restarted.
//! - **As strict as `/rpc`.** The data takes the same keys and the metrics
//!   scope (quotas per key and the backups, whose directory names the
//!   database's, only for admin keys; the key's limit of requests at once
//!   applies); the page's actions are
//!   `POST /rpc` calls under the key's own scopes. The key is typed into the
//!   page and kept in the tab's `sessionStorage`: never a cookie (so no
//!   request is made with it that the page did not make) and never in a URL
//!   (so never in a log). The files carry no data, so they are served
//!   without a key, under the Host and Origin rules of every route and a
//!   Content-Security-Policy that allows only the page's own script, style
//!   and `fetch`es (no inline script, no frames); the script writes text
//!   with `textContent` only.
//! - `--no-dashboard` (`server.dashboard = false`) leaves `/` unanswered.

pub(crate) mod history;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use crate::rpc::App;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// The policy every file of the page is served with.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Events shown.
const EVENTS: usize = 50;

/// One of the page's files, by its path; `None` for another path.
pub(crate) fn file(path: &str) -> Option<Response> {
    let (body, kind) = match path {
        "/" => (INDEX, "text/html; charset=utf-8"),
        "/dashboard/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    Some(
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, kind),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::CACHE_CONTROL, "no-cache"),
                // Other sites may not load the files (a <script> tag there
                // would tell them litebridge runs here), nor keep a handle
                // on a window of the page they opened.
                (
                    header::HeaderName::from_static("cross-origin-resource-policy"),
                    "same-origin",
                ),
                (
                    header::HeaderName::from_static("cross-origin-opener-policy"),
                    "same-origin",
                ),
            ],
            body,
        )
            .into_response(),
    )
}

/// `GET /api/dashboard?since=SEQ`: the figures of the last sample, the
/// history points after `since`; for `admin` keys, quotas per key and the
/// backups (their directory names the database's). The figures are built
/// once a second by the sampler, not per request: a page, or many, polling
/// costs a copy and the points.
/// How many points behind a request may ask from (a page polling, which
/// may miss a few) without being counted against its key's quotas.
pub(crate) const POLL_POINTS: u64 = 10;

pub(crate) fn data(app: &App, since: u64, scopes: litebridge::auth::Scopes) -> Json {
    let admin = scopes.allows(litebridge::auth::Scope::Admin);
    let mut d = app.history.figures().unwrap_or_else(|| figures(app));
    // A page that asks for points past the last one has seen another run
    // (the server restarted): it gets them all, and `run` tells it so.
    let last = app.history.last_seq();
    let since = if since > last { 0 } else { since };
    if let Json::Object(m) = &mut d {
        m.insert("scopes".into(), json!(scopes.to_string()));
        m.insert("points".into(), json!(app.history.since(since)));
        m.insert(
            "quotas".into(),
            if admin { quotas(app) } else { Json::Null },
        );
        if !admin {
            m.insert("backups".into(), Json::Null);
        }
    }
    d
}

/// The figures now, but for the points, the caller's scopes and quotas:
/// what the sampler keeps for `data`.
pub(crate) fn figures(app: &App) -> Json {
    let service = &app.service;
    let health = crate::rpc::health_of(service);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let events: Vec<Json> = {
        let recent = app.events.recent();
        let skip = recent.len().saturating_sub(EVENTS);
        recent[skip..]
            .iter()
            .filter_map(|e| serde_json::from_str(&e.json).ok())
            .collect()
    };
    let mut problems: Vec<Json> = health["problems"].as_array().cloned().unwrap_or_default();
    if let Some(w) = &service.workers {
        let s = w.status();
        if let (false, litebridge::workers::Bridge::Nats(n)) = (s.healthy, w) {
            problems.push(json!(if n.connected() {
                format!(
                    "no worker host is serving calls ({} known on NATS)",
                    n.hosts().len()
                )
            } else {
                "NATS is not reachable: no worker host can be called".to_owned()
            }));
        } else if !s.healthy {
            problems.push(json!(format!(
                "{} of {} workers are running",
                s.workers.len(),
                s.processes
            )));
        }
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        // This run of the server: a page that sees it change starts its charts over.
        "run": app.events.started_ms(),
        "ts": now_ms,
        "uptime_s": now_ms.saturating_sub(app.events.started_ms()) / 1000,
        "ready": health["healthy"],
        "problems": problems,
        "db": crate::rpc::stats_of(service),
        "db_bytes": service.db.sqlite().and_then(|db| std::fs::metadata(db.path()).ok()).map(|m| m.len()),
        "health": health,
        "bridge": service.workers.as_ref().and_then(|_| crate::rpc::bridge_status(service).ok()),
        "cache": crate::rpc::cache_figures(service),
        "backups": app.history.backups(),
        "events": events,
    })
}

fn quotas(app: &App) -> Json {
    Json::Array(
        app.auth
            .usage()
            .into_iter()
            .map(|k| {
                json!({
                    "name": k.name, "tier": k.tier, "today": k.today, "month": k.month,
                    "daily_limit": k.limits.daily, "monthly_limit": k.limits.monthly,
                })
            })
            .collect(),
    )
}

/// The backups' state, read from their directory (off the runtime, every
/// 5 s, by the sampler): the newest file (each is verified before it
/// counts) and its age; with `scheduled`, when the next is due (the
/// schedule runs every interval from the server's start).
pub(crate) fn backups(
    policy: &litebridge::backups::BackupPolicy,
    db: &std::path::Path,
    scheduled: bool,
    uptime: std::time::Duration,
) -> Json {
    let newest = litebridge::backups::newest_of(&policy.dir, db);
    let age = newest
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok());
    let interval = policy.interval.as_secs().max(1);
    json!({
        "dir": policy.dir.display().to_string(),
        "scheduled": scheduled,
        "interval_s": interval,
        "keep": policy.keep,
        "newest": newest.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()),
        "age_s": age.map(|a| a.as_secs()),
        "next_due_s": scheduled.then(|| interval - uptime.as_secs() % interval),
    })
}
