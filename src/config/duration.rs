//! Human durations in config files: `250ms`, `5s`, `10m`, `1h`, `2d`.

use std::fmt;
use std::time::Duration;

/// A duration read from or written to config as `<number><unit>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h or d)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} must start with a whole number"))?;
        let ms_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "duration {s:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
                ));
            }
        };
        n.checked_mul(ms_per)
            .map(|ms| ConfigDuration(Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) || ms == 0 {
            write!(f, "{ms}ms")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ConfigDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for ConfigDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_nonsense() {
        let ok = [
            ("250ms", 250),
            ("5s", 5_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("2d", 172_800_000),
        ];
        for (s, ms) in ok {
            assert_eq!(
                ConfigDuration::parse(s).unwrap().0,
                Duration::from_millis(ms),
                "{s}"
            );
        }
        for bad in ["", "5", "s", "5x", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(ConfigDuration::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ConfigDuration::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(ConfigDuration::parse("120s").unwrap().to_string(), "2m");
        assert_eq!(
            ConfigDuration::parse("1500ms").unwrap().to_string(),
            "1500ms"
        );
    }
}
