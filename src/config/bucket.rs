//! The `[bucket]` table (issue 13): NARs and narinfos in an S3-compatible bucket shared by several
//! appliances. Without the table the appliance stores on its local disk only, as before.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Secret, SizeValue, check_keys, invalid, parse_size};

/// The region unless the table or `AWS_REGION` / `AWS_DEFAULT_REGION` name one (Garage answers to any
/// region it was configured with; SeaweedFS and MinIO accept this one).
pub const DEFAULT_BUCKET_REGION: &str = "us-east-1";
/// NARs larger than this are uploaded in parts (S3 takes at most 5 GiB in one PUT); smaller ones in
/// one conditional PUT.
pub const DEFAULT_BUCKET_MULTIPART_THRESHOLD: &str = "256MiB";

/// `[bucket]` as written in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketTable {
    /// `http(s)://host:port` of the S3 API; default `AWS_ENDPOINT_URL`, else AWS itself.
    pub endpoint: Option<String>,
    /// Region; default `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// The bucket's name (required).
    pub bucket: Option<String>,
    /// A folder inside the bucket (`team/nix`); default: the bucket's root.
    pub prefix: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) rather than virtual-hosted (`bucket.endpoint/key`).
    pub path_style: Option<bool>,
    /// File holding the access key id; default `AWS_ACCESS_KEY_ID`.
    pub access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key; default `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key_file: Option<PathBuf>,
    /// File holding a session token; default `AWS_SESSION_TOKEN` (usually none).
    pub session_token_file: Option<PathBuf>,
    /// Keep hot NARs on the local disk too (within `max_size`).
    pub local_cache: Option<bool>,
    /// Keys whose signature makes a narinfo found in the bucket acceptable, instead of the global
    /// `trusted_keys`; this appliance's own key is always added.
    pub trusted_keys: Option<Vec<String>>,
    /// Seconds one bucket request (narinfo, headers of a NAR) may take; default `upstream_timeout`.
    pub timeout: Option<u64>,
    /// NARs larger than this are uploaded in parts.
    pub multipart_threshold: Option<SizeValue>,
    /// Makes this appliance the one that prunes the bucket down to this size (set it on one only).
    pub gc_max_size: Option<SizeValue>,
}

/// Where a credential comes from. The value itself is read when the appliance opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A file (systemd `LoadCredential`), read and trimmed at start.
    File(PathBuf),
    /// An environment variable's value.
    Env(Secret),
}

/// The resolved `[bucket]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// The S3 endpoint; `None`: AWS.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Folder inside the bucket, without leading or trailing `/` (empty: the root).
    pub prefix: String,
    /// Path-style requests.
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: Credential,
    /// Secret access key.
    pub secret_access_key: Credential,
    /// Session token, if any.
    pub session_token: Option<Credential>,
    /// Whether hot NARs are kept on the local disk too.
    pub local_cache: bool,
    /// Keys trusted for narinfos found in the bucket (the appliance adds its own).
    pub trusted_keys: Vec<String>,
    /// Time limit of one bucket request.
    pub timeout: Duration,
    /// NARs larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// When set, this appliance prunes objects no appliance uses once the bucket is larger.
    pub gc_max_size: Option<u64>,
}

