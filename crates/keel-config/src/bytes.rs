//! Serde helpers for byte sizes: `1048576`, `512KiB`, `1MiB`, `10MB`.
//!
//! Use with `#[serde(with = "keel::config::bytes")]` (`keel_config::bytes` without the `keel` facade)
//! on a `usize` field.

use serde::{Deserialize, Deserializer, Serializer, de};

const UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("kB", 1_000),
    ("B", 1),
];

/// Writes the size with the largest binary unit that divides it exactly (`1MiB`, `1500B`).
pub fn serialize<S: Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
    let n = *n as u64;
    for (unit, mult) in UNITS.iter().filter(|(u, _)| u.ends_with("iB")) {
        if n >= *mult && n.is_multiple_of(*mult) {
            return s.serialize_str(&format!("{}{unit}", n / mult));
        }
    }
    s.serialize_str(&format!("{n}B"))
}

/// Reads a plain number of bytes or a number with a unit (`KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let n = match Raw::deserialize(d)? {
        Raw::Number(n) => n,
        Raw::Text(s) => parse(&s).map_err(de::Error::custom)?,
    };
    usize::try_from(n).map_err(|_| de::Error::custom(format!("{n} bytes is too large")))
}

/// Parses a byte size such as `1MiB`.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a byte size: write e.g. 1048576, 512KiB, 1MiB or 10MB");
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    for (unit, mult) in UNITS {
        if let Some(num) = t.strip_suffix(unit) {
            let num: u64 = num.trim().parse().map_err(|_| bad())?;
            return num.checked_mul(*mult).ok_or_else(bad);
        }
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_units() {
        assert_eq!(super::parse("1MiB"), Ok(1 << 20));
        assert_eq!(super::parse("512KiB"), Ok(512 << 10));
        assert_eq!(super::parse("10MB"), Ok(10_000_000));
        assert_eq!(super::parse("42"), Ok(42));
        assert!(super::parse("lots").is_err());
        assert!(super::parse("-1MiB").is_err());
    }

    proptest::proptest! {
        /// What `config show` writes reads back as the same size.
        #[test]
        fn a_written_size_reads_back(n in proptest::prelude::any::<usize>()) {
            #[derive(serde::Serialize, serde::Deserialize)]
            struct T {
                #[serde(with = "super")]
                n: usize,
            }
            let y = serde_norway::to_string(&T { n }).unwrap();
            proptest::prop_assert_eq!(serde_norway::from_str::<T>(&y).unwrap().n, n);
        }

        /// A number with a unit is the number times the unit, or an error when it overflows.
        #[test]
        fn a_unit_multiplies(n in proptest::prelude::any::<u64>(), unit in 0usize..super::UNITS.len()) {
            let (name, mult) = super::UNITS[unit];
            proptest::prop_assert_eq!(super::parse(&format!("{n}{name}")).ok(), n.checked_mul(mult));
        }
    }
}
