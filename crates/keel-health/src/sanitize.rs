//! Error texts as a probe body or a log line may show them: credentials scrubbed, length capped.

const MAX_LEN: usize = 300;

/// [`scrub`](keel_telemetry::mask::scrub)s credentials out of `text` (URL passwords,
/// `password=…`-style values, `Bearer`/`Basic` credentials) and caps it at 300 bytes (then `…`),
/// so that a dependency's error message can be shown in `/health/ready` and logged.
///
/// ```
/// assert_eq!(
///     keel_health::sanitize("connect postgres://app:hunter2@db:5432/x failed"),
///     "connect postgres://app:***@db:5432/x failed"
/// );
/// assert_eq!(keel_health::sanitize("auth failed: password=hunter2 user=a"), "auth failed: password=*** user=a");
/// ```
pub fn sanitize(text: &str) -> String {
    let mut out = keel_telemetry::mask::scrub(text).into_owned();
    if out.len() > MAX_LEN {
        let mut cut = MAX_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn scrubs_and_caps() {
        assert_eq!(sanitize("redis://:pw@r:6379"), "redis://:***@r:6379");
        assert_eq!(sanitize("Authorization: Bearer eyJhbGciOi.x.y rest"), "Authorization: Bearer *** rest");
        let long = sanitize(&format!("password=hunter2 {}", "é".repeat(400)));
        assert!(long.starts_with("password=*** ") && long.ends_with('…') && long.len() <= 300 + '…'.len_utf8());
    }
}
