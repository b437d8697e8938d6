//! What every section's validation shares: errors that name the file, the
//! line and column and the reason; one helper for range-checked fields;
//! paths resolved against the config file's directory; and the rule for
//! names that become metric labels and policy keys.

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

use super::duration::ConfigDuration;

/// Why a config or policy file was refused: the file, where in it, and
/// the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub reason: String,
}

impl ConfigError {
    /// An error about the file as a whole.
    pub fn file(file: &Path, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            reason: reason.into(),
        }
    }

    /// Adds a hint in parentheses to the reason.
    pub fn note(mut self, hint: &str) -> Self {
        self.reason = format!("{} ({hint})", self.reason);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Validation of one file: where errors point, and where relative paths
/// in it lead.
pub(crate) struct Check<'a> {
    pub file: &'a Path,
    /// The file's directory: relative paths in it are resolved from here.
    pub base: &'a Path,
}

impl<'a> Check<'a> {
    pub fn new(file: &'a Path) -> Self {
        Check {
            file,
            base: file.parent().unwrap_or_else(|| Path::new(".")),
        }
    }

    /// An error at `place` in the file.
    pub fn at(&self, place: Location, reason: impl Into<String>) -> ConfigError {
        let known = place != Location::UNKNOWN;
        ConfigError {
            file: self.file.to_path_buf(),
            line: known.then(|| place.line()),
            column: known.then(|| place.column()),
            reason: reason.into(),
        }
    }

    /// A range-checked setting: the value, when given and within
    /// `allowed`; when outside it, an error at the value's place that names
    /// the setting and what it must be.
    pub fn get<T, R>(
        &self,
        value: Option<Spanned<T>>,
        name: &str,
        allowed: R,
    ) -> Result<Option<T>, ConfigError>
    where
        T: PartialOrd + fmt::Display,
        R: RangeBounds<T>,
    {
        match value {
            Some(v) if allowed.contains(&v.value) => Ok(Some(v.value)),
            Some(v) => Err(self.at(
                v.referenced,
                format!("{name} must be {}", describe(&allowed)),
            )),
            None => Ok(None),
        }
    }

    /// As [`Check::get`], storing a given value in `slot`.
    pub fn set<T, R>(
        &self,
        value: Option<Spanned<T>>,
        name: &str,
        allowed: R,
        slot: &mut T,
    ) -> Result<(), ConfigError>
    where
        T: PartialOrd + fmt::Display,
        R: RangeBounds<T>,
    {
        if let Some(v) = self.get(value, name, allowed)? {
            *slot = v;
        }
        Ok(())
    }

    /// A duration that must be more than zero.
    pub fn positive(
        &self,
        value: Option<Spanned<ConfigDuration>>,
        name: &str,
    ) -> Result<Option<ConfigDuration>, ConfigError> {
        match value {
            Some(v) if v.value.0.is_zero() => {
                Err(self.at(v.referenced, format!("{name} must be more than 0")))
            }
            v => Ok(v.map(|v| v.value)),
        }
    }

    /// As [`Check::positive`], storing a given value in `slot`.
    pub fn set_positive(
        &self,
        value: Option<Spanned<ConfigDuration>>,
        name: &str,
        slot: &mut ConfigDuration,
    ) -> Result<(), ConfigError> {
        if let Some(d) = self.positive(value, name)? {
            *slot = d;
        }
        Ok(())
    }

    /// A percentage from 1 to 100, as a share (0.01 to 1.0).
    pub fn percent(
        &self,
        value: Option<Spanned<u32>>,
        name: &str,
    ) -> Result<Option<f64>, ConfigError> {
        Ok(self
            .get(value, name, 1..=100)
            .map_err(|e| e.note("a percentage"))?
            .map(|p| f64::from(p) / 100.0))
    }

    /// A path from the file, resolved against the file's directory.
    pub fn path(&self, p: &Spanned<PathBuf>) -> Result<PathBuf, ConfigError> {
        if p.value.as_os_str().is_empty() {
            return Err(self.at(p.referenced, "path must not be empty"));
        }
        Ok(if p.value.is_absolute() {
            p.value.clone()
        } else {
            self.base.join(&p.value)
        })
    }
}

/// What a value in `allowed` must be, in words.
fn describe<T: fmt::Display>(allowed: &impl RangeBounds<T>) -> String {
    use Bound::*;
    match (allowed.start_bound(), allowed.end_bound()) {
        (Included(a), Included(b)) => format!("between {a} and {b}"),
        (Included(a), Unbounded) => format!("at least {a}"),
        (Excluded(a), Unbounded) => format!("more than {a}"),
        (Excluded(a), Excluded(b)) => format!("more than {a} and less than {b}"),
        (Unbounded, Included(b)) => format!("at most {b}"),
        (Unbounded, Excluded(b)) => format!("less than {b}"),
        (Included(a), Excluded(b)) => format!("at least {a} and less than {b}"),
        (Excluded(a), Included(b)) => format!("more than {a} and at most {b}"),
        (Unbounded, Unbounded) => "any value".into(),
    }
}

/// Listener and service names become metric labels and policy keys:
/// 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit.
pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned<T>(value: T) -> Option<Spanned<T>> {
        Some(Spanned {
            value,
            referenced: Location::UNKNOWN,
            defined: Location::UNKNOWN,
        })
    }

    #[test]
    fn range_checked_fields_say_what_they_must_be() {
        let c = Check::new(Path::new("/etc/p/portcullis.yaml"));
        let mut slot = 7u32;
        c.set(None, "x", 1..=10, &mut slot).unwrap();
        assert_eq!(slot, 7, "absent: unchanged");
        c.set(spanned(10), "x", 1..=10, &mut slot).unwrap();
        assert_eq!(slot, 10);
        let e = c.set(spanned(11), "a.x", 1..=10, &mut slot).unwrap_err();
        assert_eq!(e.reason, "a.x must be between 1 and 10");
        assert_eq!(slot, 10, "refused: unchanged");
        let e = c.get(spanned(0usize), "a.n", 1..).unwrap_err();
        assert_eq!(e.reason, "a.n must be at least 1");
        let e = c.get(
            spanned(0.0),
            "f",
            (Bound::Excluded(0.0), Bound::Excluded(1.0)),
        );
        assert_eq!(
            e.unwrap_err().reason,
            "f must be more than 0 and less than 1"
        );
        assert_eq!(c.percent(spanned(25), "p").unwrap(), Some(0.25));
        let e = c.percent(spanned(150), "p").unwrap_err();
        assert_eq!(e.reason, "p must be between 1 and 100 (a percentage)");
        let zero = ConfigDuration(std::time::Duration::ZERO);
        let e = c.positive(spanned(zero), "t").unwrap_err();
        assert_eq!(e.reason, "t must be more than 0");
    }
}
