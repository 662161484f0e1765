//! How request fields are read off the wire, as the OpenAPI document says:
//! an optional field is absent or a value, never `null`; an integer is any
//! JSON number with no fraction (`4` and `4.0` alike, as JSON Schema's
//! `integer` counts them), in a body or in a query string.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// An optional field that is present: its value, `null` refused (serde
/// reads `null` as absent for an `Option` otherwise).
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An optional whole number of type `T`: `null`, a fraction, a negative
/// number or one beyond `T` refused with a message that says so.
pub fn whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_any(Whole::<T>(PhantomData, false)).map(Some)
}

/// A required whole number of type `T`, read as [`whole`] reads one.
pub fn whole_required<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Whole::<T>(PhantomData, false))
}

/// A query field that is a whole number (`timeout_ms`, `since`, `limit`):
/// as [`whole`], spelled as text.
pub fn whole_query<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    d.deserialize_any(Whole::<T>(PhantomData, true)).map(Some)
}

/// Whether text is read (a query string's values are all text; in a JSON
/// body, `"4"` is a string, not a number).
struct Whole<T>(PhantomData<T>, bool);

impl<T: TryFrom<u64>> Whole<T> {
    fn fit<E: de::Error>(n: u64) -> Result<T, E> {
        T::try_from(n).map_err(|_| E::custom(format!("{n} is out of range")))
    }
}

impl<T: TryFrom<u64>> Visitor<'_> for Whole<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number, not negative")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        Whole::<T>::fit(n)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        let n = u64::try_from(n).map_err(|_| E::custom(format!("{n} is negative")))?;
        Whole::<T>::fit(n)
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<T, E> {
        // 2^64 and above do not fit any field; below it, the cast is exact
        // for every whole x.
        if x.fract() != 0.0 || !(0.0..18_446_744_073_709_551_616.0).contains(&x) {
            return Err(E::custom(format!("{x} is not a whole number in range")));
        }
        Whole::<T>::fit(x as u64)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        if !self.1 {
            return Err(E::invalid_type(de::Unexpected::Str(s), &self));
        }
        if let Ok(n) = s.parse::<u64>() {
            return self.visit_u64(n);
        }
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() => self.visit_f64(x),
            _ => Err(E::custom(format!("{s:?} is not a whole number"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default, deserialize_with = "super::whole")]
        threads: Option<u16>,
        #[serde(default, deserialize_with = "super::present")]
        name: Option<String>,
    }

    fn body(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_numbers_in_any_spelling_and_nothing_else() {
        assert_eq!(body(r#"{"threads": 4}"#).unwrap().threads, Some(4));
        assert_eq!(body(r#"{"threads": 4.0}"#).unwrap().threads, Some(4));
        assert_eq!(body("{}").unwrap().threads, None);
        for bad in ["4.5", "-1", "65536", "null", "\"4\"", "1e300"] {
            let json = format!(r#"{{"threads": {bad}}}"#);
            assert!(body(&json).is_err(), "{json} was accepted");
        }
    }

    #[test]
    fn null_is_not_a_string() {
        assert!(body(r#"{"name": null}"#).is_err());
        assert_eq!(body(r#"{"name": "x"}"#).unwrap().name.as_deref(), Some("x"));
    }

    #[derive(Deserialize, Debug)]
    struct Query {
        #[serde(default, deserialize_with = "super::whole_query")]
        timeout_ms: Option<u64>,
    }

    #[test]
    fn query_numbers_are_read_from_text() {
        let q = |s: &str| serde_urlencoded_like(s);
        assert_eq!(q("1000").unwrap(), Some(1000));
        assert_eq!(q("1000.0").unwrap(), Some(1000));
        assert!(q("-5").is_err());
        assert!(q("1.5").is_err());
        assert!(q("abc").is_err());
    }

    /// A query string's value reaches the visitor as text.
    fn serde_urlencoded_like(value: &str) -> Result<Option<u64>, String> {
        let json = serde_json::json!({ "timeout_ms": value });
        serde_json::from_value::<Query>(json)
            .map(|q| q.timeout_ms)
            .map_err(|e| e.to_string())
    }
}
