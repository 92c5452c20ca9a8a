//! Push tokens: read from their files at start-up, presented as a netrc password (HTTP Basic, what Nix
//! sends) or a Bearer token, compared in constant time, and each bound to a scope — which store-path
//! names it may publish, how many bytes it may hold, and whether the appliance signs for it.

use crate::server::constant_time_eq;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::config::PushTokenConfig;

/// The shortest secret accepted: a token is a password on the LAN, not a PIN.
pub const MIN_SECRET_LEN: usize = 16;

/// A configured token with its secret (kept only as a sha256, so comparisons take the same time
/// whatever the secret's length).
pub struct Token {
    /// Its name (metrics label; the source `push:<name>`).
    pub name: String,
    secret_sha: [u8; 32],
    /// Store-path name patterns it may publish.
    pub paths: Vec<String>,
    /// Most bytes of NAR files it may hold.
    pub quota: Option<u64>,
    /// Whether the appliance signs its uploads that carry no trusted signature.
    pub sign: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Token {
    /// Reads the token's secret from its file. Errors name what is wrong, never the content.
    pub fn load(config: &PushTokenConfig) -> Result<Token, String> {
        let secret = read_secret(&config.token_file)?;
        Ok(Token::new(config, &secret))
    }

    /// A token with this secret.
    pub fn new(config: &PushTokenConfig, secret: &str) -> Token {
        Token {
            name: config.name.clone(),
            secret_sha: Sha256::digest(secret.as_bytes()).into(),
            paths: config.paths.clone(),
            quota: config.quota,
            sign: config.sign,
        }
    }

    /// The source name its paths are recorded under.
    pub fn source(&self) -> String {
        source_of(&self.name)
    }

    /// Whether it may publish a store path with this name part.
    pub fn allows(&self, name: &str) -> bool {
        self.paths.iter().any(|p| glob(p, name))
    }

    /// Whether this token's secret has the same sha256 (used at start to refuse duplicates).
    pub fn same_secret(&self, other: &Token) -> bool {
        constant_time_eq(&self.secret_sha, &other.secret_sha)
    }
}

/// `push:<name>`: the source a token's paths are recorded under.
pub fn source_of(name: &str) -> String {
    format!("push:{name}")
}

fn read_secret(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "push token file is readable by group or others; chmod 600 it"
        );
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let secret = text.trim();
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the token must be at least {MIN_SECRET_LEN} characters (try `head -c 32 /dev/urandom | base64`)"
        ));
    }
    if secret.contains(char::is_whitespace) {
        return Err("the token must be one word (netrc passwords cannot hold spaces)".into());
    }
    Ok(secret.to_string())
}

/// What a request presented in its Authorization header.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented {
    /// No Authorization header, or a scheme other than Basic and Bearer.
    Nothing,
    /// A secret (the Basic password, whatever the login, or the Bearer token).
    Secret(String),
}

/// Reads the secret of an `Authorization: Basic …` (netrc: `login NAME password TOKEN`) or
/// `Authorization: Bearer TOKEN` header.
pub fn presented(header: Option<&str>) -> Presented {
    let Some(value) = header.map(str::trim) else {
        return Presented::Nothing;
    };
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Presented::Secret(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((_login, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return Presented::Secret(password.to_string());
        }
        // Malformed Basic credentials still count as credentials: a wrong token, not a missing one.
        return Presented::Secret(String::new());
    }
    Presented::Nothing
}

/// The token whose secret is `secret`. Every token is compared, in constant time, whatever matches.
pub fn find<'a>(tokens: &'a [Token], secret: &str) -> Option<&'a Token> {
    let sha: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        if constant_time_eq(&t.secret_sha, &sha) && found.is_none() {
            found = Some(t);
        }
    }
    found
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (also none) and every
/// other character matches itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Classic two-pointer matching with backtracking to the last star: linear in practice.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, paths: &[&str]) -> Token {
        let config = PushTokenConfig {
            name: name.into(),
            token_file: "/unused".into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            quota: None,
            sign: false,
        };
        Token::new(&config, secret)
    }

    #[test]
    fn globs_match_the_name_part() {
        for (p, n, want) in [
            ("*", "hello-2.12", true),
            ("hello-*", "hello-2.12", true),
            ("hello-*", "hello", false),
            ("*-doc", "hello-2.12-doc", true),
            ("*-doc", "hello-2.12-man", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("?x", "?x", true),
            ("?x", "ax", false),
        ] {
            assert_eq!(glob(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn basic_and_bearer_credentials_are_read() {
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let secret = |s: &str| Presented::Secret(s.to_string());
        assert_eq!(presented(None), Presented::Nothing);
        assert_eq!(presented(Some("Digest abc")), Presented::Nothing);
        assert_eq!(presented(Some(&basic("builder:s3cret"))), secret("s3cret"));
        assert_eq!(presented(Some(&basic("x:a:b"))), secret("a:b"));
        assert_eq!(presented(Some("Bearer tok")), secret("tok"));
        assert_eq!(presented(Some("Basic !!!")), secret(""));
    }

    #[test]
    fn tokens_are_found_by_secret_only() {
        let tokens = [
            token("a", "aaaaaaaaaaaaaaaaaaaa", &["*"]),
            token("b", "bbbbbbbbbbbbbbbbbbbb", &["b-*"]),
        ];
        assert_eq!(find(&tokens, "bbbbbbbbbbbbbbbbbbbb").unwrap().name, "b");
        assert!(find(&tokens, "bbbbbbbbbbbbbbbbbbb").is_none());
        assert!(find(&tokens, "").is_none());
        assert!(tokens[1].allows("b-tool") && !tokens[1].allows("a-tool"));
        assert!(!tokens[0].same_secret(&tokens[1]));
        assert!(format!("{:?}", tokens[0]).contains("<redacted>"));
    }
}
