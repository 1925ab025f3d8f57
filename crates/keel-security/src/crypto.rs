//! Field encryption, KMS-style: envelope encryption with AES-256-GCM, key rotation, and a keyed
//! blind index for equality lookups on encrypted fields.
//!
//! * A **master key** (32 bytes, base64, a [`Secret`] from env or `master_key_file`) only wraps
//!   **data keys**; data keys encrypt values. Wrapped data keys are stored in configuration
//!   (`security.encryption.data_keys`) — useless without the master key.
//! * A value encrypts to `v1:<kid>:<base64(nonce ‖ ciphertext ‖ tag)>` with a random 96-bit
//!   nonce; the `v1:<kid>` prefix is authenticated too, so a ciphertext cannot be relabelled.
//! * **Rotation**: new writes use the active data key; reads accept every listed key;
//!   [`Keyring::reencrypt`] moves a value to the active key; [`rewrap`] (and
//!   `<service> keys rewrap`) re-wraps data keys under a new master key.
//! * **Blind index**: [`BlindIndex`] is HMAC-SHA256 under its own key over a normalized value, so
//!   `WHERE email_index = $1` finds a row without decrypting (and without the index revealing
//!   the value or letting anyone without the key compute it).
//!
//! ```
//! use keel_config::Secret;
//! use keel_security::crypto::{BlindIndex, Keyring, MasterKey, generate_key};
//!
//! let master = MasterKey::from_secret(&Secret::new(generate_key())).unwrap();
//! let wrapped = master.new_data_key("2025-01").unwrap();
//! let ring = Keyring::new(&master, [("2025-01", wrapped.as_str())], "2025-01").unwrap();
//! let ct = ring.encrypt_str("alice@example.com").unwrap();
//! assert!(ct.starts_with("v1:2025-01:"));
//! assert_eq!(ring.decrypt_str(&ct).unwrap(), "alice@example.com");
//!
//! let index = BlindIndex::new(&Secret::new(generate_key())).unwrap();
//! assert_eq!(index.email(" Alice@Example.com "), index.email("alice@example.com"));
//! ```

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, Generate, Payload};
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::EncryptionConfig;
use keel_config::Secret;

/// The ciphertext format version.
pub const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Errors encrypting, decrypting or loading keys. Messages never contain key material or
/// plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key is not 32 bytes of valid base64.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The ciphertext is not `v1:<kid>:<base64>`.
    #[error("malformed ciphertext")]
    Malformed,
    /// The ciphertext names a key id the keyring does not have.
    #[error("unknown data key `{0}`")]
    UnknownKey(String),
    /// Authentication failed: the ciphertext was altered, or the key is wrong.
    #[error("decryption failed: the value was altered or the key is wrong")]
    Decrypt,
    /// The decrypted bytes are not UTF-8 (for the `_str` helpers).
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
    /// The configuration names no active key, or none at all.
    #[error("{0}")]
    Config(String),
}

impl From<CryptoError> for keel_http::Problem {
    /// A bare 500, the cause logged: field encryption failing is the server's fault.
    fn from(e: CryptoError) -> Self {
        keel_http::Problem::internal_error("field encryption", e)
    }
}

/// 32 random bytes, base64: a new master key or blind-index key.
pub fn generate_key() -> String {
    B64.encode(Key::<Aes256Gcm>::generate())
}

fn key_from_b64(b64: &str, what: &str) -> Result<Key<Aes256Gcm>, CryptoError> {
    let bytes = B64.decode(b64.trim()).map_err(|_| CryptoError::InvalidKey(format!("{what} is not base64")))?;
    Key::<Aes256Gcm>::try_from(bytes.as_slice())
        .map_err(|_| CryptoError::InvalidKey(format!("{what} must be 32 bytes, is {}", bytes.len())))
}

fn seal(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = Nonce::generate();
    let ct = cipher.encrypt(&nonce, Payload { msg: plaintext, aad }).map_err(|_| CryptoError::Decrypt)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Malformed)?;
    cipher.decrypt(&nonce, Payload { msg: ct, aad }).map_err(|_| CryptoError::Decrypt)
}

/// The key that wraps data keys.
#[derive(Clone)]
pub struct MasterKey(Aes256Gcm);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// Reads a base64 32-byte key.
    pub fn from_secret(secret: &Secret) -> Result<Self, CryptoError> {
        Ok(Self(Aes256Gcm::new(&key_from_b64(secret.expose(), "the master key")?)))
    }

    /// A fresh random data key for `kid`, wrapped by this master key (store the result in
    /// `security.encryption.data_keys.<kid>`).
    pub fn new_data_key(&self, kid: &str) -> Result<String, CryptoError> {
        self.wrap(kid, &Key::<Aes256Gcm>::generate())
    }

    fn wrap(&self, kid: &str, key: &Key<Aes256Gcm>) -> Result<String, CryptoError> {
        // The kid is authenticated: a wrapped key cannot be filed under another id.
        Ok(B64.encode(seal(&self.0, key, wrap_aad(kid).as_bytes())?))
    }

    pub(crate) fn unwrap_key(&self, kid: &str, wrapped: &str) -> Result<Key<Aes256Gcm>, CryptoError> {
        let sealed = B64.decode(wrapped.trim()).map_err(|_| CryptoError::Malformed)?;
        let raw = open(&self.0, &sealed, wrap_aad(kid).as_bytes())?;
        Key::<Aes256Gcm>::try_from(raw.as_slice()).map_err(|_| CryptoError::Malformed)
    }
}

