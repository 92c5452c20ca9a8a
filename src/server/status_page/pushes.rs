//! The status page's "LAN pushes" section (issue 12): per token, what it may publish and what it did.
//! Token names and patterns come from the configuration; everything goes through [`Esc`] anyway.

use super::html::{Esc, put};
use super::{Status, figure};
use crate::metrics::human_bytes;

/// The section, when push tokens are configured.
pub fn section(out: &mut String, status: &Status) {
    let Some(p) = &status.pushes else {
        return;
    };
    put(
        out,
        format_args!(
            "<section><h2>LAN pushes</h2><p>Builders publish here with <code>nix copy --to</code> and a \
             token. Pushed: {} of {}{}. Waiting for their narinfo: {}. Refused without a valid token: {}.</p>\n",
            figure(
                "/pushes/stored_bytes",
                p.stored_bytes,
                &human_bytes(p.stored_bytes)
            ),
            Esc(&human_bytes(p.max_bytes)),
            if p.lru {
                " (evicted like fetched NARs)"
            } else {
                " (kept from eviction)"
            },
            figure("/pushes/pending", p.pending, &p.pending.to_string()),
            figure(
                "/pushes/refused_without_token",
                p.refused_without_token,
                &p.refused_without_token.to_string()
            ),
        ),
    );
    out.push_str(
        "<div class=\"scroll\"><table class=\"stack\"><thead><tr><th>Token</th><th>May publish</th>\
         <th class=\"n\">Stored</th><th class=\"n\">Accepted</th><th class=\"n\">Refused</th></tr></thead><tbody>\n",
    );
    for (i, t) in p.tokens.iter().enumerate() {
        let quota = t
            .quota
            .map(|q| format!(" (quota {})", human_bytes(q)))
            .unwrap_or_default();
        let signs = if t.sign { "; signed here" } else { "" };
        put(
            out,
            format_args!(
                "<tr><td>{}</td><td data-label=\"May publish\"><code>{}</code>{}{}</td>\
                 <td class=\"n\" data-label=\"Stored\">{} paths, {}</td>\
                 <td class=\"n\" data-label=\"Accepted\">{}</td><td class=\"n\" data-label=\"Refused\">{}</td></tr>\n",
                Esc(&t.name),
                Esc(&t.paths.join(" ")),
                Esc(&quota),
                signs,
                figure(
                    &format!("/pushes/tokens/{i}/stored_paths"),
                    t.stored_paths,
                    &t.stored_paths.to_string()
                ),
                Esc(&human_bytes(t.stored_bytes)),
                figure(
                    &format!("/pushes/tokens/{i}/accepted"),
                    t.accepted,
                    &t.accepted.to_string()
                ),
                figure(
                    &format!("/pushes/tokens/{i}/refused"),
                    t.refused,
                    &t.refused.to_string()
                ),
            ),
        );
    }
    out.push_str("</tbody></table></div></section>\n");
}
