//! What a caller may do: five scopes, held as a small set.
//!
//! `write` includes `read` (a writer that cannot read back what it wrote is
//! no use), `read` includes `metrics`, and `admin` includes everything;
//! `bridge` stands alone, so a key made for calling workers cannot touch
//! the data unless it is also given `read` or `write` (`--scope
//! bridge,read`). `metrics` is the figures alone (statistics, health,
//! `/metrics`, the dashboard, the worker pool's events) and no data: the
//! key to give Prometheus or a dashboard, which a `read` key would let read
//! every table and store (review 181).

use crate::error::{Error, Result};

/// One permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Queries, store reads, statistics.
    Read,
    /// Writes (SQL and stores), plus everything `read` allows.
    Write,
    /// Calling worker methods (`bridge.call`, breaker resets).
    Bridge,
    /// Operations (`admin.*`) and key management, plus everything else.
    Admin,
    /// Figures only: statistics and health, `/metrics`, the dashboard's
    /// data, the worker pool's events; no table, store or cache content.
    Metrics,
}

impl Scope {
    const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Write,
        Scope::Bridge,
        Scope::Admin,
        Scope::Metrics,
    ];

    /// The scope's name, as given to `keys create --scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Bridge => "bridge",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::str::FromStr for Scope {
    type Err = Error;

    /// Parses one scope name (any case).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the value and the known scopes.
    fn from_str(s: &str) -> Result<Scope> {
        Scope::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::invalid(
                    "scope",
                    format!("{s:?} is not a scope; expected read, write, bridge, metrics or admin"),
                )
            })
    }
}

/// A set of scopes, with `write ⊇ read` and `admin ⊇ everything` applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// No permission at all.
    pub const NONE: Scopes = Scopes(0);
    /// Every permission (what a local stdio user has by default).
    pub const ALL: Scopes = Scopes(0b1_1111);

    /// The set holding `scopes` and what they imply.
    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Scopes {
        let mut bits = 0;
        for s in scopes {
            bits |= match s {
                Scope::Read => Scope::Read.bit() | Scope::Metrics.bit(),
                Scope::Write => Scope::Write.bit() | Scope::Read.bit() | Scope::Metrics.bit(),
                Scope::Bridge => Scope::Bridge.bit(),
                Scope::Metrics => Scope::Metrics.bit(),
                Scope::Admin => Scopes::ALL.0,
            };
        }
        Scopes(bits)
    }

    /// Whether the set holds `scope`.
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
}

impl std::str::FromStr for Scopes {
    type Err = Error;

    /// Parses a comma-separated list (`read,bridge`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty list or an unknown name.
    fn from_str(s: &str) -> Result<Scopes> {
        let items = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse::<Scope>)
            .collect::<Result<Vec<_>>>()?;
        if items.is_empty() {
            return Err(Error::invalid(
                "scope",
                "no scope given; expected one or more of read, write, bridge, metrics, admin",
            ));
        }
        Ok(Scopes::of(items))
    }
}

impl std::fmt::Display for Scopes {
    /// The smallest list that means this set (`admin`, `write,bridge`, ...).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Scopes::ALL {
            return f.write_str("admin");
        }
        let mut names = Vec::new();
        if self.allows(Scope::Write) {
            names.push("write");
        } else if self.allows(Scope::Read) {
            names.push("read");
        } else if self.allows(Scope::Metrics) {
            names.push("metrics");
        }
        if self.allows(Scope::Bridge) {
            names.push("bridge");
        }
        if names.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implications_and_round_trip() {
        let w = "write".parse::<Scopes>().unwrap();
        assert!(w.allows(Scope::Read) && w.allows(Scope::Write));
        assert!(!w.allows(Scope::Bridge) && !w.allows(Scope::Admin));
        let b = "bridge".parse::<Scopes>().unwrap();
        assert!(b.allows(Scope::Bridge) && !b.allows(Scope::Read));
        assert!(!b.allows(Scope::Metrics));
        assert_eq!("admin".parse::<Scopes>().unwrap(), Scopes::ALL);
        assert!(Scopes::ALL.allows(Scope::Metrics));
        let m = "metrics".parse::<Scopes>().unwrap();
        assert!(m.allows(Scope::Metrics) && !m.allows(Scope::Read) && !m.allows(Scope::Bridge));
        assert!(w.allows(Scope::Metrics));
        assert!("read".parse::<Scopes>().unwrap().allows(Scope::Metrics));
        assert_eq!(
            "read,metrics".parse::<Scopes>().unwrap().to_string(),
            "read"
        );
        for s in [
            "read",
            "write",
            "bridge",
            "metrics",
            "read,bridge",
            "write,bridge",
            "metrics,bridge",
            "admin",
        ] {
            let parsed = s.parse::<Scopes>().unwrap();
            assert_eq!(parsed.to_string(), s);
            assert_eq!(parsed.to_string().parse::<Scopes>().unwrap(), parsed);
        }
        assert!("".parse::<Scopes>().is_err());
        let e = "read,root".parse::<Scopes>().unwrap_err().to_string();
        assert!(e.contains("\"root\""), "{e}");
    }
}
