//! The settings of LAN pushes (issue 12): who may publish with `nix copy --to`, what they may publish,
//! which signatures make an upload acceptable, and the room pushes get. The tokens themselves are read
//! from their files at start-up (`push.rs`), never from the configuration or the command line.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, SizeValue, check_keys, invalid, parse_size};

/// NAR uploads that may wait for their narinfo at once, unless told otherwise.
pub const DEFAULT_PUSH_PENDING_MAX: usize = 64;
/// Seconds an uploaded NAR waits for its narinfo before it is dropped, unless told otherwise.
pub const DEFAULT_PUSH_PENDING_TIMEOUT_SECS: u64 = 600;
/// `push_max_size` unless told otherwise: this fraction of `max_size` (a quarter).
pub const DEFAULT_PUSH_MAX_SIZE_DIVISOR: u64 = 4;

/// One `push_tokens` element as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTokenTable {
    /// The token's name: metrics label, `/_status`, and the source `push:<name>` its paths are recorded under.
    pub name: String,
    /// File holding the secret (a netrc password or a Bearer token).
    pub token_file: PathBuf,
    /// Store-path names (the part after `<hash>-`) it may publish: `*` matches any run of characters.
    pub paths: Option<Vec<String>>,
    /// Most bytes of NAR files it may have stored at once.
    pub quota: Option<SizeValue>,
    /// Uploads without a signature by a `push_trusted_keys` key are signed by the appliance instead.
    #[serde(default)]
    pub sign: bool,
}

/// A resolved push token (its secret is read at start-up from `token_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTokenConfig {
    /// Name (`[A-Za-z0-9._-]`, at most 64 characters).
    pub name: String,
    /// File holding the secret.
    pub token_file: PathBuf,
    /// Name patterns it may publish (`*` is the only wildcard).
    pub paths: Vec<String>,
    /// Most bytes of NAR files it may have stored at once; `None`: only `push_max_size` limits it.
    pub quota: Option<u64>,
    /// Whether the appliance signs its uploads that carry no trusted signature.
    pub sign: bool,
}

/// Everything about pushes, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The tokens; none means `PUT` is refused (401/403) for everyone.
    pub tokens: Vec<PushTokenConfig>,
    /// Keys whose signature makes a pushed narinfo acceptable (checked to parse).
    pub trusted_keys: Vec<String>,
    /// Most bytes of pushed NAR files held at once (stored and waiting for their narinfo).
    pub max_size: u64,
    /// Pushed NARs are evicted least-recently-used like fetched ones, instead of being kept.
    pub lru: bool,
    /// NAR uploads waiting for their narinfo at once.
    pub pending_max: usize,
    /// How long an uploaded NAR waits for its narinfo.
    pub pending_timeout: Duration,
}

/// The keys of the file that belong to pushes.
pub struct PushKeys<'a> {
    /// `push_tokens`.
    pub tokens: &'a Option<Vec<PushTokenTable>>,
    /// `push_trusted_keys`.
    pub trusted_keys: &'a Option<Vec<String>>,
    /// `push_max_size`.
    pub max_size: &'a Option<SizeValue>,
    /// `push_lru`.
    pub lru: Option<bool>,
    /// `push_pending_max`.
    pub pending_max: Option<usize>,
    /// `push_pending_timeout`.
    pub pending_timeout: Option<u64>,
}

