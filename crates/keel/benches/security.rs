//! Security hot paths: JWT verification per algorithm (and with the session-revocation check), field encryption and decryption of a
//! 64-byte value, and the blind index.
//!
//! Run with `cargo bench -p keel --features security --bench security`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keel::config::Secret;
use keel::security::crypto::{BlindIndex, Keyring, MasterKey, generate_key};
use keel::security::jwt::{Claims, Jwt, JwtKey};
use keel::security::sessions::Revocations;

const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa-public.pem");
const ED_PRIVATE: &str = include_str!("../tests/keys/ed25519-private.pem");
const ED_PUBLIC: &str = include_str!("../tests/keys/ed25519-public.pem");

fn jwt(c: &mut Criterion) {
    let keys = || -> Result<Vec<JwtKey>, keel::security::jwt::JwtError> {
        Ok(vec![
            JwtKey::hs256("hs", &Secret::new("a-benchmark-secret-of-at-least-32-bytes"))?,
            JwtKey::rs256("rsa", RSA_PUBLIC)?,
            JwtKey::eddsa("ed", ED_PUBLIC, Some(&Secret::new(ED_PRIVATE)))?,
        ])
    };
    let Ok(all) = keys() else { return };
    let mut group = c.benchmark_group("jwt_verify");
    for kid in ["hs", "rsa", "ed"] {
        // RS256 verifies only (Keel does not sign with RSA): its token is signed as an
        // identity provider would, with the same claims.
        let signer = if kid == "rsa" { "ed" } else { kid };
        let mut b = Jwt::builder().issuer("https://auth.bench").audience(["api"]).sign_with(signer);
        for k in all.clone() {
            b = b.key(k);
        }
        let Ok(jwt) = b.build() else { return };
        let claims = jwt.claims("user-42").role("admin").email("a@example.com");
        let token = if kid == "rsa" {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = Some("rsa".into());
            let Ok(key) = jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()) else { return };
            let Ok(token) = jsonwebtoken::encode(&header, &claims, &key) else { return };
            token
        } else {
            let Ok(token) = jwt.issue(&claims) else { return };
            token
        };
        let name = match kid {
            "hs" => "HS256",
            "rsa" => "RS256",
            _ => "EdDSA",
        };
        group.bench_function(name, |b| b.iter(|| jwt.verify::<Claims>(black_box(&token)).is_ok()));
        if kid == "hs" {
            // The same token through a verifier that follows session revocations (10 000 users
            // recorded, this one not among them): the cost of the `sv` check.
            let revoked = Revocations::new(std::time::Duration::from_secs(3600), 100_000);
            for i in 0..10_000 {
                revoked.revoke(&format!("user-{i}-gone"), 1);
            }
            let following = jwt.clone().with_revocations(revoked);
            group.bench_function("HS256+revocations", |b| {
                b.iter(|| following.verify::<Claims>(black_box(&token)).is_ok())
            });
        }
    }
    group.finish();
}

fn crypto(c: &mut Criterion) {
    let Ok(master) = MasterKey::from_secret(&Secret::new(generate_key())) else { return };
    let Ok(wrapped) = master.new_data_key("k1") else { return };
    let Ok(ring) = Keyring::new(&master, [("k1", wrapped.as_str())], "k1") else { return };
    let field = [7u8; 64];
    let Ok(ct) = ring.encrypt(&field) else { return };
    let Ok(index) = BlindIndex::new(&Secret::new(generate_key())) else { return };
    let mut group = c.benchmark_group("field");
    group.bench_function("encrypt_64B", |b| b.iter(|| ring.encrypt(black_box(&field)).is_ok()));
    group.bench_function("decrypt_64B", |b| b.iter(|| ring.decrypt(black_box(&ct)).is_ok()));
    group.bench_function("blind_index_email", |b| b.iter(|| index.email(black_box("Alice.Smith@Example.com"))));
    group.finish();
}

criterion_group!(benches, jwt, crypto);
criterion_main!(benches);
