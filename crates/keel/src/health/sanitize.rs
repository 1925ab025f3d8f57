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

fn mask_pairs(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let hit = SECRET_KEYS.iter().find_map(|k| {
            let after = i + k.len();
            (lower[i..].starts_with(k)
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
                && matches!(bytes.get(after), Some(b'=') | Some(b':')))
            .then_some(after + 1)
        });
        match hit {
            Some(value_start) => {
                let mut j = value_start;
                while j < text.len() && bytes[j] == b' ' {
                    j += 1;
                }
                let end = text[j..]
                    .find(|c: char| c.is_whitespace() || c == '&' || c == ',' || c == ';')
                    .map_or(text.len(), |e| j + e);
                out.push_str(&text[i..j]);
                out.push_str("***");
                i = end;
            }
            None => {
                let ch = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&text[i..i + ch]);
                i += ch;
            }
        }
    }
    out
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
        assert!(sanitize(&"é".repeat(400)).ends_with('…'));
    }
}
