//! `scheme = "name"` or a `[route.scheme]` table (SPEC §9), to a [`Scheme`].
//!
//! Messages name the key at fault and what to write instead; the caller
//! adds `file:line:col` and the route.

use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::{
    presets, Algorithm, Encoding, Format, HeaderSet, KeyFormat, Part, Scheme, Signed,
    TimestampFormat,
};

/// A `[route.scheme]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheme {
    preset: Option<String>,
    header: Option<String>,
    prefix: Option<String>,
    encoding: Option<String>,
    algorithm: Option<String>,
    signed: Option<String>,
    timestamp_header: Option<String>,
    tolerance: Option<String>,
    id_header: Option<String>,
}

fn unknown_preset(name: &str) -> String {
    format!(
        "unknown scheme {name:?}; use one of {} or a [route.scheme] table",
        presets::NAMES.join(", ")
    )
}

/// Builds the scheme a route's `scheme` value describes.
pub fn build(value: &toml::Value) -> Result<Scheme, String> {
    match value {
        toml::Value::String(name) => presets::preset(name).ok_or_else(|| unknown_preset(name)),
        toml::Value::Table(_) => {
            let raw = RawScheme::deserialize(value.clone())
                .map_err(|e| format!("scheme: {}", e.message().trim_end()))?;
            match &raw.preset {
                Some(name) => from_preset(name, &raw),
                None => custom(&raw),
            }
        }
        _ => Err("scheme must be a preset name like \"github\" or a [route.scheme] table".into()),
    }
}

/// A preset with its tolerance changed (the only override: anything else
/// is a different scheme and is written as one).
fn from_preset(name: &str, raw: &RawScheme) -> Result<Scheme, String> {
    let mut scheme = presets::preset(name).ok_or_else(|| unknown_preset(name))?;
    let others = [
        ("header", raw.header.is_some()),
        ("prefix", raw.prefix.is_some()),
        ("encoding", raw.encoding.is_some()),
        ("algorithm", raw.algorithm.is_some()),
        ("signed", raw.signed.is_some()),
        ("timestamp_header", raw.timestamp_header.is_some()),
        ("id_header", raw.id_header.is_some()),
    ];
    if let Some((key, _)) = others.iter().find(|(_, set)| *set) {
        return Err(format!(
            "scheme.{key} cannot change preset {name:?}; only tolerance can be set with a preset (drop preset to describe a custom scheme)"
        ));
    }
    if let Some(t) = &raw.tolerance {
        if scheme.timestamp.is_none() {
            return Err(format!(
                "scheme.tolerance: preset {name:?} has no timestamp, so there is nothing to check it against; remove tolerance"
            ));
        }
        scheme.tolerance = Some(tolerance(t)?);
    }
    Ok(scheme)
}

fn tolerance(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(
            "scheme.tolerance must be greater than zero (a zero window refuses every delivery); write e.g. \"5m\"".into(),
        ),
        Ok(d) => Ok(d),
        Err(_) => Err(format!(
            "scheme.tolerance: {text:?} is not a duration; write e.g. \"5m\" or \"300s\""
        )),
    }
}

fn header(key: &str, text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("scheme.{key}: {text:?} is not a valid header name"))
}

fn custom(raw: &RawScheme) -> Result<Scheme, String> {
    let signature = header(
        "header",
        raw.header.as_deref().ok_or(
            "scheme: a custom scheme needs header = \"X-Signature\" (or preset = \"name\")",
        )?,
    )?;
    let encoding = match raw.encoding.as_deref().unwrap_or("hex") {
        "hex" => Encoding::Hex,
        "base64" => Encoding::Base64,
        other => {
            return Err(format!(
                "scheme.encoding: {other:?} is not supported; write \"hex\" or \"base64\""
            ))
        }
    };
    let algorithm = match raw.algorithm.as_deref().unwrap_or("sha256") {
        "sha1" => Algorithm::Sha1,
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        other => {
            return Err(format!(
                "scheme.algorithm: {other:?} is not supported; write \"sha256\", \"sha1\" or \"sha512\""
            ))
        }
    };
    let parts = template(raw.signed.as_deref().unwrap_or("{body}"))?;
    let timestamp_header = raw
        .timestamp_header
        .as_deref()
        .map(|t| header("timestamp_header", t))
        .transpose()?;
    let id = raw
        .id_header
        .as_deref()
        .map(|t| header("id_header", t))
        .transpose()?;
    let signs_ts = parts.contains(&Part::Timestamp);
    let signs_id = parts.contains(&Part::Id);
    match (&timestamp_header, signs_ts) {
        (None, true) => {
            return Err("scheme.signed uses {timestamp}; set timestamp_header = \"X-Timestamp\"".into())
        }
        (Some(_), false) => {
            return Err("scheme.timestamp_header is set but signed does not include {timestamp}; an unsigned timestamp proves nothing, add it to signed".into())
        }
        _ => {}
    }
    if signs_id && id.is_none() {
        return Err("scheme.signed uses {id}; set id_header = \"X-Webhook-Id\"".into());
    }
    let tolerance = match (&raw.tolerance, &timestamp_header) {
        (Some(_), None) => {
            return Err(
                "scheme.tolerance needs timestamp_header (there is no timestamp to check)".into(),
            )
        }
        (Some(t), Some(_)) => Some(tolerance(t)?),
        (None, Some(_)) => Some(Duration::from_secs(300)),
        (None, None) => None,
    };
    Ok(Scheme {
        name: "custom".into(),
        headers: vec![HeaderSet {
            signature,
            timestamp: timestamp_header.clone(),
            id: id.clone(),
        }],
        format: Format::Single {
            prefix: raw.prefix.clone().unwrap_or_default(),
        },
        encoding,
        algorithm,
        signed: Signed::Template(parts),
        timestamp: timestamp_header.map(|_| TimestampFormat::Unix),
        tolerance,
        key_format: KeyFormat::Raw,
        delivery_id: id,
    })
}

