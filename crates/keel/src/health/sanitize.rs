//! Scrubs credentials out of error texts before they reach a probe body or a log line.

const SECRET_KEYS: &[&str] = &["password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "access_key"];
const MAX_LEN: usize = 300;

/// Masks URL passwords (`postgres://u:***@host`) and `password=…`-style values, and caps length.
///
/// ```
/// assert_eq!(
///     keel::health::sanitize("connect postgres://app:hunter2@db:5432/x failed"),
///     "connect postgres://app:***@db:5432/x failed"
/// );
/// assert_eq!(keel::health::sanitize("auth failed: password=hunter2 user=a"), "auth failed: password=*** user=a");
/// ```
pub fn sanitize(text: &str) -> String {
    let mut out = mask_userinfo(text);
    out = mask_pairs(&out);
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

fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest.find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'').unwrap_or(rest.len());
        let authority = &rest[..end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            out.push_str(&authority[at..]);
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// Masks the value after a secret-looking key in the forms `key=v`, `key = v`, `key: v`,
/// `"key":"v"` and `'key': 'v'`, and the credentials after `Bearer ` / `Basic `.
fn mask_pairs(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if let Some(value_start) = secret_value_start(&lower, bytes, i) {
            let (value_end, quoted) = value_end(bytes, value_start);
            out.push_str(&text[i..value_start + usize::from(quoted)]);
            out.push_str("***");
            i = value_end;
            if quoted && i < text.len() {
                // keep the closing quote
                out.push(bytes[i] as char);
                i += 1;
            }
            continue;
        }
        let ch = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + ch]);
        i += ch;
    }
    out
}

/// If a secret key (or an auth scheme) starts at `i`, where its value starts.
fn secret_value_start(lower: &str, bytes: &[u8], i: usize) -> Option<usize> {
    let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
    if !boundary {
        return None;
    }
    for scheme in ["bearer ", "basic "] {
        if lower[i..].starts_with(scheme) {
            let mut j = i + scheme.len();
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
            return (j < bytes.len() && !bytes[j].is_ascii_whitespace()).then_some(j);
        }
    }
    let key = SECRET_KEYS.iter().find(|k| lower[i..].starts_with(**k))?;
    let mut j = i + key.len();
    if j < bytes.len() && (bytes[j] == b'"' || bytes[j] == b'\'') {
        j += 1;
    }
    while j < bytes.len() && bytes[j] == b' ' {
        j += 1;
    }
    if j >= bytes.len() || !(bytes[j] == b'=' || bytes[j] == b':') {
        return None;
    }
    j += 1;
    while j < bytes.len() && bytes[j] == b' ' {
        j += 1;
    }
    Some(j)
}

/// Where a value starting at `start` ends, and whether it was quoted (the end is then the
/// closing quote).
fn value_end(bytes: &[u8], start: usize) -> (usize, bool) {
    if let Some(&q @ (b'"' | b'\'')) = bytes.get(start) {
        let mut j = start + 1;
        while j < bytes.len() && bytes[j] != q {
            j += if bytes[j] == b'\\' { 2 } else { 1 };
        }
        return (j.min(bytes.len()), true);
    }
    let mut j = start;
    while j < bytes.len() && !matches!(bytes[j], b' ' | b'\t' | b'\n' | b'\r' | b'&' | b',' | b';' | b'}' | b')') {
        j += 1;
    }
    (j, false)
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn masks() {
        assert_eq!(sanitize("redis://:pw@r:6379"), "redis://:***@r:6379");
        assert_eq!(sanitize("amqp://guest@mq"), "amqp://***@mq");
        assert_eq!(sanitize("http://host/path"), "http://host/path");
        assert_eq!(sanitize("token: abc def"), "token: *** def");
        assert_eq!(sanitize("?user=a&password=b&x=1"), "?user=a&password=***&x=1");
        assert_eq!(sanitize("mytoken=1"), "mytoken=1");
        assert_eq!(sanitize(r#"{"user":"a","password":"p@ss word"}"#), r#"{"user":"a","password":"***"}"#);
        assert_eq!(sanitize("password = hunter2 next"), "password = *** next");
        assert_eq!(sanitize("'token': 'abc'"), "'token': '***'");
        assert_eq!(sanitize("Authorization: Bearer eyJhbGciOi.x.y rest"), "Authorization: Bearer *** rest");
        assert_eq!(sanitize("auth basic dXNlcjpwYXNz"), "auth basic ***");
        assert_eq!(sanitize("Api_Key=XYZ"), "Api_Key=***");
        assert!(sanitize(&"é".repeat(400)).ends_with('…'));
    }
}