fn wrap_aad(kid: &str) -> String {
    format!("keel-data-key:{kid}")
}

/// Re-wraps a data key from `old` to `new` master key (master key rotation). The data key, and
/// so every value encrypted with it, is unchanged.
pub fn rewrap(old: &MasterKey, new: &MasterKey, kid: &str, wrapped: &str) -> Result<String, CryptoError> {
    new.wrap(kid, &old.unwrap_key(kid, wrapped)?)
}

/// Unwrapped data keys by id, and the active one. Cheap to clone; clones share their keys, so a
/// key set installed by the data-key store ([`crate::keys::DataKeys`], feature `sql`) reaches
/// every clone at once.
#[derive(Clone)]
pub struct Keyring {
    inner: std::sync::Arc<std::sync::RwLock<std::sync::Arc<Ring>>>,
}

/// One immutable key set: readers take a snapshot and never hold the lock while they encrypt.
pub(crate) struct Ring {
    pub(crate) keys: BTreeMap<String, Aes256Gcm>,
    pub(crate) active: String,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.ring();
        f.debug_struct("Keyring")
            .field("kids", &ring.keys.keys().collect::<Vec<_>>())
            .field("active", &ring.active)
            .finish()
    }
}

/// Checks a data key id: 1 to 64 ASCII letters, digits, `-`, `_` or `.` (never `:`, the
/// ciphertext's separator; ASCII, so SQL counts its characters as bytes).
pub(crate) fn check_kid(kid: &str) -> Result<(), CryptoError> {
    if kid.is_empty() || kid.len() > 64 || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(CryptoError::Config(format!(
            "data key id `{kid}` must be 1 to 64 ASCII letters, digits, `-`, `_` or `.`"
        )));
    }
    Ok(())
}

impl Keyring {
    /// Unwraps every data key with `master`; `active` encrypts new values.
    pub fn new<'a>(
        master: &MasterKey,
        wrapped: impl IntoIterator<Item = (&'a str, &'a str)>,
        active: &str,
    ) -> Result<Self, CryptoError> {
        let ring = Ring::unwrap_all(master, wrapped, active)?;
        Ok(Self { inner: std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(ring))) })
    }

    /// The key set in use now.
    fn ring(&self) -> std::sync::Arc<Ring> {
        // A poisoned lock still holds a whole key set: installing one is a single assignment.
        match self.inner.read() {
            Ok(ring) => ring.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the key set of this keyring and every clone of it.
    #[cfg(feature = "sql")]
    pub(crate) fn install(&self, ring: Ring) {
        let ring = std::sync::Arc::new(ring);
        match self.inner.write() {
            Ok(mut slot) => *slot = ring,
            Err(poisoned) => *poisoned.into_inner() = ring,
        }
    }

    /// The keyring `security.encryption.*` describes.
    pub fn from_config(cfg: &EncryptionConfig) -> Result<Self, CryptoError> {
        let master = cfg
            .master_key
            .as_ref()
            .ok_or_else(|| CryptoError::Config("security.encryption.master_key is not set".into()))?;
        let active = cfg
            .active_key
            .as_deref()
            .ok_or_else(|| CryptoError::Config("security.encryption.active_key is not set".into()))?;
        let master = MasterKey::from_secret(master)?;
        Self::new(&master, cfg.data_keys.iter().map(|(k, v)| (k.as_str(), v.as_str())), active)
    }

    /// The id of the key new values are encrypted with.
    pub fn active(&self) -> String {
        self.ring().active.clone()
    }

    /// The ids of every key that can decrypt, in order.
    pub fn key_ids(&self) -> Vec<String> {
        self.ring().keys.keys().cloned().collect()
    }

    /// Encrypts with the active key: `v1:<kid>:<base64>`.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<String, CryptoError> {
        let ring = self.ring();
        let cipher = ring.keys.get(&ring.active).ok_or_else(|| CryptoError::UnknownKey(ring.active.clone()))?;
        let prefix = format!("{VERSION}:{}", ring.active);
        let sealed = seal(cipher, plaintext, prefix.as_bytes())?;
        Ok(format!("{prefix}:{}", B64.encode(sealed)))
    }

    /// Decrypts a value made by any listed key.
    pub fn decrypt(&self, ciphertext: &str) -> Result<Vec<u8>, CryptoError> {
        let (kid, body) = Self::parse(ciphertext)?;
        let ring = self.ring();
        let cipher = ring.keys.get(kid).ok_or_else(|| CryptoError::UnknownKey(kid.to_owned()))?;
        let sealed = B64.decode(body).map_err(|_| CryptoError::Malformed)?;
        open(cipher, &sealed, format!("{VERSION}:{kid}").as_bytes())
    }

    /// [`Keyring::encrypt`] for text.
    pub fn encrypt_str(&self, plaintext: &str) -> Result<String, CryptoError> {
        self.encrypt(plaintext.as_bytes())
    }

    /// [`Keyring::decrypt`] for text.
    pub fn decrypt_str(&self, ciphertext: &str) -> Result<String, CryptoError> {
        String::from_utf8(self.decrypt(ciphertext)?).map_err(|_| CryptoError::NotUtf8)
    }

    /// The key id a ciphertext was made with.
    pub fn key_id(ciphertext: &str) -> Result<&str, CryptoError> {
        Self::parse(ciphertext).map(|(kid, _)| kid)
    }

    /// Whether the value is encrypted with another key than the active one.
    pub fn needs_reencrypt(&self, ciphertext: &str) -> bool {
        Self::key_id(ciphertext).map_or(true, |kid| kid != self.ring().active)
    }

    /// Re-encrypts a value under the active key (data key rotation, row by row).
    pub fn reencrypt(&self, ciphertext: &str) -> Result<String, CryptoError> {
        self.encrypt(&self.decrypt(ciphertext)?)
    }

    fn parse(ciphertext: &str) -> Result<(&str, &str), CryptoError> {
        let mut parts = ciphertext.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(VERSION), Some(kid), Some(body)) if !kid.is_empty() => Ok((kid, body)),
            _ => Err(CryptoError::Malformed),
        }
    }
}

