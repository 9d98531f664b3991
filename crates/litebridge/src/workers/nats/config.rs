//! The configuration of worker hosts over NATS, shared by both ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// How to reach NATS, and the timings of the call protocol. Both ends (the
/// worker host and the front end) must agree on `prefix`.
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// One or more server addresses, comma-separated
    /// (`nats://n1:4222,nats://n2:4222`).
    pub url: String,
    /// The token the servers require, if any.
    pub token: Option<String>,
    /// The user the servers require, if any (with `password`).
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
    /// A file holding a user's nkey seed (`SU...`, as `nk -gen user`
    /// prints it), for servers that list the user's public key.
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (a user JWT and its nkey seed, as `nsc` writes it),
    /// for servers in operator mode.
    pub credentials_file: Option<PathBuf>,
    /// The first token of every subject, so two deployments can share a
    /// server. Letters, digits, `_` and `-`. Default: `lb`.
    pub prefix: String,
    /// The queue group the hosts serve calls in. Default: `lb-workers`.
    pub queue_group: String,
    /// A host acknowledges a call still running after this long, which tells
    /// the front end which host to watch. Default: 20 ms.
    pub ack_delay: Duration,
    /// A call with neither an acknowledgement nor an answer this long after
    /// `ack_delay` is asked about: it goes to another host if every host
    /// says it never had it, else it is taken as lost (`worker_crashed`).
    /// Default: 2 s.
    pub ack_timeout: Duration,
    /// How often a host announces itself. Default: 1 s.
    pub heartbeat: Duration,
    /// A host missing this many heartbeats in a row is taken as dead (once
    /// a heartbeat and a quarter more pass with the front end's own link
    /// shown to work), and its acknowledged calls fail with
    /// `worker_crashed`. Default: 3.
    pub host_dead_after: u32,
    /// While NATS is unreachable, a new call waits this long for the
    /// connection to come back before it fails with `unavailable`.
    /// Default: 2 s.
    pub reconnect_grace: Duration,
    /// How long the first connection may take. Default: 5 s.
    pub connect_timeout: Duration,
    /// How long the NATS servers keep the connection of a client that no
    /// longer answers them, at most: their `ping_interval` times
    /// `ping_max` + 2 (2 min times 4 by default; a ping is skipped while
    /// the client sent something within the last interval). A front end sends a call no host
    /// acknowledged to another host, once every host says it never had it,
    /// only after it has listened this long since it connected: a host
    /// paused before then, never heard from, could still hold the call;
    /// and waits for the word of a silent host until it has been silent
    /// this long (and `host_dead_after` heartbeats more). 0 takes every
    /// host as heard from at once: only where no host can be paused
    /// before a front end connects. Default: 8 min.
    pub server_stale_after: Duration,
    /// This host's id in subjects and answers (worker hosts only). Letters,
    /// digits, `_` and `-`. Default: the machine's name and the process id.
    pub host_id: Option<String>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("nkey_file", &self.nkey_file.as_deref().map(shown))
            .field(
                "credentials_file",
                &self.credentials_file.as_deref().map(shown),
            )
            .field("prefix", &self.prefix)
            .field("queue_group", &self.queue_group)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// A configuration for the servers at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            token: None,
            user: None,
            password: None,
            nkey_file: None,
            credentials_file: None,
            prefix: "lb".into(),
            queue_group: "lb-workers".into(),
            ack_delay: Duration::from_millis(20),
            ack_timeout: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            host_dead_after: 3,
            reconnect_grace: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            server_stale_after: Duration::from_secs(480),
            host_id: None,
        }
    }

    /// Checks every value, naming the first bad one.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key (`nats.prefix`, ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, value: &str, expected: &str| {
            Err(Error::Config {
                key: key.into(),
                value: value.into(),
                expected: expected.into(),
            })
        };
        if self.url.trim().is_empty() {
            return bad(
                "nats.url",
                "\"\"",
                "one or more addresses such as nats://127.0.0.1:4222",
            );
        }
        if self.url.contains('@') {
            return bad(
                "nats.url",
                &format!("{:?}", self.redacted_url()),
                "addresses without a user or password: give those as nats.user and nats.password, or a token as nats.token",
            );
        }
        // After the refusal of credentials in it: an address is quoted.
        for a in self.url.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            if let Err(e) = a.parse::<async_nats::ServerAddr>() {
                return bad(
                    "nats.url",
                    &format!("{a:?}"),
                    &format!("a NATS address such as nats://127.0.0.1:4222 ({e})"),
                );
            }
        }
        for (key, value) in [
            ("nats.prefix", Some(&self.prefix)),
            ("nats.queue_group", Some(&self.queue_group)),
            ("nats.host_id", self.host_id.as_ref()),
        ] {
            if let Some(v) = value
                && !is_token(v)
            {
                return bad(
                    key,
                    &format!("{v:?}"),
                    "1 to 64 letters, digits, `_` or `-` (one subject token)",
                );
            }
        }
        if self.user.is_some() != self.password.is_some() {
            return bad(
                if self.user.is_some() {
                    "nats.password"
                } else {
                    "nats.user"
                },
                "(missing)",
                "nats.user and nats.password given together",
            );
        }
        let ways = [
            ("nats.token", self.token.is_some()),
            ("nats.user", self.user.is_some()),
            ("nats.nkey_file", self.nkey_file.is_some()),
            ("nats.credentials_file", self.credentials_file.is_some()),
        ];
        let mut given = ways.iter().filter(|(_, given)| *given).map(|(key, _)| *key);
        if let (Some(first), Some(second)) = (given.next(), given.next()) {
            return bad(
                first,
                "(set)",
                &format!(
                    "one way to authenticate, not both {first} and {second}: a token, a user and password, an nkey file or a credentials file"
                ),
            );
        }
        for (key, path) in [
            ("nats.nkey_file", &self.nkey_file),
            ("nats.credentials_file", &self.credentials_file),
        ] {
            if let Some(path) = path
                && looks_secret(path)
            {
                return bad(
                    key,
                    "(not shown: it looks like a seed or a .creds file's contents)",
                    "the name of a file holding the credentials, not the credentials themselves",
                );
            }
        }
        for (key, d) in [
            ("nats.heartbeat_ms", self.heartbeat),
            ("nats.ack_timeout_ms", self.ack_timeout),
            ("nats.connect_timeout_ms", self.connect_timeout),
        ] {
            if d.is_zero() {
                return bad(key, "0", "a positive number of milliseconds");
            }
        }
        if self.host_dead_after == 0 {
            return bad("nats.host_dead_after", "0", "at least 1 missed heartbeat");
        }
        Ok(())
    }

    /// The addresses with any user and password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|a| {
                let after = a.find("://").map_or(0, |i| i + 3);
                match a.rfind('@') {
                    Some(at) if at >= after => format!("{}***{}", &a[..after], &a[at..]),
                    // No `@`, and what should be a port is not a number: the
                    // start of a password holding a comma (review 206:
                    // `nats://u:SEC,RET@h` showed `u:SEC`).
                    _ if a[after..].rsplit_once(':').is_some_and(|(_, port)| {
                        !port.trim().bytes().all(|b| b.is_ascii_digit())
                    }) =>
                    {
                        format!("{}***", &a[..after])
                    }
                    _ => a.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How long after it is sent a call must be acknowledged or answered
    /// (`ack_delay + ack_timeout`); past it, it is asked about.
    pub(crate) fn ack_within(&self) -> Duration {
        self.ack_delay + self.ack_timeout
    }

    /// How long a host may stay silent before it is taken as dead.
    pub fn dead_after(&self) -> Duration {
        self.heartbeat * self.host_dead_after
    }

    /// The NATS connection options: credentials, name and timeouts.
    ///
    /// # Errors
    /// [`Error::Config`] naming `nats.nkey_file` or `nats.credentials_file`
    /// when the file cannot be read or holds no credentials (its contents
    /// are never quoted).
    pub(crate) fn connect_options(
        &self,
        name: &str,
        side: Side,
    ) -> Result<async_nats::ConnectOptions> {
        let mut o = async_nats::ConnectOptions::new()
            .name(name)
            // Answers come to inboxes of this deployment's own, which
            // permissions can keep other deployments' users from reading
            // (under the shared `_INBOX.` any front end of any deployment
            // read every answer): `_INBOX_<prefix>.` for front ends, and
            // `_INBOX_<prefix>.hosts.` for hosts, which ask each other the
            // services protocol's PING but must not read front ends' answers.
            .custom_inbox_prefix(match side {
                Side::Front => format!("_INBOX_{}", self.prefix),
                Side::Host => format!("_INBOX_{}.hosts", self.prefix),
            })
            .connection_timeout(self.connect_timeout)
            // Requests of our own (discovery) carry their own timeouts.
            .request_timeout(Some(self.connect_timeout))
            // A lost server is noticed within a few seconds, not minutes.
            .ping_interval(Duration::from_secs(2))
            // Back within half a second of a server's return (the default
            // backs off to seconds).
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(500))
            });
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(path) = &self.nkey_file {
            let key = "nats.nkey_file";
            let text = read_secret(key, path)?;
            let seed = text.trim();
            // A user's seed (`SU...`) with a valid checksum; nkeys's own
            // complaint is not passed on, as it quotes a character of it.
            if !seed.starts_with("SU") || nkeys::KeyPair::from_seed(seed).is_err() {
                // What is wrong, never a character of it.
                let found = if !seed.starts_with("SU") {
                    "its text does not start with SU"
                } else if seed.len() != 58 {
                    "its text is not 58 characters long"
                } else {
                    "its checksum does not match (a character changed, or a cut seed)"
                };
                return Err(refused(
                    key,
                    path,
                    format!(
                        "a file holding one user's nkey seed: 58 characters starting with SU, as `nk -gen user` prints it ({found})"
                    ),
                ));
            }
            o = o.nkey(seed.to_owned());
        }
        if let Some(path) = &self.credentials_file {
            let key = "nats.credentials_file";
            let text = read_secret(key, path)?;
            o = o.credentials(&text).map_err(|_| {
                refused(
                    key,
                    path,
                    "a .creds file: a user JWT and its nkey seed, as `nsc` writes it".into(),
                )
            })?;
        }
        Ok(o)
    }
}

