//! Tiers and per-key quotas: requests per UTC day and month, and requests in
//! flight at once.
//!
//! The hot path is one uncontended mutex per key and integer arithmetic on
//! the clock's reading; nothing touches the database. Counts are kept as
//! deltas per period and added to `litebridge_quota` by [`super::Auth::flush`]
//! (every second while serving, and at shutdown), so several processes
//! serving one file add up, and a restart resumes from what was flushed. A
//! crash loses at most the last second's counts: quotas err on the side of
//! the caller, never of a lost write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::calendar::{civil_from_days, days_from_civil};
use crate::error::{Error, Result};
use crate::store::Clock;
use crate::sync::lock;

/// The limits of one tier; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierLimits {
    /// Requests per UTC day.
    pub daily: Option<u64>,
    /// Requests per UTC calendar month.
    pub monthly: Option<u64>,
    /// Requests in flight at once.
    pub concurrent: Option<u32>,
}

/// The tiers keys can be given, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers(BTreeMap<String, TierLimits>);

impl Default for Tiers {
    /// `free`, `pro` and `enterprise`.
    fn default() -> Tiers {
        let mut t = BTreeMap::new();
        t.insert(
            "free".to_owned(),
            TierLimits {
                daily: Some(10_000),
                monthly: Some(200_000),
                concurrent: Some(4),
            },
        );
        t.insert(
            "pro".to_owned(),
            TierLimits {
                daily: Some(1_000_000),
                monthly: Some(20_000_000),
                concurrent: Some(32),
            },
        );
        t.insert(
            "enterprise".to_owned(),
            TierLimits {
                daily: None,
                monthly: None,
                concurrent: Some(256),
            },
        );
        Tiers(t)
    }
}

impl Tiers {
    /// Sets (or adds) one tier.
    pub fn set(&mut self, name: impl Into<String>, limits: TierLimits) {
        self.0.insert(name.into(), limits);
    }

    /// The limits of `name`.
    pub fn get(&self, name: &str) -> Option<TierLimits> {
        self.0.get(name).copied()
    }

    /// The tier names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// `name` if it is a tier.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the value and the known tiers.
    pub fn check(&self, name: &str) -> Result<()> {
        if self.0.contains_key(name) {
            return Ok(());
        }
        Err(Error::invalid(
            "tier",
            format!(
                "{name:?} is not a tier; expected one of {}",
                self.names().collect::<Vec<_>>().join(", ")
            ),
        ))
    }
}

/// A quota period: a UTC day or month, numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Period {
    /// Days since 1970-01-01.
    Day(i64),
    /// `year * 12 + month - 1`.
    Month(i64),
}

impl Period {
    /// The name stored in `litebridge_quota.period`: `d2026-11-23`, `m2026-11`.
    pub(crate) fn name(self) -> String {
        match self {
            Period::Day(d) => {
                let (y, m, day) = civil_from_days(d);
                format!("d{y:04}-{m:02}-{day:02}")
            }
            Period::Month(n) => format!("m{:04}-{:02}", n.div_euclid(12), n.rem_euclid(12) + 1),
        }
    }
}

/// The day and month `t` falls in, and the milliseconds since the epoch.
pub(crate) fn periods(t: SystemTime) -> (Period, Period, i64) {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let day = ms.div_euclid(86_400_000);
    let (y, m, _) = civil_from_days(day);
    (Period::Day(day), Period::Month(y * 12 + m - 1), ms)
}

/// How long from `ms` (since the epoch) until the period after `p` starts.
fn until_next(p: Period, ms: i64) -> Duration {
    let next_ms = match p {
        Period::Day(d) => (d + 1) * 86_400_000,
        Period::Month(n) => {
            let next = n + 1;
            days_from_civil(next.div_euclid(12), next.rem_euclid(12) + 1, 1) * 86_400_000
        }
    };
    Duration::from_millis((next_ms - ms).max(1) as u64)
}

/// What one key has used.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    day: Option<Period>,
    day_count: u64,
    month: Option<Period>,
    month_count: u64,
    in_flight: u32,
    /// Counts not yet added to the database, per period.
    pending: Vec<(Period, u64)>,
    last_used_ms: Option<i64>,
}

impl Usage {
    /// Starts from the counts the database holds for the current periods.
    pub(crate) fn resume(day: (Period, u64), month: (Period, u64)) -> Usage {
        Usage {
            day: Some(day.0),
            day_count: day.1,
            month: Some(month.0),
            month_count: month.1,
            ..Usage::default()
        }
    }

    fn roll(&mut self, day: Period, month: Period) {
        if self.day != Some(day) {
            self.day = Some(day);
            self.day_count = 0;
        }
        if self.month != Some(month) {
            self.month = Some(month);
            self.month_count = 0;
        }
    }

