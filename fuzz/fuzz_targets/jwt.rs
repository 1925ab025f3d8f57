//! Bearer tokens: header and claims parsing and every check `Jwt::verify` makes.
//!
//! The first byte picks how the rest is used. `0`: the rest is a token as a client sends it;
//! no such token is ever accepted (the fuzzer does not know the key). Otherwise: the rest is a
//! header JSON and a claims JSON separated by a newline, signed with the verifier's real key,
//! so every header and claim the fuzzer writes reaches the checks behind the signature. What is
//! accepted then has the key's algorithm and id, an issuer and audience that match, and an
//! expiry not past. Never a panic.

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel::config::Secret;
use keel::security::jwt::{Claims, Jwt, JwtKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "a-fuzzing-secret-of-at-least-32-bytes!";
const ISSUER: &str = "https://auth.fuzz";
const AUDIENCE: &str = "cityevents";

fn verifiers() -> &'static (Jwt, Jwt) {
    static V: OnceLock<(Jwt, Jwt)> = OnceLock::new();
    V.get_or_init(|| {
        let key = |kid: &str, secret: &str| JwtKey::hs256(kid, &Secret::new(secret)).expect("an HS256 key");
        let build =
            |b: keel::security::jwt::JwtBuilder| b.issuer(ISSUER).audience([AUDIENCE]).build().expect("a verifier");
        // One key (a token without `kid` uses it) and two keys (a token must name one).
        let one = build(Jwt::builder().key(key("k1", SECRET)));
        let two = build(Jwt::builder().key(key("k1", SECRET)).key(key("k2", "another-secret-of-at-least-32-bytes!!")));
        (one, two)
    })
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (one, two) = verifiers();
    if mode == 0 {
        let Ok(token) = std::str::from_utf8(rest) else { return };
        assert!(one.verify::<Claims>(token).is_err(), "accepted a token not signed with the key: {token}");
        assert!(two.verify::<Claims>(token).is_err(), "accepted a token not signed with the key: {token}");
        assert!(one.verify::<serde_json::Value>(token).is_err());
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (header, claims) = text.split_once('\n').unwrap_or((text, "{}"));
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("HMAC signs anything");
    let token = format!("{signing_input}.{signature}");
    for (verifier, kid_required) in [(one, false), (two, true)] {
        let Ok(accepted) = verifier.verify::<Claims>(&token) else { continue };
        let h: serde_json::Value = serde_json::from_str(header).expect("an accepted header is JSON");
        assert_eq!(h["alg"], "HS256", "{header}");
        match h.get("kid") {
            Some(kid) => assert_eq!(kid, "k1", "{header}"),
            None => assert!(!kid_required, "no kid accepted among two keys: {header}"),
        }
        assert_eq!(accepted.iss.as_deref(), Some(ISSUER), "{claims}");
        assert!(accepted.aud.iter().any(|a| a == AUDIENCE), "{claims}");
        // The verifier's default leeway is 30 s.
        assert!(accepted.exp + 30 >= now(), "expired at {}: {claims}", accepted.exp);
        if let Some(nbf) = accepted.nbf {
            assert!(nbf <= now() + 30, "not valid before {nbf}: {claims}");
        }
    }
});