/// Resolves the push settings. `max_size` is the store's cap; `signs` whether a signing key is set.
pub fn resolve_push(
    keys: PushKeys<'_>,
    in_file: &dyn Fn(&str) -> String,
    max_size: u64,
    signs: bool,
) -> Result<PushConfig, ConfigError> {
    let origin = in_file("push_tokens");
    let mut tokens: Vec<PushTokenConfig> = Vec::new();
    for t in keys.tokens.iter().flatten() {
        let token = resolve_token(t, &origin, signs)?;
        if tokens.iter().any(|o| o.name == token.name) {
            let message = format!("token name {:?} is used twice", token.name);
            return Err(invalid(&origin, message));
        }
        tokens.push(token);
    }
    let trusted_keys = check_keys(
        keys.trusted_keys
            .iter()
            .flatten()
            .map(|k| (in_file("push_trusted_keys"), k.clone()))
            .collect(),
    )?;
    let push_max = match keys.max_size {
        Some(SizeValue::Bytes(n)) => *n,
        Some(SizeValue::Text(t)) => {
            parse_size(t).map_err(|m| invalid(&in_file("push_max_size"), m))?
        }
        None => max_size / DEFAULT_PUSH_MAX_SIZE_DIVISOR,
    };
    if push_max > max_size {
        let message = format!("{push_max} bytes is more than max_size ({max_size} bytes)");
        return Err(invalid(&in_file("push_max_size"), message));
    }
    let pending_max = match keys.pending_max {
        Some(0) => {
            let message = "must be at least 1".to_string();
            return Err(invalid(&in_file("push_pending_max"), message));
        }
        Some(n) => n,
        None => DEFAULT_PUSH_PENDING_MAX,
    };
    let pending_timeout = match keys.pending_timeout {
        Some(0) => {
            let message = "must be at least 1 second".to_string();
            return Err(invalid(&in_file("push_pending_timeout"), message));
        }
        Some(n) => Duration::from_secs(n),
        None => Duration::from_secs(DEFAULT_PUSH_PENDING_TIMEOUT_SECS),
    };
    Ok(PushConfig {
        tokens,
        trusted_keys,
        max_size: push_max,
        lru: keys.lru.unwrap_or(false),
        pending_max,
        pending_timeout,
    })
}

fn resolve_token(
    t: &PushTokenTable,
    origin: &str,
    signs: bool,
) -> Result<PushTokenConfig, ConfigError> {
    let name = t.name.trim().to_string();
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        let message = format!("token name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ -");
        return Err(invalid(origin, message));
    }
    let at = |what: &str| format!("{origin}, token {name}: {what}");
    let paths = t.paths.clone().unwrap_or_else(|| vec!["*".to_string()]);
    for p in &paths {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=*".contains(&b));
        if !ok {
            let message = format!("{p:?} is not a store-path name pattern (name characters and *)");
            return Err(invalid(&at("paths"), message));
        }
    }
    let quota = match &t.quota {
        None => None,
        Some(SizeValue::Bytes(n)) => Some(*n),
        Some(SizeValue::Text(s)) => Some(parse_size(s).map_err(|m| invalid(&at("quota"), m))?),
    };
    if t.sign && !signs {
        let message = "sign = true needs signing_key_file (the appliance signs with it)".into();
        return Err(invalid(&at("sign"), message));
    }
    Ok(PushTokenConfig {
        name,
        token_file: t.token_file.clone(),
        paths,
        quota,
        sign: t.sign,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Overrides};

    fn resolve_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nixcache.toml");
        std::fs::write(&path, text).unwrap();
        let args = Overrides {
            config: Some(path),
            ..Default::default()
        };
        Config::resolve(&args, &|_| None)
    }

    #[test]
    fn tokens_need_names_files_and_a_key_to_sign_with() {
        let ok = resolve_text(
            "signing_key_file = \"/k\"\npush_tokens = [{ name = \"ci\", token_file = \"/t\", \
             paths = [\"hello-*\"], quota = \"1GiB\", sign = true }, { name = \"lab.2\", token_file = \"/u\" }]\n",
        )
        .unwrap();
        let p = &ok.push;
        assert_eq!(p.tokens[0].paths, ["hello-*"]);
        assert_eq!(p.tokens[0].quota, Some(1 << 30));
        assert!(p.tokens[0].sign && !p.tokens[1].sign);
        assert_eq!(p.tokens[1].paths, ["*"]);
        assert_eq!(p.max_size, ok.max_size / 4);
        assert_eq!((p.pending_max, p.pending_timeout.as_secs()), (64, 600));
        assert!(!p.lru);
        for (bad, says) in [
            (
                "push_tokens = [{ name = \"a b\", token_file = \"/t\" }]",
                "token name",
            ),
            (
                "push_tokens = [{ name = \"a\", token_file = \"/t\" }, { name = \"a\", token_file = \"/u\" }]",
                "twice",
            ),
            (
                "push_tokens = [{ name = \"a\", token_file = \"/t\", sign = true }]",
                "signing_key_file",
            ),
            (
                "push_tokens = [{ name = \"a\", token_file = \"/t\", paths = [\"../x\"] }]",
                "pattern",
            ),
            ("push_tokens = [{ name = \"a\" }]", "token_file"),
            ("push_trusted_keys = [\"nope\"]", "public key"),
            (
                "max_size = \"1GiB\"\npush_max_size = \"2GiB\"",
                "more than max_size",
            ),
            ("push_pending_max = 0", "at least 1"),
        ] {
            let err = resolve_text(&format!("{bad}\n")).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
