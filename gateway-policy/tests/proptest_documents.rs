//! Property tests over random JSON documents:
//! * `apply(diff(A, B), A) == B`, and the result carries B's checksum;
//! * the checksum does not change with key order, whitespace or number spelling of the text.

use gateway_policy::{apply_patch, apply_patch_verified, canonical_json, checksum, diff};
use proptest::prelude::*;
use proptest::test_runner::TestRng;
use serde_json::{Map, Number, Value};

/// Keys that exercise JSON Pointer escapes, UTF-16 ordering (astral vs BMP), empty keys,
/// array-index-looking keys and control characters.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-d]{0,3}",
        Just("".to_owned()),
        Just("a/b".to_owned()),
        Just("~0~1".to_owned()),
        Just("0".to_owned()),
        Just("10".to_owned()),
        Just("\u{1F602}".to_owned()),
        Just("\u{FB33}".to_owned()),
        Just("é".to_owned()),
        Just("\n\u{7f}".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        "\\PC{0,6}".prop_map(Value::String),
        Just(Value::String("\u{0}\"\\/\u{2028}".to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Two documents that are often related (B an edit of A), so diffs are not all "replace root".
fn related_pair() -> impl Strategy<Value = (Value, Value)> {
    (json(), json(), any::<u8>()).prop_map(|(a, b, mode)| match mode % 3 {
        0 => (a, b),
        1 => {
            let mut edited = a.clone();
            graft(&mut edited, b, mode as usize);
            (a, edited)
        }
        _ => {
            let wrapped = serde_json::json!({"keep": a.clone(), "new": b});
            (serde_json::json!({"keep": a}), wrapped)
        }
    })
}

/// Replace some nested value of `doc` with `part`.
fn graft(doc: &mut Value, part: Value, choice: usize) {
    match doc {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(choice % m.len()).cloned().unwrap_or_default();
            if let Some(child) = m.get_mut(&key) {
                graft(child, part, choice / 2);
            }
        }
        Value::Array(v) if !v.is_empty() => {
            let i = choice % v.len();
            graft(&mut v[i], part, choice / 2);
        }
        other => *other = part,
    }
}

/// Write `value` as JSON text with object members in a random order and random whitespace,
/// integers sometimes spelt as `N.0` or `Ne0`-style equivalents.
fn scrambled_text(value: &Value, rng: &mut TestRng, out: &mut String) {
    let ws = |rng: &mut TestRng, out: &mut String| {
        for _ in 0..rng.random_range(0..3usize) {
            out.push([' ', '\n', '\t', '\r'][rng.random_range(0..4usize)]);
        }
    };
    ws(rng, out);
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            // Fisher–Yates with the test's RNG.
            for i in (1..entries.len()).rev() {
                entries.swap(i, rng.random_range(0..=i));
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                out.push_str(&serde_json::to_string(k).unwrap());
                ws(rng, out);
                out.push(':');
                scrambled_text(v, rng, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                scrambled_text(v, rng, out);
            }
            out.push(']');
        }
        Value::Number(n) if n.is_i64() && n.as_i64().is_some_and(|i| i.abs() < 1 << 40) => {
            let i = n.as_i64().unwrap_or_default();
            match rng.random_range(0..3u8) {
                0 => out.push_str(&format!("{i}.0")),
                1 => out.push_str(&format!("{i}e0")),
                _ => out.push_str(&i.to_string()),
            }
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
    ws(rng, out);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn applying_the_diff_of_a_and_b_to_a_gives_b_with_its_checksum((a, b) in related_pair()) {
        let patch = diff(&a, &b);
        prop_assert!(patch.is_array());
        let sum_b = checksum(&b).unwrap();
        let result = apply_patch_verified(&a, &patch, &sum_b).unwrap();
        prop_assert_eq!(&result, &b);
        prop_assert_eq!(checksum(&result).unwrap(), sum_b);
        // The patch also survives a trip over the wire as JSON text.
        let wire: Value = serde_json::from_str(&serde_json::to_string(&patch).unwrap()).unwrap();
        prop_assert_eq!(apply_patch(&a, &wire).unwrap(), b);
    }

    #[test]
    fn the_checksum_ignores_key_order_whitespace_and_number_spelling(doc in json(), seed in any::<u64>()) {
        let mut rng = TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &{ let mut s = [0u8; 32]; s[..8].copy_from_slice(&seed.to_le_bytes()); s },
        );
        let expected = checksum(&doc).unwrap();
        for _ in 0..3 {
            let mut text = String::new();
            scrambled_text(&doc, &mut rng, &mut text);
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(checksum(&reparsed).unwrap(), expected.clone(), "text: {}", text);
        }
        // The canonical form is a fixed point: canonicalising it again changes nothing.
        let canonical = canonical_json(&doc).unwrap();
        let again: Value = serde_json::from_slice(&canonical).unwrap();
        prop_assert_eq!(canonical_json(&again).unwrap(), canonical);
    }

    #[test]
    fn different_canonical_forms_give_different_checksums(a in json(), b in json()) {
        let (ca, cb) = (canonical_json(&a).unwrap(), canonical_json(&b).unwrap());
        prop_assert_eq!(ca == cb, checksum(&a).unwrap() == checksum(&b).unwrap());
    }
}
