//! The status page's section for issue 16: transcoding to zstd, warm jobs and pins. Pin names and job
//! errors are chosen by others: everything goes through [`Esc`].

use super::html::{Esc, put, utc};
use super::{Status, figure};
use crate::metrics::human_bytes;

/// The section.
pub(super) fn section(out: &mut String, status: &Status) {
    let lan = &status.lan;
    let t = &lan.transcode;
    out.push_str("<section><h2>Transcoding, warm and pins</h2>");
    if t.enabled {
        let saved = t.totals.input_bytes as f64 - t.totals.output_bytes as f64;
        put(
            out,
            format_args!(
                "<p>xz and bzip2 NARs are transcoded to zstd (level {}) for fast decompression on the \
                 clients: {} since the start ({} → {}{}, {:.1} CPU s), {} waiting.</p>",
                t.level.unwrap_or(0),
                figure(
                    "/transcode/transcoded",
                    t.totals.transcoded,
                    &t.totals.transcoded.to_string()
                ),
                figure(
                    "/transcode/input_bytes",
                    t.totals.input_bytes,
                    &human_bytes(t.totals.input_bytes)
                ),
                figure(
                    "/transcode/output_bytes",
                    t.totals.output_bytes,
                    &human_bytes(t.totals.output_bytes)
                ),
                if saved < 0.0 { " on disk" } else { "" },
                t.totals.cpu_seconds,
                figure("/transcode/queued", t.queued, &t.queued.to_string()),
            ),
        );
    } else {
        out.push_str(
            "<p class=\"dim\">Transcoding to zstd is off (<code>transcode = \"off\"</code>).</p>",
        );
    }
    put(
        out,
        format_args!(
            "<p>Warm jobs running: {}. Pinned: {} of at most {}.</p>",
            figure(
                "/warm/running",
                lan.warm.running,
                &lan.warm.running.to_string()
            ),
            figure(
                "/pins/protected_bytes",
                lan.pins.protected_bytes,
                &human_bytes(lan.pins.protected_bytes)
            ),
            // Not a figure: it moves with the index file's size between two reads.
            Esc(&human_bytes(lan.pins.limit_bytes)),
        ),
    );
    if !lan.pins.pins.is_empty() {
        out.push_str(
            "<div class=\"scroll\"><table class=\"stack\"><thead><tr><th>Pin</th><th class=\"n\">Paths</th>\
             <th class=\"n\">NARs on disk</th><th class=\"n\">Size</th><th>Set</th></tr></thead><tbody>\n",
        );
        for (i, p) in lan.pins.pins.iter().enumerate() {
            put(
                out,
                format_args!(
                    "<tr><td>{}</td><td class=\"n\" data-label=\"Paths\">{}</td>\
                     <td class=\"n\" data-label=\"NARs on disk\">{}/{}</td><td class=\"n\" data-label=\"Size\">{}</td>\
                     <td data-label=\"Set\">{} ({})</td></tr>\n",
                    Esc(&p.name),
                    p.record.paths,
                    p.nars_stored,
                    p.nars,
                    figure(
                        &format!("/pins/pins/{i}/bytes"),
                        p.bytes,
                        &human_bytes(p.bytes)
                    ),
                    Esc(&utc(p.record.set_at)),
                    Esc(&p.record.origin),
                ),
            );
        }
        out.push_str("</tbody></table></div>");
    }
    if !lan.warm.jobs.is_empty() {
        out.push_str("<ol class=\"activity\">\n");
        for j in &lan.warm.jobs {
            put(
                out,
                format_args!(
                    "<li>warm job {} {}: {}/{} NARs ({} fetched, {} failed), {}{}</li>\n",
                    j.id,
                    j.pin
                        .as_deref()
                        .map(|p| format!("(pin {})", Esc(p)))
                        .unwrap_or_default(),
                    j.nars_done,
                    j.nars,
                    j.nars_fetched,
                    j.nars_failed,
                    Esc(j.state),
                    j.error
                        .as_deref()
                        .map(|e| format!(" <span class=\"bad\">{}</span>", Esc(e)))
                        .unwrap_or_default(),
                ),
            );
        }
        out.push_str("</ol>");
    }
    out.push_str("</section>\n");
}
