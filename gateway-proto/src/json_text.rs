//! [`JsonText`]: a JSON record body, checked once where it enters and then carried as text.
//!
//! A record body crosses several hops (agent → gateway collector → buffer → uplink → server
//! store). Parsing it into a `serde_json::Value` tree and serialising it back at every hop cost
//! more than everything else the hops do with it, and none of them looks inside. So a JSON body
//! is validated once, when it is built or decoded, and then travels as its text: the JSON
//! encoding embeds the text verbatim (`{"json": <text>}`), protobuf carries the same text in
//! `Record.json`, its size is the text's length, and two bodies are equal when their texts are.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess};
use serde::{Deserialize, Serialize, Serializer, ser};
use serde_json::value::RawValue;

use crate::{Error, ErrorCode};

/// One JSON value as text: syntax checked, immutable, without insignificant whitespace.
///
/// # What is checked
///
/// [`JsonText::parse`] and [`JsonText::from_string`] (and every decoder of this crate) accept
/// exactly the texts `serde_json` parses into a [`serde_json::Value`]: one JSON value (RFC 8259)
/// and nothing after it but whitespace, nested at most 127 arrays/objects deep, numbers within
/// the range of an `f64`. Anything else is an [`Error::InvalidField`] with code
/// [`ErrorCode::InvalidBody`] for the field `body.json`.
///
/// # What is kept, and whitespace
///
/// The text is kept **as written**, with one normalisation: whitespace outside strings (spaces,
/// tabs, line breaks between tokens, which RFC 8259 gives no meaning) is removed when the text
/// enters. Key order, duplicate keys, number spellings (`1.0`, `1e2`), string escapes and
/// whitespace *inside* strings are untouched. So a pretty-printed body sent in a JSON batch and
/// the same body sent compact in protobuf decode to equal `JsonText`s, the size that counts
/// against [`Limits::max_body_bytes`](crate::Limits) is the compact size, and nothing a consumer
/// could observe through a JSON parser changes.
///
/// Equality, hashing and [`Display`](fmt::Display) are those of the text: `{"a":1,"b":2}` and
/// `{"b":2,"a":1}` are different texts (compare [`to_value`](JsonText::to_value) results to
/// compare meanings).
///
/// ```
/// use gateway_proto::JsonText;
/// use serde_json::json;
///
/// let text = JsonText::parse("{ \"msg\": \"two  spaces\",\n  \"n\": 1.50 }").unwrap();
/// assert_eq!(text.as_str(), r#"{"msg":"two  spaces","n":1.50}"#);
/// assert_eq!(text.to_value().unwrap(), json!({"msg": "two  spaces", "n": 1.5}));
/// assert_eq!(JsonText::from_value(&json!([1, "x"])).as_str(), r#"[1,"x"]"#);
/// assert!(JsonText::parse("{\"unterminated\": ").is_err());
/// ```
#[derive(Clone)]
pub struct JsonText(Box<str>);

impl JsonText {
    /// Check `text` and keep a copy of it (whitespace between tokens removed).
    pub fn parse(text: &str) -> Result<Self, Error> {
        check(text)?;
        let owned = match first_whitespace_outside_strings(text.as_bytes()) {
            Some(at) => compact(text, at),
            None => text.to_owned(),
        };
        Ok(JsonText::from_checked_compact(owned))
    }

    /// Check `text` and keep it, without copying when it has no whitespace between tokens.
    pub fn from_string(text: String) -> Result<Self, Error> {
        check(&text)?;
        let text = match first_whitespace_outside_strings(text.as_bytes()) {
            Some(at) => compact(&text, at),
            None => text,
        };
        Ok(JsonText::from_checked_compact(text))
    }

    /// The text of a [`serde_json::Value`] (serialised compact; object keys in the map's order).
    pub fn from_value(value: &serde_json::Value) -> Self {
        // A `Value` always serialises, and to compact, valid JSON text.
        JsonText::from_checked_compact(serde_json::to_string(value).unwrap_or_default())
    }