/// Resolves `[bucket]`: `None` when the table is absent (local disk only).
pub(super) fn resolve_bucket(
    table: Option<&BucketTable>,
    env: &dyn Fn(&str) -> Option<String>,
    in_file: &dyn Fn(&str) -> String,
    global_keys: &[String],
    upstream_timeout: Duration,
) -> Result<Option<BucketConfig>, ConfigError> {
    let Some(t) = table else {
        return Ok(None);
    };
    let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let key = |k: &str| in_file(&format!("bucket.{k}"));
    let bucket = t
        .bucket
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid(&key("bucket"), "the bucket's name is required".into()))?;
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(invalid(
            &key("bucket"),
            format!("{bucket:?} is not a bucket name"),
        ));
    }
    let endpoint = match t
        .endpoint
        .clone()
        .or_else(|| env_nonempty("AWS_ENDPOINT_URL"))
    {
        None => None,
        Some(e) => {
            let e = e.trim().trim_end_matches('/').to_string();
            let url = reqwest::Url::parse(&e)
                .map_err(|err| invalid(&key("endpoint"), format!("{e:?} is not a URL: {err}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(
                    &key("endpoint"),
                    format!("{e:?}: give http(s)://HOST[:PORT]"),
                ));
            }
            Some(e)
        }
    };
    let region = t
        .region
        .clone()
        .or_else(|| env_nonempty("AWS_REGION"))
        .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| DEFAULT_BUCKET_REGION.to_string());
    let prefix = t.prefix.as_deref().unwrap_or("").trim().trim_matches('/');
    if prefix
        .split('/')
        .any(|p| matches!(p, "." | "..") || (p.is_empty() && !prefix.is_empty()))
    {
        return Err(invalid(
            &key("prefix"),
            format!("{prefix:?} is not a folder such as team/nix"),
        ));
    }
    let credential = |file: &Option<PathBuf>, var: &str| match file {
        Some(path) => Some(Credential::File(path.clone())),
        None => env_nonempty(var).map(|v| Credential::Env(Secret(v.trim().to_string()))),
    };
    let access_key_id =
        credential(&t.access_key_id_file, "AWS_ACCESS_KEY_ID").ok_or_else(|| {
            invalid(
                &key("access_key_id_file"),
                "no access key: set access_key_id_file or AWS_ACCESS_KEY_ID".into(),
            )
        })?;
    let secret_access_key = credential(&t.secret_access_key_file, "AWS_SECRET_ACCESS_KEY")
        .ok_or_else(|| {
            invalid(
                &key("secret_access_key_file"),
                "no secret key: set secret_access_key_file or AWS_SECRET_ACCESS_KEY".into(),
            )
        })?;
    let session_token = credential(&t.session_token_file, "AWS_SESSION_TOKEN");
    let trusted_keys = match &t.trusted_keys {
        Some(keys) => check_keys(
            keys.iter()
                .map(|k| (key("trusted_keys"), k.clone()))
                .collect(),
        )?,
        None => global_keys.to_vec(),
    };
    let timeout = match t.timeout {
        Some(0) => {
            return Err(invalid(&key("timeout"), "must be at least 1 second".into()));
        }
        Some(n) => Duration::from_secs(n),
        None => upstream_timeout,
    };
    let multipart_threshold = match &t.multipart_threshold {
        Some(SizeValue::Bytes(n)) => *n,
        Some(SizeValue::Text(s)) => {
            parse_size(s).map_err(|m| invalid(&key("multipart_threshold"), m))?
        }
        None => parse_size(DEFAULT_BUCKET_MULTIPART_THRESHOLD).expect("default size parses"),
    };
    // S3 takes parts of at least 5 MiB and single PUTs of at most 5 GiB.
    if !(5 << 20..=5 << 30).contains(&multipart_threshold) {
        return Err(invalid(
            &key("multipart_threshold"),
            "must be between 5MiB and 5GiB".into(),
        ));
    }
    let gc_max_size = match &t.gc_max_size {
        None => None,
        Some(SizeValue::Bytes(n)) => Some(*n),
        Some(SizeValue::Text(s)) => {
            Some(parse_size(s).map_err(|m| invalid(&key("gc_max_size"), m))?)
        }
    };
    Ok(Some(BucketConfig {
        endpoint,
        region,
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        path_style: t.path_style.unwrap_or(true),
        access_key_id,
        secret_access_key,
        session_token,
        local_cache: t.local_cache.unwrap_or(true),
        trusted_keys,
        timeout,
        multipart_threshold,
        gc_max_size,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Overrides};
    use super::*;

    fn resolve(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nixcache.toml");
        std::fs::write(&path, text).expect("write config");
        let args = Overrides {
            config: Some(path),
            ..Default::default()
        };
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(&args, &|k| env.get(k).cloned())
    }

    #[test]
    fn no_table_means_the_local_disk_only() {
        assert_eq!(resolve("", &[]).unwrap().bucket, None);
    }

    #[test]
    fn files_beat_the_environment_and_defaults_fill_the_rest() {
        let env = [
            ("AWS_ACCESS_KEY_ID", "env-id"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_REGION", "garage"),
            ("AWS_ENDPOINT_URL", "http://s3.lan:3900/"),
        ];
        let c = resolve(
            "[bucket]\nbucket = \"nix\"\nprefix = \"/team/nix/\"\n\
             secret_access_key_file = \"/run/credentials/s\"\n",
            &env,
        )
        .unwrap()
        .bucket
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://s3.lan:3900"));
        assert_eq!(c.region, "garage");
        assert_eq!(c.prefix, "team/nix");
        assert!(c.path_style && c.local_cache);
        assert_eq!(
            c.access_key_id,
            Credential::Env(Secret("env-id".into())),
            "the variable when no file is named"
        );
        assert_eq!(
            c.secret_access_key,
            Credential::File("/run/credentials/s".into())
        );
        assert_eq!(c.session_token, None);
        assert_eq!(c.timeout, Duration::from_secs(10), "upstream_timeout");
        assert_eq!(c.multipart_threshold, 256 << 20);
        assert_eq!(c.gc_max_size, None, "no appliance prunes unless told");
        assert_eq!(
            c.trusted_keys,
            crate::config::DEFAULT_TRUSTED_KEYS,
            "the global trusted_keys"
        );
        assert!(
            !format!("{c:?}").contains("env-id"),
            "secrets are not printed"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let creds = [("AWS_ACCESS_KEY_ID", "i"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let cases = [
            ("[bucket]\n", &creds[..], "bucket.bucket"),
            ("[bucket]\nbucket = \"a/b\"\n", &creds[..], "bucket.bucket"),
            (
                "[bucket]\nbucket = \"b\"\n",
                &[][..],
                "bucket.access_key_id_file",
            ),
            (
                "[bucket]\nbucket = \"b\"\nendpoint = \"ftp://x\"\n",
                &creds[..],
                "bucket.endpoint",
            ),
            (
                "[bucket]\nbucket = \"b\"\nprefix = \"a/../b\"\n",
                &creds[..],
                "bucket.prefix",
            ),
            (
                "[bucket]\nbucket = \"b\"\nmultipart_threshold = \"1MiB\"\n",
                &creds[..],
                "bucket.multipart_threshold",
            ),
            (
                "[bucket]\nbucket = \"b\"\ntimeout = 0\n",
                &creds[..],
                "bucket.timeout",
            ),
            (
                "[bucket]\nbucket = \"b\"\ngc_max_size = \"2 apples\"\n",
                &creds[..],
                "bucket.gc_max_size",
            ),
            (
                "[bucket]\nbucket = \"b\"\ntrusted_keys = [\"nope\"]\n",
                &creds[..],
                "bucket.trusted_keys",
            ),
        ];
        for (text, env, key) in cases {
            let e = resolve(text, env).unwrap_err().to_string();
            assert!(e.contains(key), "{text:?}: {e}");
        }
        let e = resolve("[bucket]\nbucket = \"b\"\nsize = 1\n", &creds)
            .unwrap_err()
            .to_string();
        assert!(e.contains("size"), "unknown keys are refused: {e}");
    }
}