    fn add_pending(&mut self, p: Period) {
        match self.pending.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n += 1,
            None => self.pending.push((p, 1)),
        }
    }

    /// Takes what is to be written: the pending deltas and the last use.
    pub(crate) fn take_pending(&mut self) -> (Vec<(Period, u64)>, Option<i64>) {
        (std::mem::take(&mut self.pending), self.last_used_ms.take())
    }

    /// Takes the database's totals of the current periods (every server's
    /// written counts): the count is that plus what is pending here. Never
    /// lowers a count: a total read just before this server's own writes
    /// landed would undercount.
    pub(crate) fn sync(&mut self, day: Period, day_total: u64, month: Period, month_total: u64) {
        self.roll(day, month);
        let pending = |p: Period| {
            self.pending
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, n)| n)
                .sum::<u64>()
        };
        let (day_pending, month_pending) = (pending(day), pending(month));
        self.day_count = self.day_count.max(day_total + day_pending);
        self.month_count = self.month_count.max(month_total + month_pending);
    }

    /// Puts back deltas that could not be written.
    pub(crate) fn restore_pending(&mut self, pending: Vec<(Period, u64)>, last: Option<i64>) {
        for (p, n) in pending {
            match self.pending.iter_mut().find(|(q, _)| *q == p) {
                Some((_, m)) => *m += n,
                None => self.pending.push((p, n)),
            }
        }
        self.last_used_ms = self.last_used_ms.max(last);
    }
}

/// The quota side of one key.
#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) name: String,
    pub(crate) limits: TierLimits,
    pub(crate) usage: Mutex<Usage>,
    pub(crate) clock: Arc<dyn Clock>,
}

/// How long a caller over its concurrency limit is told to wait.
const CONCURRENT_RETRY: Duration = Duration::from_millis(50);

impl Meter {
    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        lock(&self.usage)
    }

    /// Counts one request against the daily and monthly quotas.
    pub(crate) fn charge(&self) -> Result<()> {
        let (day, month, ms) = periods(self.clock.now());
        let mut u = self.usage();
        u.roll(day, month);
        self.left(&u, (day, month, ms))?;
        u.day_count += 1;
        u.month_count += 1;
        u.add_pending(day);
        u.add_pending(month);
        u.last_used_ms = Some(ms);
        Ok(())
    }

    /// Whether a request could be counted now, without counting it.
    pub(crate) fn spent(&self) -> Result<()> {
        let now = periods(self.clock.now());
        let mut u = self.usage();
        u.roll(now.0, now.1);
        self.left(&u, now)
    }

    /// `Ok` while both quotas have a request left in their periods.
    fn left(&self, u: &Usage, (day, month, ms): (Period, Period, i64)) -> Result<()> {
        if let Some(limit) = self.limits.daily
            && u.day_count >= limit
        {
            return Err(self.exceeded("daily", limit, until_next(day, ms)));
        }
        if let Some(limit) = self.limits.monthly
            && u.month_count >= limit
        {
            return Err(self.exceeded("monthly", limit, until_next(month, ms)));
        }
        Ok(())
    }

    /// Takes one of the key's concurrent-request slots until the guard drops.
    pub(crate) fn enter(self: &Arc<Self>) -> Result<InFlight> {
        let mut u = self.usage();
        if let Some(limit) = self.limits.concurrent
            && u.in_flight >= limit
        {
            return Err(self.exceeded("concurrent", u64::from(limit), CONCURRENT_RETRY));
        }
        u.in_flight += 1;
        Ok(InFlight(Some(self.clone())))
    }

    fn exceeded(&self, quota: &'static str, limit: u64, retry_after: Duration) -> Error {
        Error::QuotaExceeded {
            quota,
            key: self.name.clone(),
            limit,
            retry_after,
        }
    }

    /// Requests counted today and this month (after a roll-over: zero).
    pub(crate) fn used(&self) -> (u64, u64) {
        let (day, month, _) = periods(self.clock.now());
        let mut u = self.usage();
        u.roll(day, month);
        (u.day_count, u.month_count)
    }
}

impl Meter {
    /// A place of a worker call this key's caller abandoned while a worker
    /// still runs it: counted as a request in flight, past the limit if it
    /// must be (the request it came from had a place), given back on drop.
    pub(crate) fn keep_abandoned(self: &Arc<Self>) -> InFlight {
        self.usage().in_flight += 1;
        InFlight(Some(self.clone()))
    }

    /// Whether the key's requests in flight (its abandoned worker calls
    /// among them) are past its limit.
    pub(crate) fn over_limit(&self) -> bool {
        self.limits
            .concurrent
            .is_some_and(|limit| self.usage().in_flight > limit)
    }
}

/// A concurrent-request slot of one key; given back on drop.
#[derive(Debug)]
pub struct InFlight(Option<Arc<Meter>>);

impl InFlight {
    /// A slot of nobody (callers without a key have no concurrency limit).
    pub fn none() -> InFlight {
        InFlight(None)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            let mut u = m.usage();
            u.in_flight = u.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_arithmetic() {
        for (days, ymd) in [
            (0, (1970, 1, 1)),
            (20_415, (2025, 11, 23)),
            (11_016, (2000, 2, 29)),
            (-1, (1969, 12, 31)),
        ] {
            assert_eq!(civil_from_days(days), ymd);
            assert_eq!(days_from_civil(ymd.0, ymd.1, ymd.2), days);
        }
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(20_415 * 86_400 + 3_600);
        let (d, m, ms) = periods(t);
        assert_eq!(d.name(), "d2025-11-23");
        assert_eq!(m.name(), "m2025-11");
        assert_eq!(until_next(d, ms), Duration::from_secs(23 * 3_600));
        // 2025-12-01 is 8 days later.
        assert_eq!(until_next(m, ms), Duration::from_secs(8 * 86_400 - 3_600));
        let dec = periods(SystemTime::UNIX_EPOCH + Duration::from_secs(20_440 * 86_400)).1;
        assert_eq!(dec.name(), "m2025-12");
        assert_eq!(
            until_next(dec, 20_440 * 86_400_000),
            Duration::from_secs(14 * 86_400)
        );
    }
}
