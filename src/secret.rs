//! Where a route's secret comes from, and the secret itself.
//!
//! Secrets are never written inline in the config (the sender's own advice):
//! a route names an environment variable, a file, or a systemd credential.
//! Nothing here ever formats a secret's bytes: errors name the source, and
//! `Debug` on [`Secret`] prints `Secret(..)`.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Access to the process environment, injectable so tests never call
/// `std::env::set_var`.
pub trait Environment {
    fn var(&self, name: &str) -> Option<OsString>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

impl<S: std::hash::BuildHasher> Environment for std::collections::HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<OsString> {
        self.get(name).map(OsString::from)
    }
}

/// `secret = { env = "VAR" } | { file = "/path" } | { credential = "name" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    Credential(String),
}

/// The secret's bytes, used as the HMAC key exactly as stored.
pub struct Secret {
    bytes: Vec<u8>,
    /// For a file (or credential) whose mode lets group or others read it:
    /// the path and the permission bits, for a load-time warning.
    loose_file: Option<(PathBuf, u32)>,
}

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file this secret came from and its mode, when group or others
    /// may read it.
    pub fn loose_file(&self) -> Option<(&Path, u32)> {
        self.loose_file.as_ref().map(|(p, m)| (p.as_path(), *m))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret could not be loaded. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret env var {0} is not set; export it or use secret = {{ file = \"...\" }}")]
    EnvMissing(String),
    #[error("secret env var {0} is empty; set it to the webhook secret")]
    EnvEmpty(String),
    #[error("secret file {path}: {source}; check the path and that hookgate may read it")]
    FileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file {0} is empty; write the webhook secret into it")]
    FileEmpty(PathBuf),
    #[error("secret credential {0:?}: CREDENTIALS_DIRECTORY is not set; credentials come from systemd LoadCredential=, use env or file outside systemd")]
    NoCredentialsDirectory(String),
    #[error("secret credential name {0:?} is not a plain file name; use the name given to LoadCredential=")]
    BadCredentialName(String),
}

impl SecretSource {
    /// Reads the secret. A trailing newline in a file (as `echo` writes) is
    /// not part of the secret.
    pub fn load(&self, env: &dyn Environment) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Env(name) => {
                let value = env
                    .var(name)
                    .ok_or_else(|| SecretError::EnvMissing(name.clone()))?;
                let bytes = os_bytes(value);
                if bytes.is_empty() {
                    return Err(SecretError::EnvEmpty(name.clone()));
                }
                Ok(Secret {
                    bytes,
                    loose_file: None,
                })
            }
            SecretSource::File(path) => read_secret_file(path),
            SecretSource::Credential(name) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(SecretError::BadCredentialName(name.clone()));
                }
                let dir = env
                    .var("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
                read_secret_file(&Path::new(&dir).join(name))
            }
        }
    }

    /// Short description for messages: never the secret, only where it lives.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(n) => format!("env {n}"),
            SecretSource::File(p) => format!("file {}", p.display()),
            SecretSource::Credential(n) => format!("credential {n}"),
        }
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let mut bytes = std::fs::read(path).map_err(|source| SecretError::FileUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(SecretError::FileEmpty(path.to_path_buf()));
    }
    let loose_file = group_or_other_readable(path).map(|mode| (path.to_path_buf(), mode));
    Ok(Secret { bytes, loose_file })
}

/// The permission bits of `path` if group or others may read it.
#[cfg(unix)]
fn group_or_other_readable(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn group_or_other_readable(_: &Path) -> Option<u32> {
    None
}

#[cfg(unix)]
fn os_bytes(value: OsString) -> Vec<u8> {
    std::os::unix::ffi::OsStringExt::into_vec(value)
}

#[cfg(not(unix))]
fn os_bytes(value: OsString) -> Vec<u8> {
    value.to_string_lossy().into_owned().into_bytes()
}

const SECRET_SHAPE: &str =
    "secret = { env = \"VAR\" }, { file = \"/path\" } or { credential = \"name\" }";

/// Deserialised by hand so that a secret written inline (`secret = "..."`)
/// is refused with a message that does not repeat the value.
impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

fn inline<E: de::Error>() -> E {
    E::custom(format!(
        "inline secrets are not allowed; write {SECRET_SHAPE}"
    ))
}

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SECRET_SHAPE)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretSource, E> {
        Err(inline())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<SecretSource, E> {
        Err(inline())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretSource, E> {
        Err(inline())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretSource, E> {
        Err(inline())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretSource, E> {
        Err(inline())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<SecretSource, A::Error> {
        Err(inline())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        let mut found: Option<SecretSource> = None;
        while let Some(key) = map.next_key::<String>()? {
            let value: String = map.next_value().map_err(|_: A::Error| {
                de::Error::custom(format!(
                    "secret.{key} must be a string; write {SECRET_SHAPE}"
                ))
            })?;
            let source = match key.as_str() {
                "env" => SecretSource::Env(value),
                "file" => SecretSource::File(PathBuf::from(value)),
                "credential" => SecretSource::Credential(value),
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown secret source `{other}`; write {SECRET_SHAPE}"
                    )))
                }
            };
            if found.is_some() {
                return Err(de::Error::custom(format!(
                    "secret names more than one source; write exactly one of {SECRET_SHAPE}"
                )));
            }
            found = Some(source);
        }
        found.ok_or_else(|| de::Error::custom(format!("secret is empty; write {SECRET_SHAPE}")))
    }
}

/// One entry of `secrets = [...]`: a secret source plus the key's id and
/// validity window, e.g. `{ env = "OLD", id = "old", not_after = "2027-01-31T00:00:00Z" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    pub source: SecretSource,
    pub id: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
}

