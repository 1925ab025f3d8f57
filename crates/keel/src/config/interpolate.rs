//! `${VAR}` and `${VAR:-default}` in YAML string values.

/// Replaces `${VAR}` and `${VAR:-default}` in `input`; `$${` writes a literal `${`.
///
/// `:-` takes the default when the variable is unset **or empty**, as in the shell. Returns
/// `Ok(None)` when the input has nothing to interpolate, so callers know the value is literal.
pub(crate) fn interpolate(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    if !input.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            // `$${` is an escaped literal `${`.
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated `${{` in `{input}`"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if !is_var_name(name) {
            return Err(format!("`${{{expr}}}` does not name a variable"));
        }
        match (lookup(name).filter(|v| !(default.is_some() && v.is_empty())), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!("`${{{name}}}` is not set (write `${{{name}:-default}}` for a default)"));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("9000".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn forms() {
        assert_eq!(interpolate("plain", &env), Ok(None));
        assert_eq!(interpolate("${PORT}", &env), Ok(Some("9000".into())));
        assert_eq!(interpolate("a-${PORT}-b", &env), Ok(Some("a-9000-b".into())));
        assert_eq!(interpolate("${NOPE:-8080}", &env), Ok(Some("8080".into())));
        assert_eq!(interpolate("${EMPTY:-x}", &env), Ok(Some("x".into())));
        assert_eq!(interpolate("${EMPTY}", &env), Ok(Some(String::new())));
        assert_eq!(interpolate("${NOPE:-}", &env), Ok(Some(String::new())));
        assert_eq!(interpolate("$${PORT}", &env), Ok(Some("${PORT}".into())));
        assert!(interpolate("${NOPE}", &env).unwrap_err().contains("NOPE"));
        assert!(interpolate("${PORT", &env).unwrap_err().contains("unterminated"));
        assert!(interpolate("${1X}", &env).is_err());
    }
}
