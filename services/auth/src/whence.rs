//! Where a sign-in came from, as the session list shows it: the browser and system named by
//! its `User-Agent`, and roughly where, worked out at sign-in on this machine alone (no
//! geolocation service is asked): the city of the time zone the device gave, if any, and the
//! network its address is in (an IPv4 `/24`, an IPv6 `/48`; the address itself is not kept).

use std::net::IpAddr;

/// What the session list says of a session's device and place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Whence {
    /// `Firefox on Linux`, `Unknown device`.
    pub(crate) device: String,
    /// `Near Lisbon · network 203.0.113.0/24`, `This computer`.
    pub(crate) place: String,
}

/// Longest `User-Agent` read (real ones are a few hundred bytes).
const MAX_AGENT: usize = 512;

impl Whence {
    /// From the sign-in's `User-Agent`, client address and the time zone its body named.
    pub(crate) fn of(agent: Option<&str>, ip: &str, time_zone: Option<&str>) -> Self {
        Self { device: device(agent), place: place(ip, time_zone) }
    }
}

/// `Browser on System` from a `User-Agent`.
fn device(agent: Option<&str>) -> String {
    let Some(ua) = agent.map(|a| &a[..a.floor_char_boundary(MAX_AGENT)]).filter(|a| !a.trim().is_empty()) else {
        return "Unknown device".to_owned();
    };
    // Order matters: Edge and Opera say Chrome, Chrome says Safari, and so on.
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("SamsungBrowser/", "Samsung Internet"),
        ("Firefox/", "Firefox"),
        ("FxiOS/", "Firefox"),
        ("CriOS/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    let system = [
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Android", "Android"),
        ("CrOS", "ChromeOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Macintosh", "macOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b.to_owned(),
        (None, Some(s)) => format!("A browser or app on {s}"),
        (None, None) => {
            // An app naming itself (`cityevents-cli/1.2`): its name, cut short and printable.
            let name: String = ua
                .split(['/', ' ', ';', '('])
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(40)
                .collect();
            if name.is_empty() { "Unknown device".to_owned() } else { name }
        }
    }
}

/// Roughly where `ip` is, with the city of `time_zone` when it is a known zone.
fn place(ip: &str, time_zone: Option<&str>) -> String {
    let network = match ip.parse::<IpAddr>() {
        Ok(a) if a.is_loopback() => "this computer".to_owned(),
        Ok(IpAddr::V4(a)) if a.is_private() || a.is_link_local() => "a private network".to_owned(),
        Ok(IpAddr::V6(a)) if (a.segments()[0] & 0xfe00) == 0xfc00 || (a.segments()[0] & 0xffc0) == 0xfe80 => {
            "a private network".to_owned()
        }
        Ok(IpAddr::V4(a)) => {
            let [x, y, z, _] = a.octets();
            format!("network {x}.{y}.{z}.0/24")
        }
        Ok(IpAddr::V6(a)) => {
            let s = a.segments();
            format!("network {:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
        Err(_) => "an unknown network".to_owned(),
    };
    match time_zone.and_then(city) {
        Some(city) => format!("Near {city} · {network}"),
        None => {
            let mut chars = network.chars();
            chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
        }
    }
}

/// The city an IANA zone is named for (`America/Argentina/Buenos_Aires` → `Buenos Aires`), for
/// zones the platform knows; `None` for `UTC`, `Etc/…` and unknown names.
fn city(zone: &str) -> Option<String> {
    let zone = cityevents_common::zone::Zone::named(zone.trim())?;
    let name = zone.name();
    if name.starts_with("Etc/") || !name.contains('/') {
        return None;
    }
    name.rsplit('/').next().map(|c| c.replace('_', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_and_systems_are_named() {
        let cases = [
            ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "Firefox on Linux"),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                "Safari on iPhone",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                "Safari on macOS",
            ),
            ("curl/8.5.0", "curl"),
            ("cityevents-cli/1.2 (+https://example.com)", "cityevents-cli"),
            ("", "Unknown device"),
            ("%%%", "Unknown device"),
        ];
        for (ua, want) in cases {
            assert_eq!(device(Some(ua)), want, "{ua}");
        }
        assert_eq!(device(None), "Unknown device");
        assert_eq!(device(Some(&"é".repeat(600))), "Unknown device", "long, non-ASCII: cut on a boundary");
    }

    #[test]
    fn places_are_a_network_and_a_zone_city_never_the_address() {
        assert_eq!(place("203.0.113.77", Some("Europe/Lisbon")), "Near Lisbon · network 203.0.113.0/24");
        assert_eq!(place("203.0.113.77", None), "Network 203.0.113.0/24");
        assert_eq!(
            place("2001:db8:abcd:12::1", Some("America/Argentina/Buenos_Aires")),
            "Near Buenos Aires · network 2001:db8:abcd::/48"
        );
        assert_eq!(place("127.0.0.1", Some("UTC")), "This computer");
        assert_eq!(place("192.168.1.20", Some("Not/AZone")), "A private network");
        assert_eq!(place("fd00::1", None), "A private network");
        assert_eq!(place("garbage", None), "An unknown network");
        assert!(!place("203.0.113.77", None).contains("77"));
    }
}
