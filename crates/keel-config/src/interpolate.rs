//! `${VAR}` and `${VAR:-default}` in YAML string values.

/// The result of interpolating one value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Interpolated {
    pub(crate) value: String,
    /// Some `${VAR:-default}` fell back to its default: part of the value is written in the file.
    pub(crate) used_default: bool,
    /// The variables' values put into `value`, each as read from the environment.
    pub(crate) taken: Vec<String>,
}

/// Replaces `${VAR}` and `${VAR:-default}` in `input`; `$${` writes a literal `${`.
///
/// `:-` takes the default when the variable is unset **or empty**, as in the shell. Returns
/// `Ok(None)` when the input has nothing to interpolate, so callers know the value is literal.
/// Error messages never repeat the input: it may be a secret.
pub(crate) fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Interpolated>, String> {
    if !input.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(input.len());
    let mut used_default = false;
    let mut taken = Vec::new();
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
        let end = after.find('}').ok_or_else(|| "unterminated `${` (write `$${` for a literal)".to_owned())?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if !is_var_name(name) {
            return Err("`${…}` does not name a variable (letters, digits and _ only)".to_owned());
        }
        match (lookup(name).filter(|v| !(default.is_some() && v.is_empty())), default) {
            (Some(v), _) => {
                out.push_str(&v);
                taken.push(v);
            }
            (None, Some(d)) => {
                used_default = true;
                out.push_str(d);
            }
            (None, None) => {
                return Err(format!("`${{{name}}}` is not set (write `${{{name}:-default}}` for a default)"));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Some(Interpolated { value: out, used_default, taken }))
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

    fn value(input: &str) -> Result<Option<String>, String> {
        interpolate(input, &env).map(|o| o.map(|i| i.value))
    }

    #[test]
    fn forms() {
        assert_eq!(value("plain"), Ok(None));
        assert_eq!(value("${PORT}"), Ok(Some("9000".into())));
        assert_eq!(value("a-${PORT}-b"), Ok(Some("a-9000-b".into())));
        assert_eq!(value("${NOPE:-8080}"), Ok(Some("8080".into())));
        assert_eq!(value("${EMPTY:-x}"), Ok(Some("x".into())));
        assert_eq!(value("${EMPTY}"), Ok(Some(String::new())));
        assert_eq!(value("${NOPE:-}"), Ok(Some(String::new())));
        assert_eq!(value("$${PORT}"), Ok(Some("${PORT}".into())));
        assert!(value("${NOPE}").unwrap_err().contains("NOPE"));
        assert!(value("${PORT").unwrap_err().contains("unterminated"));
        assert!(value("${1X}").is_err());
    }

    #[test]
    fn defaults_are_flagged_and_errors_do_not_echo_the_value() {
        assert!(interpolate("${NOPE:-inline}", &env).unwrap().unwrap().used_default);
        assert!(!interpolate("${PORT:-1}", &env).unwrap().unwrap().used_default);
        let err = interpolate("s3cr3t-${oops", &env).unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    proptest::proptest! {
        /// Any text written with `$${` for each literal `${` reads back as itself.
        #[test]
        fn escaped_text_reads_back(text in "[a-z$\\{}:-]{0,40}") {
            let escaped = text.replace("${", "$${");
            let read = interpolate(&escaped, &env).unwrap().map_or(escaped.clone(), |i| i.value);
            proptest::prop_assert_eq!(read, text);
        }

        /// A variable's value is taken as it is (`${…}` in it included), never interpolated again.
        #[test]
        fn values_are_not_interpolated_again(value in "[a-z${}]{0,20}", before in "[a-z ]{0,8}") {
            let lookup = |name: &str| (name == "V").then(|| value.clone());
            let read = interpolate(&format!("{before}${{V}}"), &lookup).unwrap().unwrap();
            proptest::prop_assert_eq!(read.value, format!("{before}{value}"));
        }
    }
}
