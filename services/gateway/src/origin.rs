//! The site's absolute address, for what leaves it: calendar entries, share links, OpenGraph
//! tags. `app.web.public_url` when set (what a deployment behind a proxy sets); else the
//! request's `Host`, with `https` when cookies are `Secure`.

use http::{HeaderMap, HeaderValue, header};

/// Where people reach the site.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    fixed: Option<String>,
    secure: bool,
}

impl Origin {
    /// `public_url` (already validated: scheme and authority, no path) or the request's host.
    pub(crate) fn new(public_url: Option<&str>, secure: bool) -> Self {
        Self { fixed: public_url.map(|u| u.trim_end_matches('/').to_owned()), secure }
    }

    /// `scheme://authority` for a request with `headers` to `uri` (HTTP/2 names the host in the
    /// URI's authority, not in a `Host` header).
    pub(crate) fn of(&self, headers: &HeaderMap, uri: &http::Uri) -> String {
        let authority = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        self.of_host(headers.get(header::HOST).or(authority.as_ref()))
    }

    /// `scheme://authority` for a request with `host`.
    pub(crate) fn of_host(&self, host: Option<&HeaderValue>) -> String {
        if let Some(fixed) = &self.fixed {
            return fixed.clone();
        }
        let host = host.and_then(|h| h.to_str().ok()).filter(|h| plausible_host(h));
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", host.unwrap_or("localhost"))
    }
}

/// A host and optional port, nothing that could end the authority (`/`, `@`, `?`, `#`) or break
/// out of an attribute or a calendar line.
fn plausible_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// Checks `app.web.public_url`: `http(s)://host[:port]`, no path, query or user.
pub(crate) fn check_public_url(value: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(value).map_err(|_| "must be an absolute URL like https://events.example.org")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with https:// (or http://)");
    }
    if url.host_str().is_none_or(str::is_empty) || !url.username().is_empty() || url.password().is_some() {
        return Err("must name a host, without a user or password");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("must be the site's origin, without a path, query or fragment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_origin_wins_and_a_strange_host_is_not_echoed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("events.test:8080"));
        let uri = http::Uri::from_static("/events");
        assert_eq!(Origin::new(None, false).of(&headers, &uri), "http://events.test:8080");
        assert_eq!(Origin::new(None, true).of(&headers, &uri), "https://events.test:8080");
        assert_eq!(Origin::new(Some("https://city.example/"), false).of(&headers, &uri), "https://city.example");
        let h2 = http::Uri::from_static("https://h2.example:8443/events");
        assert_eq!(Origin::new(None, true).of(&HeaderMap::new(), &h2), "https://h2.example:8443");
        headers.insert(header::HOST, HeaderValue::from_static("evil.example/\"><script>"));
        assert_eq!(Origin::new(None, false).of(&headers, &uri), "http://localhost");
    }

    #[test]
    fn public_url_is_an_origin() {
        assert!(check_public_url("https://events.example.org").is_ok());
        assert!(check_public_url("http://127.0.0.1:8080/").is_ok());
        for bad in ["events.example.org", "ftp://x.org", "https://x.org/app", "https://u@x.org", "https://x.org/?a=1"] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
    }
}
