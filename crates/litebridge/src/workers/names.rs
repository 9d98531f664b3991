//! Which method names reach a worker, and under which name each call's
//! state (breaker, statistics, metric series) is kept.
//!
//! A name reaches a worker only if a worker announced it in `$/ready`, or a
//! worker in generic mode (`dynamic`) serves names under prefixes it
//! announced (any name, if it announced none). Names of the worker protocol
//! itself (`$/cancelRequest`, `$/ping`, anything starting with `$`) never
//! do: a caller could otherwise cancel other callers' calls or ping.
//!
//! Per-method state is made on first use, so an unbounded set of names
//! would grow memory and `/metrics` without end. Announced methods are a
//! fixed set. A name served dynamically gets state of its own (a breaker,
//! statistics) once a call of it has succeeded, up to [`MAX_DYNAMIC`] names;
//! until then, and beyond that, its calls count in the statistics named
//! [`OTHER`] and go through no breaker: calls of names that do not exist
//! can neither use up the room nor open a breaker that other callers share.

use std::collections::HashSet;
use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::sync::{read, write};
use crate::workers::process::Process;

/// Dynamic method names that get state of their own.
pub(crate) const MAX_DYNAMIC: usize = 256;
/// The state shared by dynamic names past [`MAX_DYNAMIC`].
pub(crate) const OTHER: &str = "(other)";

/// The most names kept of every worker's announcements: the same command
/// announces the same names at each start, but one announcing others each
/// time grew them (and the message refusing an unknown name, which lists
/// them) without bound (review 230). Past it, new names are not learnt
/// (their calls are refused as unknown) and it is logged once.
pub(crate) const MAX_LEARNT: usize = 4 * crate::workers::protocol::MAX_METHODS;

#[derive(Default)]
struct Known {
    announced: HashSet<String>,
    /// Whether a name was left unlearnt past [`MAX_LEARNT`] (logged once).
    full: bool,
    dynamic: bool,
    /// `None`: a dynamic worker that announced no prefixes (any name).
    prefixes: Option<Vec<String>>,
    /// Dynamic names that have state of their own.
    tracked: HashSet<String>,
}

/// The names the workers offer, learnt from every `$/ready`.
#[derive(Default)]
pub(crate) struct MethodNames {
    known: RwLock<Known>,
}

impl MethodNames {
    /// Adds what a worker announced (every worker runs the same command, so
    /// this is the same set each time; the union survives restarts).
    pub(crate) fn learn(&self, p: &Process) {
        self.learn_names(
            p.methods.keys().map(String::as_str),
            p.dynamic,
            p.prefixes.as_ref(),
        );
    }

    fn learn_names<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
        dynamic: bool,
        prefixes: Option<&Vec<String>>,
    ) {
        let mut k = write(&self.known);
        for name in names {
            if k.announced.contains(name) {
                continue;
            }
            if k.announced.len() >= MAX_LEARNT {
                if !k.full {
                    k.full = true;
                    tracing::warn!(
                        "the workers have announced {MAX_LEARNT} different method names since \
                         litebridge started: names announced past that are not served (restart \
                         litebridge to learn them)"
                    );
                }
                break;
            }
            k.announced.insert(name.to_owned());
        }
        if dynamic {
            let first = !k.dynamic;
            k.dynamic = true;
            k.prefixes = match (first, k.prefixes.take(), prefixes) {
                (true, _, announced) => announced.cloned(),
                (false, Some(mut had), Some(more)) => {
                    had.extend(
                        more.iter()
                            .filter(|m| !had.contains(m))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    Some(had)
                }
                // One dynamic worker without prefixes accepts any name.
                (false, _, _) => None,
            };
        }
    }

    /// Refuses a name no worker serves.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `method`.
    pub(crate) fn check(&self, method: &str) -> Result<()> {
        if method.starts_with('$') {
            return Err(Error::invalid(
                "method",
                format!(
                    "{method:?}: names starting with `$` belong to the worker protocol and cannot be called"
                ),
            ));
        }
        let k = read(&self.known);
        if k.announced.contains(method) {
            return Ok(());
        }
        if k.dynamic {
            return match &k.prefixes {
                None => Ok(()),
                Some(prefixes) if prefixes.iter().any(|p| under(method, p)) => Ok(()),
                Some(prefixes) => Err(Error::invalid(
                    "method",
                    format!(
                        "{method:?} is neither a method the workers announced nor under their allowed prefixes ({})",
                        prefixes.join(", ")
                    ),
                )),
            };
        }
        let mut offered: Vec<&str> = k.announced.iter().map(String::as_str).collect();
        offered.sort_unstable();
        let more = offered.len().saturating_sub(20);
        offered.truncate(20);
        Err(Error::invalid(
            "method",
            format!(
                "no worker offers {method:?}; the workers announced: {}{}",
                if offered.is_empty() {
                    "nothing".to_owned()
                } else {
                    offered.join(", ")
                },
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        ))
    }

    /// The name the state (breaker, statistics) of a call of `method` is
    /// kept under, when it has state of its own.
    pub(crate) fn state_name<'a>(&self, method: &'a str) -> Option<&'a str> {
        let k = read(&self.known);
        (k.announced.contains(method) || k.tracked.contains(method)).then_some(method)
    }

    /// Gives a dynamic name that has just been served state of its own, if
    /// there is room.
    pub(crate) fn promote(&self, method: &str) {
        let mut k = write(&self.known);
        if k.tracked.len() < MAX_DYNAMIC && !k.announced.contains(method) {
            k.tracked.insert(method.to_owned());
        }
    }
}

/// Whether `name` is `prefix` or lies beneath it (`a.b` under `a`, not `ab`).
fn under(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_announced_at_each_start_are_kept_up_to_a_bound() {
        let names = MethodNames::default();
        for start in 0..5 {
            let announced: Vec<String> = (0..crate::workers::protocol::MAX_METHODS)
                .map(|i| format!("m{start}_{i}"))
                .collect();
            names.learn_names(announced.iter().map(String::as_str), false, None);
        }
        let k = read(&names.known);
        assert_eq!(k.announced.len(), MAX_LEARNT);
        assert!(k.full);
        drop(k);
        assert!(names.check("m0_0").is_ok());
        assert!(names.check("m4_0").is_err(), "past the bound");
        let e = names.check("nothing").unwrap_err().to_string();
        assert!(e.contains(&format!("and {} more", MAX_LEARNT - 20)), "{e}");
    }
}