impl Ring {
    /// Unwraps every data key with `master`; `active` must be among them.
    pub(crate) fn unwrap_all<'a>(
        master: &MasterKey,
        wrapped: impl IntoIterator<Item = (&'a str, &'a str)>,
        active: &str,
    ) -> Result<Self, CryptoError> {
        let mut keys = BTreeMap::new();
        for (kid, w) in wrapped {
            check_kid(kid)?;
            let key = master.unwrap_key(kid, w).map_err(|_| {
                CryptoError::InvalidKey(format!("data key `{kid}` does not unwrap with this master key"))
            })?;
            keys.insert(kid.to_owned(), Aes256Gcm::new(&key));
        }
        if !keys.contains_key(active) {
            return Err(CryptoError::Config(format!("the active key `{active}` is not among the data keys")));
        }
        Ok(Self { keys, active: active.to_owned() })
    }
}

/// A keyed blind index: HMAC-SHA256 of a normalized value, hex-encoded (64 characters).
#[derive(Clone)]
pub struct BlindIndex(Hmac<Sha256>);

impl std::fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndex(***)")
    }
}

impl BlindIndex {
    /// A blind index under a base64 key of at least 32 bytes.
    pub fn new(key: &Secret) -> Result<Self, CryptoError> {
        hmac_key(key, "the blind-index key").map(Self)
    }

    /// The index from `security.encryption.blind_index_key`.
    pub fn from_config(cfg: &EncryptionConfig) -> Result<Self, CryptoError> {
        let key = cfg
            .blind_index_key
            .as_ref()
            .ok_or_else(|| CryptoError::Config("security.encryption.blind_index_key is not set".into()))?;
        Self::new(key)
    }