    /// The text of any serialisable value, checked like [`JsonText::parse`]. Fails when the
    /// value does not serialise to JSON (a map with non-string keys, a failing `Serialize`) or
    /// nests deeper than 127 levels.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        let text = serde_json::to_string(value).map_err(|e| {
            Error::invalid(
                "body.json",
                ErrorCode::InvalidBody,
                format!("does not serialise to JSON: {e}"),
            )
        })?;
        JsonText::from_string(text)
    }

    /// Parse the text into a [`serde_json::Value`]. Cannot fail for a text that was parsed or
    /// decoded; fails only for one built with [`JsonText::from_value`] from a value nested
    /// deeper than 127 levels.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }

    /// Deserialise the text into any type, e.g. the struct an agent's records follow.
    pub fn deserialize_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length of the text in bytes: the body's size on the wire.
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// Always false: a JSON text holds at least one value.
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }

    /// The text, giving up the wrapper.
    pub fn into_string(self) -> String {
        self.0.into_string()
    }

    /// `text` has passed [`check`] and has no whitespace outside strings.
    fn from_checked_compact(text: String) -> Self {
        JsonText(text.into_boxed_str())
    }
}

/// The rules of a JSON body: what `serde_json` parses into a `Value`, without building it.
fn check(text: &str) -> Result<(), Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    AnyValue
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            Error::invalid(
                "body.json",
                ErrorCode::InvalidBody,
                format!("not valid JSON text: {e}"),
            )
        })
}

/// Walks any JSON value through `deserialize_any` like `serde_json::Value` does (same number
/// parsing, same nesting limit) and keeps nothing.
struct AnyValue;

impl<'de> DeserializeSeed<'de> for AnyValue {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for AnyValue {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(AnyValue)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(AnyValue)?.is_some() {
            map.next_value_seed(AnyValue)?;
        }
        Ok(())
    }
}

fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Index of the first whitespace byte outside a string, in valid JSON text.
fn first_whitespace_outside_strings(text: &[u8]) -> Option<usize> {
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_json_whitespace(b) {
            return Some(i);
        }
    }
    None
}

/// Valid JSON text without its whitespace outside strings; `from` is the first such byte.
fn compact(text: &str, from: usize) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(text.len());
    out.extend_from_slice(&bytes[..from]);
    let mut in_string = false;
    let mut escaped = false;
    for &b in &bytes[from..] {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_json_whitespace(b) {
            continue;
        }
        out.push(b);
    }
    // Only ASCII bytes outside strings were dropped, so the rest is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for JsonText {}

impl std::hash::Hash for JsonText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonText({})", self.as_str())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for JsonText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl FromStr for JsonText {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        JsonText::parse(text)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(value: serde_json::Value) -> Self {
        JsonText::from_value(&value)
    }
}

impl From<&serde_json::Value> for JsonText {
    fn from(value: &serde_json::Value) -> Self {
        JsonText::from_value(value)
    }
}

impl From<JsonText> for String {
    fn from(text: JsonText) -> Self {
        text.into_string()
    }
}