const KEY_SHAPE: &str =
    "{ env = \"VAR\" } (or file/credential), optionally with id, not_before, not_after";

impl KeySource {
    /// The key id: the one given, else the source's name (the env var,
    /// credential or file name; never the secret).
    pub fn key_id(&self) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        match &self.source {
            SecretSource::Env(n) | SecretSource::Credential(n) => n.clone(),
            SecretSource::File(p) => p.file_name().map_or_else(
                || p.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            ),
        }
    }
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = KeySource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(KEY_SHAPE)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<KeySource, E> {
        Err(inline())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<KeySource, E> {
        Err(inline())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<KeySource, E> {
        Err(inline())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<KeySource, E> {
        Err(inline())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<KeySource, E> {
        Err(inline())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<KeySource, A::Error> {
        Err(inline())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeySource, A::Error> {
        let mut source: Option<SecretSource> = None;
        let (mut id, mut not_before, mut not_after) = (None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            let value: String = map.next_value().map_err(|_: A::Error| {
                de::Error::custom(format!(
                    "secrets: {key} must be a string; write {KEY_SHAPE}"
                ))
            })?;
            let found = match key.as_str() {
                "env" => SecretSource::Env(value),
                "file" => SecretSource::File(PathBuf::from(value)),
                "credential" => SecretSource::Credential(value),
                "id" => {
                    id = Some(value);
                    continue;
                }
                "not_before" => {
                    not_before = Some(value);
                    continue;
                }
                "not_after" => {
                    not_after = Some(value);
                    continue;
                }
                other => {
                    return Err(de::Error::custom(format!(
                        "secrets: unknown key `{other}`; write {KEY_SHAPE}"
                    )))
                }
            };
            if source.replace(found).is_some() {
                return Err(de::Error::custom(format!(
                    "secrets: an entry names more than one source; write {KEY_SHAPE}"
                )));
            }
        }
        let source = source.ok_or_else(|| {
            de::Error::custom(format!(
                "secrets: an entry has no env, file or credential; write {KEY_SHAPE}"
            ))
        })?;
        Ok(KeySource {
            source,
            id,
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Deserialize)]
    struct Holder {
        secret: SecretSource,
    }

    fn parse(text: &str) -> Result<SecretSource, String> {
        toml::from_str::<Holder>(text)
            .map(|h| h.secret)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            parse(r#"secret = { env = "A" }"#),
            Ok(SecretSource::Env("A".into()))
        );
        assert_eq!(
            parse(r#"secret = { file = "/x" }"#),
            Ok(SecretSource::File("/x".into()))
        );
        assert_eq!(
            parse(r#"secret = { credential = "c" }"#),
            Ok(SecretSource::Credential("c".into()))
        );
    }

    #[test]
    fn inline_secret_is_refused_without_echo() {
        let err = parse(r#"secret = "hunter2-canary""#).unwrap_err();
        assert!(err.contains("inline secrets are not allowed"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse(r#"secret = { inline = "hunter2-canary" }"#).unwrap_err();
        assert!(err.contains("unknown secret source `inline`"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse(r#"secret = { env = "A", file = "/b" }"#).unwrap_err();
        assert!(err.contains("more than one source"), "{err}");
    }

    #[test]
    fn key_sources_parse_without_echo() {
        #[derive(Deserialize)]
        struct Keys {
            secrets: Vec<KeySource>,
        }
        let k: Keys = toml::from_str(
            r#"secrets = [{ env = "NEW" }, { file = "/run/old", id = "old", not_after = "2027-01-31T00:00:00Z" }]"#,
        )
        .unwrap();
        assert_eq!(k.secrets[0].key_id(), "NEW");
        assert_eq!(k.secrets[1].key_id(), "old");
        assert_eq!(
            k.secrets[1].not_after.as_deref(),
            Some("2027-01-31T00:00:00Z")
        );
        let err = toml::from_str::<Keys>(r#"secrets = ["hunter2-canary"]"#)
            .err()
            .unwrap()
            .message()
            .to_string();
        assert!(
            err.contains("inline secrets are not allowed") && !err.contains("hunter2"),
            "{err}"
        );
        let err = toml::from_str::<Keys>(r#"secrets = [{ id = "x" }]"#)
            .err()
            .unwrap()
            .message()
            .to_string();
        assert!(err.contains("no env, file or credential"), "{err}");
    }

    #[test]
    fn env_and_file_loading() {
        let env: HashMap<String, String> = [("S".to_string(), "s3cret".to_string())].into();
        let s = SecretSource::Env("S".into()).load(&env).unwrap();
        assert_eq!(s.as_bytes(), b"s3cret");
        assert_eq!(format!("{s:?}"), "Secret(..)");
        let err = SecretSource::Env("NOPE".into()).load(&env).unwrap_err();
        assert!(err.to_string().contains("NOPE is not set"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "from-file\n").unwrap();
        let s = SecretSource::File(path.clone()).load(&env).unwrap();
        assert_eq!(s.as_bytes(), b"from-file");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            SecretSource::File(path).load(&env),
            Err(SecretError::FileEmpty(_))
        ));

        std::fs::write(dir.path().join("cred"), "c-value").unwrap();
        let env: HashMap<String, String> = [(
            "CREDENTIALS_DIRECTORY".to_string(),
            dir.path().display().to_string(),
        )]
        .into();
        let s = SecretSource::Credential("cred".into()).load(&env).unwrap();
        assert_eq!(s.as_bytes(), b"c-value");
        assert!(matches!(
            SecretSource::Credential("../cred".into()).load(&env),
            Err(SecretError::BadCredentialName(_))
        ));
    }
}
