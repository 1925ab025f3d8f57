//! The pretty (development) format: `tracing-subscriber`'s own, with Keel's masking.

use std::fmt;

use tracing::field::Field;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use crate::mask::Masker;

/// Field formatting for the pretty format, with the same masking as the JSON lines.
pub(crate) fn fields(masker: Masker) -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(move |w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
        let text = format!("{value:?}");
        if field.name() == "message" {
            return write!(w, "{}", crate::mask::scrub(&text));
        }
        write!(w, "{}={}", field.name(), masker.field(field.name(), &text))
    })
    .delimited(" ")
}

/// Whether the pretty format writes colour (ANSI escapes): only to a terminal, so a log
/// redirected to a file or a pipe stays plain text, and never while `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
pub(crate) fn colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::test_writer::Buffer;

    fn write(masker: Masker, ansi: bool, f: impl FnOnce()) -> String {
        let out = Buffer::default();
        let w = out.clone();
        let layer =
            tracing_subscriber::fmt::layer().fmt_fields(fields(masker)).with_ansi(ansi).with_writer(move || w.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn pretty_lines_are_masked() {
        let out = write(Masker::new(["national_id"]), false, || {
            let span = tracing::info_span!("request", authorization = "Bearer span.secret.token");
            let _g = span.enter();
            tracing::info!(
                password = "hunter2-hunter2",
                email = "alice@example.com",
                national_id = "AB-123-456",
                user_id = 7,
                "login from postgres://app:db-pass-123@db/app with Bearer msg.secret.token"
            );
        });
        for secret in ["hunter2", "alice@example", "AB-123", "secret.token", "db-pass-123"] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        assert!(out.contains("***") && out.contains("user_id=7"), "{out}");
    }

    #[test]
    fn pretty_lines_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))), "an empty NO_COLOR is unset");
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None), "a file or a pipe");
        let log = || {
            let span = tracing::info_span!("request", request_id = "r-1");
            let _g = span.enter();
            tracing::warn!(user_id = 7, "disk nearly full");
        };
        let redirected = write(Masker::default(), colour(false, None), log);
        assert!(redirected.contains("disk nearly full") && redirected.contains("user_id=7"), "{redirected}");
        assert!(!redirected.contains('\x1b'), "escape codes in a redirected log: {redirected:?}");
        let terminal = write(Masker::default(), colour(true, None), log);
        assert!(terminal.contains('\x1b'), "a terminal gets colour: {terminal:?}");
    }
}
