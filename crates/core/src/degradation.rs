//! The degradation level, as the degrade layer tells the layers below.

use std::fmt;
use std::str::FromStr;

/// How degraded the service is, from full to emergency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Level {
    /// Everything as asked.
    #[default]
    Normal,
    /// Fewer tokens, longer cache lifetimes.
    L1,
    /// Non-critical work on a smaller model, stale cache served, low
    /// priorities refused.
    L2,
    /// Only what matters; the rest gets a default answer or 503.
    Critical,
}

impl Level {
    /// `Normal`, `L1`, `L2`, `Critical`, as headers and the admin API
    /// spell them.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "Normal",
            Level::L1 => "L1",
            Level::L2 => "L2",
            Level::Critical => "Critical",
        }
    }

    /// 0 to 3: the metric's value.
    pub fn as_number(self) -> u8 {
        match self {
            Level::Normal => 0,
            Level::L1 => 1,
            Level::L2 => 2,
            Level::Critical => 3,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    /// Case-insensitive; `0`..`3` too.
    ///
    /// ```
    /// use corral_core::Level;
    /// assert_eq!("l2".parse::<Level>(), Ok(Level::L2));
    /// assert_eq!("3".parse::<Level>(), Ok(Level::Critical));
    /// assert!("L9".parse::<Level>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" | "0" => Ok(Level::Normal),
            "l1" | "1" => Ok(Level::L1),
            "l2" | "2" => Ok(Level::L2),
            "critical" | "3" => Ok(Level::Critical),
            other => Err(format!(
                "unknown level {other:?}: use Normal, L1, L2 or Critical"
            )),
        }
    }
}

/// What the degrade layer asks of the layers below for one request, in
/// its extensions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Degradation {
    /// The level the request was admitted at.
    pub level: Level,
    /// Cache lifetimes are multiplied by this.
    pub ttl_factor: f64,
    /// Expired cache entries may be served.
    pub serve_stale: bool,
}

impl Default for Degradation {
    fn default() -> Self {
        Self {
            level: Level::Normal,
            ttl_factor: 1.0,
            serve_stale: false,
        }
    }
}