/// `"{timestamp}.{body}"` → parts before the body. `{body}` must come last
/// (the body is hashed as it arrives, so nothing can follow it).
fn template(text: &str) -> Result<Vec<Part>, String> {
    let Some(before) = text.strip_suffix("{body}") else {
        return Err(format!(
            "scheme.signed {text:?} must end with {{body}}, e.g. \"{{timestamp}}.{{body}}\""
        ));
    };
    let mut parts = Vec::new();
    let mut rest = before;
    while !rest.is_empty() {
        match rest.find('{') {
            None => {
                parts.push(Part::Literal(rest.as_bytes().to_vec()));
                break;
            }
            Some(0) => {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("scheme.signed {text:?}: unclosed '{{'"))?;
                parts.push(match &rest[..=end] {
                    "{timestamp}" => Part::Timestamp,
                    "{id}" => Part::Id,
                    other => {
                        return Err(format!(
                            "scheme.signed: unknown placeholder {other}; use {{timestamp}}, {{id}} and {{body}} (last)"
                        ))
                    }
                });
                rest = &rest[end + 1..];
            }
            Some(i) => {
                parts.push(Part::Literal(rest.as_bytes()[..i].to_vec()));
                rest = &rest[i..];
            }
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<Scheme, String> {
        let v: toml::Table = toml::from_str(text).unwrap();
        build(&toml::Value::Table(v))
    }

    #[test]
    fn presets_by_name_and_unknown_lists_them() {
        for name in presets::NAMES {
            assert_eq!(build(&toml::Value::String(name.into())).unwrap().name, name);
        }
        let err = build(&toml::Value::String("githib".into())).unwrap_err();
        assert!(err.contains("unknown scheme \"githib\""), "{err}");
        assert!(err.contains("adsumo, github, stripe"), "{err}");
    }

    #[test]
    fn custom_table() {
        let s = table(
            r#"header = "X-Sig"
prefix = "sha512="
encoding = "base64"
algorithm = "sha512"
signed = "{timestamp}.{body}"
timestamp_header = "X-Ts"
tolerance = "2m""#,
        )
        .unwrap();
        assert_eq!(s.algorithm, Algorithm::Sha512);
        assert_eq!(s.tolerance, Some(Duration::from_secs(120)));
        assert_eq!(
            s.signed,
            Signed::Template(vec![Part::Timestamp, Part::Literal(b".".to_vec())])
        );
        assert_eq!(
            s.header_names(),
            vec![
                HeaderName::from_static("x-sig"),
                HeaderName::from_static("x-ts")
            ]
        );
    }

    #[test]
    fn table_errors() {
        let cases = [
            ("header = \"X\"\ntolerance = \"0s\"\ntimestamp_header = \"T\"\nsigned = \"{timestamp}{body}\"", "greater than zero"),
            ("preset = \"stripe\"\ntolerance = \"0s\"", "greater than zero"),
            ("preset = \"github\"\ntolerance = \"1m\"", "has no timestamp"),
            ("preset = \"github\"\nheader = \"X\"", "scheme.header cannot change preset"),
            ("preset = \"nope\"", "unknown scheme \"nope\""),
            ("header = \"X\"\nsigned = \"{body}.x\"", "must end with {body}"),
            ("header = \"X\"\nsigned = \"{ts}{body}\"", "unknown placeholder {ts}"),
            ("header = \"X\"\nsigned = \"{timestamp}{body}\"", "set timestamp_header"),
            ("header = \"X\"\ntimestamp_header = \"T\"", "unsigned timestamp"),
            ("header = \"X\"\nencoding = \"hexx\"", "\"hexx\" is not supported"),
            ("header = \"X\"\nalgorithm = \"md5\"", "\"md5\" is not supported"),
            ("header = \"X Y\"", "not a valid header name"),
            ("prefix = \"x\"", "needs header"),
            ("header = \"X\"\nbogus = 1", "unknown field `bogus`"),
        ];
        for (text, want) in cases {
            let err = table(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