/// Written as the JSON value itself (not as a string) by `serde_json`.
impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Through serde_json's `RawValue`, which `serde_json` serialisers write verbatim. It is
        // borrowed from the text (one fast scan, no copy), so building and decoding bodies,
        // which happens far more often than writing them as JSON, never pays for it.
        let raw: &RawValue = serde_json::from_str(self.as_str()).map_err(ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Read from any JSON value in a `serde_json` document, checked like [`JsonText::parse`].
impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw: Box<str> = Box::<RawValue>::deserialize(deserializer)?.into();
        check(&raw).map_err(de::Error::custom)?;
        Ok(match first_whitespace_outside_strings(raw.as_bytes()) {
            Some(at) => JsonText::from_checked_compact(compact(&raw, at)),
            None => JsonText(raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whitespace_between_tokens_goes_and_the_rest_stays() {
        let text =
            JsonText::parse(" {\"a b\" :\t[1 , 2.50,\r\n\"x \\\" y\" ], \"e\":1E2 } ").unwrap();
        assert_eq!(text.as_str(), r#"{"a b":[1,2.50,"x \" y"],"e":1E2}"#);
        let already = r#"{"z":1,"a":[true,null]}"#;
        assert_eq!(JsonText::parse(already).unwrap().as_str(), already);
        // Escaped backslash before a closing quote ends the string.
        assert_eq!(
            JsonText::parse(r#"[ "\\" , 1 ]"#).unwrap().as_str(),
            r#"["\\",1]"#
        );
    }

    #[test]
    fn accepts_what_a_value_accepts_and_nothing_else() {
        for bad in [
            "",
            " ",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "1 2",
            "tru e",
            "nul",
            "'x'",
            "1e400",
            "-1e400",
            "\"\\x\"",
            "\"\\ud800\"",
            "{\"a\":1}}",
            "[01]",
            "NaN",
        ] {
            let value_ok = serde_json::from_str::<serde_json::Value>(bad).is_ok();
            let ours = JsonText::parse(bad);
            assert_eq!(ours.is_ok(), value_ok, "{bad:?}: {ours:?}");
        }
        for good in [
            "0",
            "-0.0",
            "1e-400",
            "\"\"",
            "[]",
            "{}",
            "123456789012345678901234567890",
        ] {
            assert!(JsonText::parse(good).is_ok(), "{good:?}");
        }
        let err = JsonText::parse("{").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidBody);
        assert!(err.to_string().contains("body.json"), "{err}");
    }

    #[test]
    fn nesting_stops_where_serde_json_values_stop() {
        let nested = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);
        assert!(JsonText::parse(&nested(127)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(127)).is_ok());
        assert!(JsonText::parse(&nested(128)).is_err());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(128)).is_err());
        let deep = JsonText::from_serialize(
            &serde_json::from_str::<serde_json::Value>(&nested(127)).unwrap(),
        );
        assert!(deep.is_ok());
    }

    #[test]
    fn values_and_serialisable_types_convert_both_ways() {
        let value = json!({"b": [1, 2.5, "x"], "a": null});
        let text = JsonText::from_value(&value);
        assert_eq!(text.to_value().unwrap(), value);
        assert_eq!(text, JsonText::from(value.clone()));
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Event {
            kind: String,
            n: u32,
        }
        let event = Event {
            kind: "door".into(),
            n: 3,
        };
        let text = JsonText::from_serialize(&event).unwrap();
        assert_eq!(text.as_str(), r#"{"kind":"door","n":3}"#);
        assert_eq!(text.deserialize_as::<Event>().unwrap(), event);
        let bad_keys = std::collections::BTreeMap::from([((1, 2), 3)]);
        assert!(JsonText::from_serialize(&bad_keys).is_err());
        assert_eq!(text.to_string(), text.as_str());
        assert_eq!(text.len(), text.as_str().len());
        assert_eq!(String::from(text.clone()), text.as_str());
    }

    #[test]
    fn serde_embeds_the_text_and_reads_any_value_back() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Holder {
            body: JsonText,
        }
        let holder = Holder {
            body: JsonText::parse(r#"{"z":1,"a":2}"#).unwrap(),
        };
        let json = serde_json::to_string(&holder).unwrap();
        assert_eq!(json, r#"{"body":{"z":1,"a":2}}"#);
        let pretty = "{\n  \"body\": {\n    \"z\": 1,\n    \"a\": 2\n  }\n}";
        assert_eq!(serde_json::from_str::<Holder>(pretty).unwrap(), holder);
        // Through a `Value` as well (keys then come in the map's order).
        let via_value: Holder = serde_json::from_value(json!({"body": [1, {"k": "v"}]})).unwrap();
        assert_eq!(via_value.body.as_str(), r#"[1,{"k":"v"}]"#);
        assert_eq!(
            serde_json::to_value(&holder).unwrap(),
            json!({"body": {"z": 1, "a": 2}})
        );
        // The nesting limit applies to the body itself, whatever surrounds it.
        let deep = format!("{{\"body\": {}}}", "[".repeat(128) + &"]".repeat(128));
        assert!(serde_json::from_str::<Holder>(&deep).is_err());
        let within = format!("{{\"body\": {}}}", "[".repeat(127) + &"]".repeat(127));
        assert!(serde_json::from_str::<Holder>(&within).is_ok());
    }

    #[test]
    fn equality_is_text_equality() {
        let a = JsonText::parse(r#"{"a":1,"b":2}"#).unwrap();
        let b = JsonText::parse(r#"{"b":2,"a":1}"#).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_value().unwrap(), b.to_value().unwrap());
        assert_eq!(a, JsonText::parse("{ \"a\": 1, \"b\": 2 }").unwrap());
    }
}
