//! Deserializers of the request types.

use serde::Deserialize;

/// Deserializes a whole number that JSON may spell `5` or `5.0` (JSON Schema's `integer` is any
/// number with a zero fraction, and clients that keep numbers as floats send the second).
/// Use with `#[serde(deserialize_with = "…")]` on an `i64` field.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::{Error, Unexpected};
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        // Exactly representable and whole: 2^53 bounds both.
        Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => Ok(f as i64),
        Some(f) => Err(D::Error::invalid_value(Unexpected::Float(f), &"a whole number")),
        None => Err(D::Error::invalid_value(Unexpected::Other("number"), &"a whole number")),
    }
}

/// [`whole_number`] for an optional field (absent or `null`: `None`).
pub fn optional_whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] i64);
    Ok(Option::<Whole>::deserialize(d)?.map(|Whole(n)| n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Seats(#[serde(deserialize_with = "whole_number")] i64);

    #[test]
    fn a_whole_number_may_have_a_zero_fraction() {
        assert_eq!(serde_json::from_str::<Seats>("5").unwrap().0, 5);
        assert_eq!(serde_json::from_str::<Seats>("5.0").unwrap().0, 5);
        assert!(serde_json::from_str::<Seats>("5.5").is_err());
        assert!(serde_json::from_str::<Seats>("1e300").is_err());
    }
}