/// The most a file of credentials may hold (a `.creds` file is ~1 KiB).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a file of credentials named by `key`: a regular file of at most
/// [`MAX_SECRET_FILE`] bytes (not a device or a pipe, which could block or
/// never end), with a warning when other users of the machine may read it.
/// Read once, when connecting: the credentials are kept in memory for
/// reconnects, so a rotated file takes effect at the next start.
fn read_secret(key: &str, path: &Path) -> Result<String> {
    use std::io::Read as _;
    let refuse = |why: String| refused(key, path, why);
    let meta = std::fs::metadata(path)
        .map_err(|e| refuse(format!("a readable file of credentials ({e})")))?;
    if !meta.is_file() || meta.len() > MAX_SECRET_FILE {
        return Err(refuse(format!(
            "a regular file of credentials of at most {MAX_SECRET_FILE} bytes"
        )));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE).read_to_string(&mut text))
        .map_err(|e| refuse(format!("a readable file of credentials ({e})")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o044 != 0 {
            tracing::warn!(
                "{} holds NATS credentials that other users of this machine may read: `chmod 600` it",
                path.display()
            );
        }
    }
    Ok(text)
}

/// The file of credentials named by `key` will not do: what it should be.
fn refused(key: &str, path: &Path, expected: String) -> Error {
    Error::Config {
        key: key.into(),
        value: format!("{:?}", path.display().to_string()),
        expected,
    }
}

