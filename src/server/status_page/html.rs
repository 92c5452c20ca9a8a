//! Writing HTML safely and times for people: escaping, appending, durations and UTC dates.

use std::fmt::{self, Display, Write};

/// Text escaped for HTML (element content and quoted attribute values alike).
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Appends formatted text (writing into a String cannot fail).
pub fn put(out: &mut String, args: fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

/// `3 h 2 min`-style durations.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

pub fn ago(secs: u64) -> String {
    if secs < 2 {
        "just now".into()
    } else {
        format!("{} ago", duration(secs))
    }
}

/// `2026-11-25 14:03:07 UTC` for a unix time.
pub fn utc(unix: u64) -> String {
    // The index format's `YYYY-MM-DDTHH:MM:SSZ`, written for people.
    crate::oci::format::timestamp(unix)
        .replace('T', " ")
        .replace('Z', " UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            Esc(r#"<a href="x">'&'</a>"#).to_string(),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn dates_and_durations() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_079_387), "2025-11-25 14:03:07 UTC");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(ago(1), "just now");
    }
}
