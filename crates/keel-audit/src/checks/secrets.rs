//! What a secret looks like in configuration: a key named like one holding a literal value.

/// Whether a key (`DB_PASSWORD`, `apiKey`, `jwt-secret`) names a secret.
pub(crate) fn secret_name(key: &str) -> bool {
    // camelCase and kebab-case to snake_case: `secretName` → `secret_name`.
    let mut k = String::new();
    let mut previous: Option<char> = None;
    for c in key.chars() {
        if c.is_ascii_uppercase() && previous.is_some_and(|p| !p.is_ascii_uppercase() && p != '_') {
            k.push('_');
        }
        k.push(match c {
            '-' | '.' => '_',
            c => c.to_ascii_lowercase(),
        });
        previous = Some(c);
    }
    // Names that mention a secret but hold a reference to one or a setting about it.
    const NOT_VALUES: &[&str] = &[
        "_file",
        "_path",
        "_env",
        "_ref",
        "_name",
        "_id",
        "_url",
        "_uri",
        "_endpoint",
        "_ttl",
        "_lifetime",
        "_expiry",
        "_timeout",
        "_length",
        "_header",
        "_cookie",
        "_policy",
        "_type",
        "_mode",
        "_interval",
        "_issuer",
        "_audience",
        "_algorithm",
        "_hash",
        "_count",
        "_size",
        "_seconds",
        "_secs",
        "_ms",
        "_minutes",
        "_hours",
        "_days",
        "_store",
        "_source",
        "_provider",
        "_key_id",
        "_kid",
        "_expires_in",
        "_expires",
        "_expiration",
        "_limit",
        "_max",
        "_min",
        "_enabled",
        "_required",
        "_version",
        "_prefix",
        "_format",
        "_location",
        "_bytes",
        "_bits",
        "_rounds",
        "_cost",
        "_iterations",
    ];
    // Settings about secrets, not secrets: `MAX_TOKENS`, `ENABLE_API_KEY_AUTH`.
    const NOT_PREFIXES: &[&str] = &["max_", "min_", "enable_", "disable_", "use_", "require_", "allow_", "num_"];
    if NOT_VALUES.iter().any(|s| k.ends_with(s))
        || NOT_PREFIXES.iter().any(|p| k.starts_with(p))
        || k.contains("secret_name")
        || k.contains("secret_key_ref")
    {
        return false;
    }
    const MARKERS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "access_key",
        "client_secret",
        "credentials",
    ];
    MARKERS.iter().any(|m| k.contains(m)) || k == "pwd" || k.ends_with("_pwd")
}

/// Whether a configured value is a literal secret rather than a reference to one: not empty, not
/// an interpolation (`${X}`, `$X`, `{{ .Values.x }}`), not a file or secret-manager path, not an
/// obvious placeholder.
pub(crate) fn literal_value(value: &str) -> bool {
    let v = value.trim().trim_matches(|c| c == '"' || c == '\'');
    if v.len() < 4 || v.starts_with('$') || v.contains("${") || v.contains("{{") || v.starts_with('<') {
        return false;
    }
    if v.starts_with('/')
        || v.starts_with("file:")
        || v.starts_with("vault:")
        || v.starts_with("arn:")
        || v.starts_with("secretref:")
    {
        return false;
    }
    let lower = v.to_ascii_lowercase();
    // Durations (`900s`, `15m`, `2.5h`) are settings, not secrets.
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = lower.len() - digits.len();
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '.') && (1..=2).contains(&unit) {
        return false;
    }
    !matches!(
        lower.as_str(),
        "true" | "false" | "null" | "none" | "required" | "optional" | "xxxx" | "****" | "redacted"
    ) && !lower.starts_with("your_")
        && !lower.starts_with("your-")
        && !lower.starts_with("set-")
        && !lower.starts_with("change_me_in")
}

/// Whether `key: value` in a configuration file is a secret: a secret's name, a literal value,
/// and not a label (`"resetToken": "Reset token"`, a capitalised phrase). Not for `.env` files
/// or Dockerfiles, whose values are never labels.
pub(crate) fn secret_value(key: &str, value: &str) -> bool {
    let v = value.trim().trim_matches(|c| c == '"' || c == '\'');
    let label = v.contains(' ') && v.chars().next().is_some_and(char::is_uppercase);
    secret_name(key) && literal_value(value) && !label
}

/// `abcd…` for evidence: enough to find the value, not enough to leak it into a report.
pub(crate) fn masked(value: &str) -> String {
    let v = value.trim().trim_matches(|c| c == '"' || c == '\'');
    let head: String = v.chars().take(3).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_and_literals() {
        for k in [
            "DB_PASSWORD",
            "REDIS_PASSWORD",
            "jwtSecret",
            "RAZORPAY_KEY_SECRET",
            "api-key",
            "GITHUB_TOKEN",
            "apiKey",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(secret_name(k), "{k}");
        }
        for k in [
            "DB_PASSWORD_FILE",
            "PASSWORD_PATH",
            "TOKEN_TTL_ENV",
            "HOST",
            "cache_key",
            "secret_name",
            "secretName",
            "signing_key",
            "AWS_ACCESS_KEY_ID",
            "access_token_ttl",
            "secretKeyRef",
        ] {
            assert!(!secret_name(k), "{k}");
        }
        for v in ["hunter22", "rzp_test_abc123", "'s3cr3t!'", "123456"] {
            assert!(literal_value(v), "{v}");
        }
        for v in [
            "",
            "${DB_PASSWORD}",
            "$REDIS_PASSWORD",
            "{{ .Values.pw }}",
            "/run/secrets/db",
            "<set me>",
            "true",
            "abc",
            "900s",
            "2.5h",
        ] {
            assert!(!literal_value(v), "{v}");
        }
        assert_eq!(masked("\"hunter22\""), "hun…");
        for k in ["MAX_TOKENS", "REFRESH_TOKEN_EXPIRES_IN", "ENABLE_API_KEY_AUTH", "token_limit"] {
            assert!(!secret_name(k), "{k}");
        }
        assert!(secret_value("MYSQL_ROOT_PASSWORD", "123456"));
        assert!(secret_value("password", "password"), "a weak default credential");
        assert!(!secret_value("resetToken", "Reset token"));
        assert!(secret_value("db_password", "correct horse battery staple"));
    }
}
