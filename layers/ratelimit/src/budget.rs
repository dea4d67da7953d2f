//! Token budgets over calendar windows: a day or a month, UTC.
//!
//! A budget is a plain counter per window: its key names the window
//! (`agent:planner:tokens-day:2026-12-06`), so a new day starts a new
//! counter and the old one expires with its window. Which window it is
//! comes from the wall clock ([`Calendar`]); everything else (the GCRA
//! rates) runs on the monotonic clock.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::time::Instant;

use crate::gcra::Standing;

/// A budget's part of a check: at most `limit` in all until the window
/// ends, `resets_in` from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// How much the whole window allows.
    pub limit: u64,
    /// Until the window ends and the budget is whole again.
    pub resets_in: Duration,
    /// Only reported when spent, never refused.
    pub shadow: bool,
}

impl Budget {
    /// What one request may charge: the whole budget at most, or a
    /// request asking for more than a day's budget could never pass.
    pub(crate) fn charge(&self, cost: u64) -> u64 {
        cost.min(self.limit.max(1))
    }

    /// Whether a request may start with `spent` of the budget gone:
    /// while anything is left (the last request may take it past the
    /// limit by what it generates; the next is refused).
    pub(crate) fn allows(&self, spent: u64) -> bool {
        self.shadow || spent < self.limit
    }

    /// How it stands once `spent` in all.
    pub(crate) fn standing(&self, spent: u64) -> Standing {
        Standing {
            remaining: self.limit.saturating_sub(spent),
            reset: self.resets_in,
            over: spent > self.limit,
        }
    }
}

/// What each budget's window has spent, in this process.
#[derive(Debug, Default)]
pub(crate) struct Budgets {
    spent: HashMap<String, (u64, Instant)>,
    next_sweep: Option<Instant>,
}

impl Budgets {
    pub(crate) fn spent(&self, key: &str) -> u64 {
        self.spent.get(key).map_or(0, |(n, _)| *n)
    }

    /// Adds `cost` to the window that ends at `ends`; what it has spent
    /// now.
    pub(crate) fn charge(&mut self, key: &str, cost: u64, ends: Instant) -> u64 {
        if let Some((n, _)) = self.spent.get_mut(key) {
            *n = n.saturating_add(cost);
            return *n;
        }
        self.spent.insert(key.to_string(), (cost, ends));
        cost
    }

    /// Sets what a window has spent, as the shared store says.
    pub(crate) fn remember(&mut self, key: &str, spent: u64, ends: Instant) {
        self.spent.insert(key.to_string(), (spent, ends));
    }

    /// Corrects a window by `delta` once the real cost is known; a window
    /// that ended meanwhile is left ended.
    pub(crate) fn add(&mut self, key: &str, delta: i64) {
        if let Some((n, _)) = self.spent.get_mut(key) {
            *n = n.saturating_add_signed(delta);
        }
    }

    /// Drops the windows that ended (their keys name days and months
    /// gone), at most once a minute.
    pub(crate) fn forget_ended(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|next| now < next) {
            return;
        }
        self.next_sweep = Some(now + Duration::from_secs(60));
        self.spent.retain(|_, (_, ends)| *ends > now);
    }
}

/// Whether spent budgets refuse (`enforce`) or are only reported
/// (`shadow`: the `corral_budget_overrun_total` metric and the admin
/// API's `/corral/usage`; not the `RateLimit` header, which clients may
/// act on), to try a budget on real traffic before it bites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetMode {
    /// A spent budget answers 429 until its window ends.
    #[default]
    Enforce,
    /// A spent budget is reported, the request passes.
    Shadow,
}

/// A budget's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl Period {
    /// The window `now` (since the Unix epoch) falls in: its name, and
    /// how long until it ends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral_ratelimit::Period;
    ///
    /// // 2026-12-06 17:00:00 UTC.
    /// let now = Duration::from_secs(1_796_576_400);
    /// assert_eq!(Period::Day.window(now), ("2026-12-06".to_string(), Duration::from_secs(7 * 3600)));
    /// let (name, left) = Period::Month.window(now);
    /// assert_eq!(name, "2026-12");
    /// assert_eq!(left, Duration::from_secs(25 * 86_400 + 7 * 3600));
    /// ```
    pub fn window(self, now: Duration) -> (String, Duration) {
        let days = (now.as_secs() / 86_400) as i64;
        let (year, month, day) = civil_from_days(days);
        let (name, end_days) = match self {
            Period::Day => (format!("{year:04}-{month:02}-{day:02}"), days + 1),
            Period::Month => {
                let (y, m) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (format!("{year:04}-{month:02}"), days_from_civil(y, m, 1))
            }
        };
        let end = Duration::from_secs(u64::try_from(end_days).unwrap_or(0) * 86_400);
        (name, end.saturating_sub(now))
    }

    /// The window's length in seconds for `RateLimit-Policy` (a month
    /// counts 30 days).
    pub(crate) fn seconds(self) -> u64 {
        match self {
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// Where budget windows read the time of day.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// use std::time::Duration;
/// use corral_ratelimit::Calendar;
///
/// let calendar = Calendar::following_tokio(Duration::from_secs(1_796_576_400));
/// tokio::time::advance(Duration::from_secs(60)).await;
/// assert_eq!(calendar.now(), Duration::from_secs(1_796_576_460));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub enum Calendar {
    /// The system's wall clock.
    #[default]
    System,
    /// A wall clock that starts at `unix` and moves with tokio's clock:
    /// for tests with paused time and for simulations.
    Following {
        /// The time since the Unix epoch at `at`.
        unix: Duration,
        /// When it was that time.
        at: Instant,
    },
}

impl Calendar {
    /// A calendar at `unix` now, moving with tokio's clock.
    pub fn following_tokio(unix: Duration) -> Self {
        Calendar::Following {
            unix,
            at: Instant::now(),
        }
    }

    /// The time since the Unix epoch.
    pub fn now(&self) -> Duration {
        match self {
            Calendar::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            Calendar::Following { unix, at } => *unix + at.elapsed(),
        }
    }
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a
/// day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse: days since 1970-01-01 of a date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_over_four_centuries() {
        for days in (-1_000..146_097 * 2).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            civil_from_days(days_from_civil(2024, 3, 1) - 1),
            (2024, 2, 29)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2100, 3, 1) - 1),
            (2100, 2, 28)
        );
    }

    #[test]
    fn windows_end_at_midnight_and_on_the_first() {
        let at = |y, m, d, secs: u64| {
            Duration::from_secs(days_from_civil(y, m, d) as u64 * 86_400 + secs)
        };
        // The last second of a day belongs to it; the next is a new one.
        assert_eq!(
            Period::Day.window(at(2026, 12, 31, 86_399)),
            ("2026-12-31".into(), Duration::from_secs(1))
        );
        assert_eq!(Period::Day.window(at(2027, 1, 1, 0)).0, "2027-01-01");
        // December rolls over into the next year; February of a leap year.
        assert_eq!(
            Period::Month.window(at(2026, 12, 31, 0)),
            ("2026-12".into(), Duration::from_secs(86_400))
        );
        assert_eq!(
            Period::Month.window(at(2028, 2, 1, 0)),
            ("2028-02".into(), Duration::from_secs(29 * 86_400))
        );
    }
}
