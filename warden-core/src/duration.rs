//! Durations as operators write them (`90s`, `5m`, `1h 30m`), via humantime.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration that reads and writes as human text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(secs))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like \"90s\" or \"1h\": {e}")))
    }
}

/// Duration text that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a duration like \"90s\" or \"1h\": {source}")]
pub struct DurationError {
    /// The text given.
    pub text: String,
    /// Why it does not parse.
    pub source: humantime::DurationError,
}

/// Parses human duration text, for command-line flags.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text).map_err(|source| DurationError { text: text.to_string(), source })
}
