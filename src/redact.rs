//! Text that leaves the process — logs, `/_status`, the status page, metric labels — with secrets taken
//! out and peers' words defused.
//!
//! URLs may carry credentials (`https://user:secret@host/`): what is shown is [`url`], with both parts
//! replaced. Text written by a registry or a cache (error messages, reasons) is [`untrusted`]: control
//! characters escaped, so a newline cannot forge a log line, and cut to a length fit for a log.

/// What replaces a URL's user name and password.
pub const HIDDEN: &str = "***";

/// `url` with any user name and password replaced by [`HIDDEN`]. Works on the text (the authority
/// after the first `://`), so it also covers URLs inside names such as `oci:https://...`.
pub fn url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}{HIDDEN}:{HIDDEN}@{}", &url[..start], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A reqwest error as text, without the URL it names (which may carry credentials, or a presigned
/// storage URL's signature): "error sending request for url (...)" becomes "error sending request".
pub fn reqwest_error(e: &reqwest::Error) -> String {
    let text = e.to_string();
    let text = match e.url() {
        Some(u) => text.replace(&format!(" for url ({u})"), ""),
        None => text,
    };
    // The cause (connection refused, reset, ...) says what went wrong; it names no URL.
    match std::error::Error::source(e) {
        Some(cause) => format!("{text}: {}", untrusted(&cause.to_string(), 200)),
        None => text,
    }
}

/// Text from a peer, fit for a log line or a status field: at most `max` characters, with control
/// characters (newlines included), quotes and backslashes escaped as Rust escapes them.
pub fn untrusted(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 3);
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_hidden() {
        for (raw, shown) in [
            ("https://cache.nixos.org/", "https://cache.nixos.org/"),
            (
                "https://user:s3cret@host/cache/",
                "https://***:***@host/cache/",
            ),
            ("https://t0ken@host/", "https://***:***@host/"),
            ("http://:pw@127.0.0.1:5000", "http://***:***@127.0.0.1:5000"),
            ("http://host/a@b", "http://host/a@b"),
            (
                "oci:https://u:p@ghcr.io/a/b",
                "oci:https://***:***@ghcr.io/a/b",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url(raw), shown, "{raw}");
            assert!(!url(raw).contains("s3cret") && !url(raw).contains("t0ken"));
        }
    }

    #[test]
    fn peer_text_cannot_forge_log_lines() {
        assert_eq!(untrusted("a\nb\r\x1b[31m", 100), "a\\nb\\r\\u{1b}[31m");
        assert_eq!(untrusted("long text", 4), "long…");
        assert_eq!(untrusted("δ", 4), "δ");
    }
}
