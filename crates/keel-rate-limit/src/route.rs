//! Which requests a rule applies to: methods and path patterns.
//!
//! A pattern is a path whose segments are literal text, `*` or `{name}` (exactly one segment),
//! or, last only, `**` (any number of segments, none included): `/api/v1/events/{id}`,
//! `/api/v1/**`. Route templates can be pasted as they are.

use http::Method;

/// The methods a rule may name (others are almost certainly typos that would never match).
const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

/// A parsed path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("`{text}` is not a path pattern: {why}"));
        let Some(rest) = text.strip_prefix('/') else {
            return bad("it must start with /");
        };
        if text.contains(['?', '#']) {
            return bad("patterns match the path only, without query or fragment");
        }
        let mut segments = Vec::new();
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let segment = match *part {
                    "" => return bad("it has an empty segment (`//` or a trailing /)"),
                    "*" => Segment::One,
                    "**" if i + 1 == parts.len() => Segment::Rest,
                    "**" => return bad("`**` may only be the last segment"),
                    p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                        let name = &p[1..p.len() - 1];
                        if name.contains(['{', '}', '*']) {
                            return bad("a `{name}` segment holds a plain name");
                        }
                        Segment::One
                    }
                    p if p.contains(['{', '}', '*']) => {
                        return bad("`*`, `**` and `{name}` must be whole segments");
                    }
                    p => Segment::Literal(p.to_owned()),
                };
                segments.push(segment);
            }
        }
        Ok(Self { text: text.to_owned(), segments })
    }

    /// Whether `path` (a request's path, without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else { return false };
        let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
        let mut i = 0;
        for s in &self.segments {
            match s {
                Segment::Rest => return true,
                Segment::One if parts.get(i).is_some_and(|p| !p.is_empty()) => {}
                Segment::Literal(l) if parts.get(i).is_some_and(|p| p == l) => {}
                _ => return false,
            }
            i += 1;
        }
        i == parts.len()
    }

    /// Whether some path matches both patterns.
    pub fn overlaps(&self, other: &Self) -> bool {
        fn walk(a: &[Segment], b: &[Segment]) -> bool {
            match (a.split_first(), b.split_first()) {
                (Some((Segment::Rest, _)), _) | (_, Some((Segment::Rest, _))) | (None, None) => true,
                (None, _) | (_, None) => false,
                (Some((x, a)), Some((y, b))) => {
                    let same = match (x, y) {
                        (Segment::Literal(x), Segment::Literal(y)) => x == y,
                        _ => true,
                    };
                    same && walk(a, b)
                }
            }
        }
        walk(&self.segments, &other.segments)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A method named by a rule, or why it is not one.
fn parse_method(text: &str) -> Result<Method, String> {
    let upper = text.trim().to_ascii_uppercase();
    if !METHODS.contains(&upper.as_str()) {
        return Err(format!("`{text}` is not an HTTP method: use one of {}", METHODS.join(", ")));
    }
    Method::from_bytes(upper.as_bytes()).map_err(|e| format!("`{text}`: {e}"))
}

/// Methods and paths a rule applies to; an empty list matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    methods: Vec<Method>,
    paths: Vec<PathPattern>,
}

impl RouteMatch {
    /// From a rule's `methods` and `paths`; every problem, as `(field, message)`.
    pub fn parse(methods: &[String], paths: &[String]) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut out = Self::default();
        for (i, m) in methods.iter().enumerate() {
            match parse_method(m) {
                Ok(m) => out.methods.push(m),
                Err(e) => problems.push((format!("methods[{i}]"), e)),
            }
        }
        for (i, p) in paths.iter().enumerate() {
            match PathPattern::parse(p) {
                Ok(p) => out.paths.push(p),
                Err(e) => problems.push((format!("paths[{i}]"), e)),
            }
        }
        if problems.is_empty() { Ok(out) } else { Err(problems) }
    }

    /// Whether a request with `method` and `path` matches.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
    }

    /// Whether some request matches both.
    pub fn overlaps(&self, other: &Self) -> bool {
        let methods = self.methods.is_empty()
            || other.methods.is_empty()
            || self.methods.iter().any(|m| other.methods.contains(m));
        let paths = self.paths.is_empty()
            || other.paths.is_empty()
            || self.paths.iter().any(|a| other.paths.iter().any(|b| a.overlaps(b)));
        methods && paths
    }

    /// Whether it matches only safe methods (GET, HEAD, OPTIONS, TRACE).
    pub fn only_safe_methods(&self) -> bool {
        !self.methods.is_empty() && self.methods.iter().all(Method::is_safe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_match_segments() {
        assert!(p("/api/v1/events").matches("/api/v1/events"));
        assert!(!p("/api/v1/events").matches("/api/v1/events/1"));
        assert!(p("/api/v1/events/{id}").matches("/api/v1/events/1"));
        assert!(!p("/api/v1/events/{id}").matches("/api/v1/events/"));
        assert!(p("/api/v1/events/*/view").matches("/api/v1/events/7/view"));
        assert!(p("/api/**").matches("/api"));
        assert!(p("/api/**").matches("/api/v1/events/7"));
        assert!(!p("/api/**").matches("/apix"));
        assert!(p("/**").matches("/"));
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/a"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("api", "start with /"),
            ("/api//x", "empty segment"),
            ("/api/", "empty segment"),
            ("/api/**/x", "last segment"),
            ("/api/ev*", "whole segments"),
            ("/api/{id", "whole segments"),
            ("/api/{}", "whole segments"),
            ("/api?x=1", "query"),
        ] {
            let e = PathPattern::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(parse_method("get").is_ok());
        assert!(parse_method("GTE").unwrap_err().contains("not an HTTP method"));
    }

    #[test]
    fn overlap_is_symmetric_and_exact_enough() {
        let o = |a: &str, b: &str| p(a).overlaps(&p(b)) && p(b).overlaps(&p(a));
        assert!(o("/api/**", "/api/v1/events"));
        assert!(o("/api/v1/{id}", "/api/v1/events"));
        assert!(!o("/api/v1/events", "/api/v1/me"));
        assert!(!o("/api/v1/{id}", "/api/v1/events/1"));
        assert!(o("/**", "/"));
        let r = |m: &[&str], ps: &[&str]| {
            RouteMatch::parse(
                &m.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
                &ps.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
            .unwrap()
        };
        assert!(!r(&["GET"], &["/**"]).overlaps(&r(&["POST"], &["/**"])));
        assert!(r(&["GET", "POST"], &[]).overlaps(&r(&["POST"], &["/x"])));
        assert!(r(&["GET", "HEAD"], &["/a"]).only_safe_methods());
        assert!(!r(&[], &["/a"]).only_safe_methods());
        assert!(r(&["get"], &["/a/{id}"]).matches(&Method::GET, "/a/1"));
        assert!(!r(&["get"], &["/a/{id}"]).matches(&Method::POST, "/a/1"));
    }
}