/// A seed or a `.creds` file's contents given where a file name belongs.
fn looks_secret(path: &Path) -> bool {
    let text = path.to_string_lossy();
    let text = text.trim();
    text.contains("BEGIN")
        || (text.len() == 58
            && text.starts_with('S')
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)))
}

/// A file name as Debug shows it: hidden when it looks like a secret.
fn shown(path: &Path) -> String {
    if looks_secret(path) {
        "(not shown)".into()
    } else {
        path.display().to_string()
    }
}

/// One subject token of a name we choose: `[A-Za-z0-9_-]{1,64}`.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Which end of the protocol a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// A front end (`serve` with `workers.transport = "nats"`).
    Front,
    /// A worker host.
    Host,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_is_named() {
        let mut c = NatsConfig::new("nats://127.0.0.1:4222");
        c.validate().unwrap();
        c.prefix = "lb.evil".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("nats.prefix") && e.contains("lb.evil"), "{e}");
        c.prefix = "lb".into();
        c.user = Some("u".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("nats.password"), "{e}");
        c.password = Some("p".into());
        c.token = Some("t".into());
        assert!(c.validate().unwrap_err().to_string().contains("nats.token"));
        c.token = None;
        c.nkey_file = Some("seed".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("nats.user") && e.contains("nats.nkey_file"),
            "{e}"
        );
        c.user = None;
        c.password = None;
        c.validate().unwrap();
        c.credentials_file = Some("x.creds".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("nats.credentials_file"), "{e}");
    }

    #[test]
    fn a_credentials_file_that_cannot_be_used_is_named_and_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("user.nk");
        let refusal = |c: &NatsConfig| match c.connect_options("t", Side::Front) {
            Err(e @ Error::Config { .. }) => e.to_string(),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted"),
        };
        let mut c = NatsConfig::new("nats://127.0.0.1:4222");
        c.nkey_file = Some(file.clone());
        let e = refusal(&c);
        assert!(e.contains("nats.nkey_file") && e.contains("user.nk"), "{e}");
        // Not a user's seed, or one with a character changed: refused
        // without being echoed.
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let mut changed = seed.clone().into_bytes();
        changed[20] = if changed[20] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).unwrap();
        let cut = seed[..40].to_owned();
        for (text, why) in [
            (
                "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4".to_owned(),
                "does not start with SU",
            ),
            (
                nkeys::KeyPair::new_account().seed().unwrap(),
                "does not start with SU",
            ),
            (cut, "not 58 characters"),
            (changed, "checksum does not match"),
        ] {
            std::fs::write(&file, format!("{text}\n")).unwrap();
            let e = refusal(&c);
            assert!(
                e.contains("nats.nkey_file") && e.contains("SU") && e.contains(why),
                "{e}"
            );
            assert!(!e.contains(&text[2..12]), "{e}");
        }
        std::fs::write(&file, format!("{seed}\n")).unwrap();
        c.connect_options("t", Side::Front).unwrap();
        // A device or a pipe is not read.
        c.nkey_file = Some("/dev/zero".into());
        let e = refusal(&c);
        assert!(
            e.contains("nats.nkey_file") && e.contains("regular file"),
            "{e}"
        );
        c.nkey_file = None;
        let creds = dir.path().join("user.creds");
        std::fs::write(&creds, "not a creds file").unwrap();
        c.credentials_file = Some(creds);
        let e = refusal(&c);
        assert!(
            e.contains("nats.credentials_file") && e.contains("user.creds"),
            "{e}"
        );
        assert!(!e.contains("not a creds file"), "{e}");
    }

    #[test]
    fn a_seed_given_where_its_file_belongs_is_refused_unseen() {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let mut c = NatsConfig::new("nats://127.0.0.1:4222");
        c.nkey_file = Some(seed.clone().into());
        assert!(!format!("{c:?}").contains(&seed[..12]));
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("nats.nkey_file") && !e.contains(&seed[..12]),
            "{e}"
        );
        c.nkey_file = None;
        c.credentials_file = Some("-----BEGIN NATS USER JWT-----\neyJ0eXAi".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("nats.credentials_file") && !e.contains("eyJ0eXAi"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut c = NatsConfig::new("nats://x");
        c.token = Some("s3cret".into());
        assert!(!format!("{c:?}").contains("s3cret"));
        // Credentials in the URL are refused without being echoed.
        let c =
            NatsConfig::new("nats://u:S3cretPW@127.0.0.1:4222, tls://v:pw2@h:1,n3:4222,w:pw3@h4:4");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("nats.url") && e.contains("nats.user"), "{e}");
        for secret in ["S3cretPW", "pw2", "pw3", "u:", "v:"] {
            assert!(!e.contains(secret), "{secret} in {e}");
        }
        assert_eq!(
            c.redacted_url(),
            "nats://***@127.0.0.1:4222, tls://***@h:1,n3:4222,***@h4:4"
        );
        let c = NatsConfig::new("nats://u:SEC,RET@127.0.0.1:4222,[::1]:4222,h5");
        assert_eq!(
            c.redacted_url(),
            "nats://***,***@127.0.0.1:4222,[::1]:4222,h5"
        );
    }
}