    /// The index of `value` exactly as given.
    pub fn exact(&self, value: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(value.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The index of an e-mail address: trimmed and lowercased first, so lookups ignore case.
    pub fn email(&self, value: &str) -> String {
        self.exact(&value.trim().to_lowercase())
    }
}

/// An HMAC-SHA256 key from `key`: at least 32 bytes, base64. `what` names it in errors.
pub(crate) fn hmac_key(key: &Secret, what: &str) -> Result<Hmac<Sha256>, CryptoError> {
    let bytes =
        B64.decode(key.expose().trim()).map_err(|_| CryptoError::InvalidKey(format!("{what} is not base64")))?;
    if bytes.len() < 32 {
        return Err(CryptoError::InvalidKey(format!("{what} must be at least 32 bytes")));
    }
    <Hmac<Sha256> as KeyInit>::new_from_slice(&bytes).map_err(|_| CryptoError::InvalidKey(format!("unusable {what}")))
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> (MasterKey, Keyring) {
        make_ring()
    }

    fn make_ring() -> (MasterKey, Keyring) {
        let master = MasterKey::from_secret(&Secret::new(generate_key())).unwrap();
        let a = master.new_data_key("a").unwrap();
        let b = master.new_data_key("b").unwrap();
        let ring = Keyring::new(&master, [("a", a.as_str()), ("b", b.as_str())], "b").unwrap();
        (master, ring)
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (_, ring) = ring();
            let ct = ring.encrypt(&data).unwrap();
            prop_assert!(ct.starts_with("v1:b:"));
            prop_assert_eq!(ring.decrypt(&ct).unwrap(), data);
        }

        #[test]
        fn tampering_is_detected(data in proptest::collection::vec(any::<u8>(), 1..128), at in any::<usize>(), bit in 0u8..8) {
            let (_, ring) = ring();
            let ct = ring.encrypt(&data).unwrap();
            let (prefix, body) = ct.rsplit_once(':').unwrap();
            let mut raw = B64.decode(body).unwrap();
            let i = at % raw.len();
            raw[i] ^= 1 << bit;
            let tampered = format!("{prefix}:{}", B64.encode(raw));
            prop_assert_eq!(ring.decrypt(&tampered), Err(CryptoError::Decrypt));
        }

        #[test]
        fn wrong_key_fails(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let (_, ring) = ring();
            let (_, other) = make_ring();
            let ct = ring.encrypt(&data).unwrap();
            prop_assert_eq!(other.decrypt(&ct), Err(CryptoError::Decrypt));
        }

        #[test]
        fn relabelled_ciphertext_fails(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (_, ring) = ring();
            let ct = ring.encrypt(&data).unwrap();
            let relabelled = ct.replacen("v1:b:", "v1:a:", 1);
            prop_assert_eq!(ring.decrypt(&relabelled), Err(CryptoError::Decrypt));
        }
    }

    #[test]
    fn nonces_are_random() {
        let (_, ring) = ring();
        assert_ne!(ring.encrypt(b"same").unwrap(), ring.encrypt(b"same").unwrap());
    }

    #[test]
    fn rotation_reads_old_keys_and_rewraps() {
        let (master, ring) = make_ring();
        let old_wrapped = master.new_data_key("old").unwrap();
        let old_ring = Keyring::new(&master, [("old", old_wrapped.as_str())], "old").unwrap();
        let legacy = old_ring.encrypt_str("legacy").unwrap();
        assert_eq!(ring.decrypt_str(&legacy), Err(CryptoError::UnknownKey("old".into())));

        // Master key rotation: the same data keys, wrapped anew.
        let new_master = MasterKey::from_secret(&Secret::new(generate_key())).unwrap();
        let rewrapped = rewrap(&master, &new_master, "old", &old_wrapped).unwrap();
        assert_ne!(rewrapped, old_wrapped);
        assert!(Keyring::new(&master, [("old", rewrapped.as_str())], "old").is_err(), "old master no longer works");
        let new_ring = Keyring::new(&new_master, [("old", rewrapped.as_str())], "old").unwrap();
        assert_eq!(new_ring.decrypt_str(&legacy).unwrap(), "legacy");
        // A wrapped key filed under another id does not unwrap.
        assert!(Keyring::new(&new_master, [("other", rewrapped.as_str())], "other").is_err());

        // Data key rotation: re-encrypt under the active key.
        let both_new = new_master.new_data_key("new").unwrap();
        let ring2 =
            Keyring::new(&new_master, [("old", rewrapped.as_str()), ("new", both_new.as_str())], "new").unwrap();
        assert!(ring2.needs_reencrypt(&legacy));
        let moved = ring2.reencrypt(&legacy).unwrap();
        assert_eq!(Keyring::key_id(&moved).unwrap(), "new");
        assert_eq!(ring2.decrypt_str(&moved).unwrap(), "legacy");
    }

    #[test]
    fn malformed_and_bad_keys() {
        let (_, ring) = ring();
        for bad in ["", "v1", "v1::abc", "v2:b:AAAA", "v1:b:not base64!", "v1:b:AAAA"] {
            assert!(ring.decrypt(bad).is_err(), "{bad}");
        }
        assert!(MasterKey::from_secret(&Secret::new("c2hvcnQ=")).is_err());
        assert!(BlindIndex::new(&Secret::new("c2hvcnQ=")).is_err());
    }

    #[test]
    fn blind_index_is_keyed_and_normalized() {
        let a = BlindIndex::new(&Secret::new(generate_key())).unwrap();
        let b = BlindIndex::new(&Secret::new(generate_key())).unwrap();
        assert_eq!(a.email("Bob@Example.com "), a.email("bob@example.com"));
        assert_ne!(a.email("bob@example.com"), b.email("bob@example.com"));
        assert_ne!(a.email("bob@example.com"), a.email("rob@example.com"));
        assert_eq!(a.exact("x").len(), 64);
    }
}
