//! Reading YAML with serde-saphyr: its errors turned into [`ConfigError`]s
//! with the place in front, and mappings read in order with their places.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Location;

use super::check::ConfigError;

/// A YAML mapping read in order as pairs, keeping each value's place
/// (serde's maps lose order, and keys cannot carry places).
pub(crate) struct Pairs<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for Pairs<K, V> {
    fn default() -> Self {
        Pairs(Vec::new())
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Pairs<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<K, V> {
            type Value = Pairs<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<K, V>()? {
                    out.push(entry);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// A serde-saphyr error as a [`ConfigError`] at its place in `file`.
pub(crate) fn yaml_error(e: &serde_saphyr::Error, file: &Path) -> ConfigError {
    let plain = e.without_snippet().to_string();
    let (line, column) = match e.location() {
        Some(loc) if loc != Location::UNKNOWN => (Some(loc.line()), Some(loc.column())),
        _ => (None, None),
    };
    // The library appends the place to its message; we print it in front.
    let reason = match plain.rfind(" at line ") {
        Some(i) if line.is_some() => plain[..i].to_string(),
        _ => plain,
    };
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        reason,
    }
}
