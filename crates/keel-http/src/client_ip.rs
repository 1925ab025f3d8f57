//! The client's IP address, without trusting what clients say about themselves.
//!
//! The socket peer is the client — unless the peer is one of the configured
//! `http.trusted_proxies` (CIDRs: the load balancer, the ingress). Only then are
//! `X-Forwarded-For` (or, without it, `Forwarded: for=`) read, right to left, skipping trusted
//! hops: the first untrusted address is the client. Anyone can send those headers, so from an
//! untrusted peer they are ignored entirely — a spoofed `X-Forwarded-For` cannot change a
//! rate-limit key.
//!
//! ```
//! use std::net::IpAddr;
//! use keel_http::client_ip::client_ip;
//!
//! let trusted: Vec<keel_http::client_ip::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
//! let peer: IpAddr = "10.0.0.5".parse().unwrap();
//! let mut h = http::HeaderMap::new();
//! h.insert("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.7".parse().unwrap());
//! assert_eq!(client_ip(peer, &h, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
//! // The same header from an untrusted peer is ignored.
//! assert_eq!(client_ip("198.51.100.1".parse().unwrap(), &h, &trusted), "198.51.100.1".parse::<IpAddr>().unwrap());
//! ```

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
pub use ipnet::IpNet;

/// The client address for a request from `peer` with `headers`, given the trusted proxies.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; match them as IPv4.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = forwarded_for(headers);
    // Right to left: the last hop was added by our own proxy; skip every trusted one.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => client = *ip,
            Some(ip) => return *ip,
            // An unparsable hop: stop at the last address we could vouch for.
            None => return client,
        }
    }
    client
}

/// The hops of `X-Forwarded-For`, or else of `Forwarded: for=…`, left to right.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    if !xff.is_empty() {
        return xff.iter().flat_map(|v| v.split(',')).map(|s| parse_ip(s.trim())).collect();
    }
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| parse_ip(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[').and_then(|r| r.split(']').next()).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), v.parse().unwrap());
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forms() {
        let t: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert_eq!(
            client_ip(ip("10.1.1.1"), &h("forwarded", "for=192.0.2.60;proto=http, for=10.0.0.9"), &t),
            ip("192.0.2.60")
        );
        assert_eq!(client_ip(ip("10.1.1.1"), &h("forwarded", r#"for="[2001:db8::1]:4711""#), &t), ip("2001:db8::1"));
        assert_eq!(
            client_ip(ip("10.1.1.1"), &h("x-forwarded-for", "10.0.0.2, 10.0.0.3"), &t),
            ip("10.0.0.2"),
            "all trusted: the leftmost"
        );
        assert_eq!(client_ip(ip("10.1.1.1"), &h("x-forwarded-for", "garbage, 10.0.0.3"), &t), ip("10.0.0.3"));
        assert_eq!(client_ip(ip("10.1.1.1"), &HeaderMap::new(), &t), ip("10.1.1.1"));
        assert_eq!(
            client_ip(ip("::ffff:10.1.1.1"), &h("x-forwarded-for", "192.0.2.7"), &t),
            ip("192.0.2.7"),
            "IPv4-mapped peer"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn v4() -> impl Strategy<Value = IpAddr> {
            any::<[u8; 4]>().prop_map(IpAddr::from)
        }

        proptest! {
            #[test]
            fn an_untrusted_peer_is_always_the_client(peer in v4(), hops in proptest::collection::vec(v4(), 0..6)) {
                let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
                prop_assume!(!trusted[0].contains(&peer));
                let list: Vec<String> = hops.iter().map(ToString::to_string).collect();
                let headers = if list.is_empty() { HeaderMap::new() } else { h("x-forwarded-for", &list.join(", ")) };
                prop_assert_eq!(client_ip(peer, &headers, &trusted), peer);
            }

            #[test]
            fn the_answer_is_the_rightmost_untrusted_hop(
                client in v4(),
                spoofed in proptest::collection::vec(v4(), 0..4),
                proxies in proptest::collection::vec(0u8..255, 0..4),
            ) {
                let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
                prop_assume!(!trusted[0].contains(&client));
                // spoofed hops (anything the client wrote), then the client as our proxy saw it,
                // then our own proxies.
                let mut chain: Vec<String> = spoofed.iter().map(ToString::to_string).collect();
                chain.push(client.to_string());
                chain.extend(proxies.iter().map(|p| format!("10.0.0.{p}")));
                let peer = ip("10.9.9.9");
                prop_assert_eq!(client_ip(peer, &h("x-forwarded-for", &chain.join(",")), &trusted), client);
            }
        }
    }
}
