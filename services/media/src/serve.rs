//! Taking an upload from a multipart form, storing its variants and answering them.

use axum::extract::Multipart;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use keel::http::Problem;
use keel::storage::{StorageError, Store};

use crate::{ImageError, Processed, Variant};

/// `Cache-Control` of a stored variant: its URL names its content, so it never changes.
pub const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The multipart field an upload comes in.
pub const FIELD: &str = "file";

/// The key of one variant: `<kind>/<owner>/<hash>/<variant>.jpg`.
pub fn key(kind: &str, owner: &str, hash: &str, variant: &str) -> String {
    format!("{kind}/{owner}/{hash}/{variant}.jpg")
}

/// The key prefix of everything `owner` has of `kind` (`covers/<event id>/`).
pub fn owner_prefix(kind: &str, owner: &str) -> String {
    format!("{kind}/{owner}/")
}

/// Whether `hash` looks like a [`Processed::hash`] (16 lower-case hex digits).
pub fn is_hash(hash: &str) -> bool {
    hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The variant a URL's last segment (`card.jpg`) names, among `variants`.
pub fn variant_of(file: &str, variants: &[Variant]) -> Option<Variant> {
    let name = file.strip_suffix(".jpg")?;
    variants.iter().copied().find(|v| v.name == name)
}

/// Reads the [`FIELD`] of a multipart upload, at most `max` bytes: the first file field, with
/// any other field ignored. Over `max`: [`ImageError::TooLarge`]; no such field: a 400 problem.
pub async fn read_upload(mut form: Multipart, max: usize) -> Result<Bytes, Problem> {
    let bad = |detail: String| {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-upload", "Invalid upload").code("INVALID_UPLOAD").detail(detail)
    };
    // A body cut off at the route's limit is the file being too large.
    let form_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ImageError::TooLarge { limit: max }.problem()
        } else {
            bad(format!("not a multipart form: {}", e.body_text()))
        }
    };
    while let Some(mut field) = form.next_field().await.map_err(form_error)? {
        if field.name() != Some(FIELD) {
            continue;
        }
        let mut buf = BytesMut::new();
        let mut over = false;
        while let Some(chunk) = field.chunk().await.map_err(form_error)? {
            // Past the limit the rest is read and dropped (the route's body limit bounds it), so
            // the client gets the 413 instead of a connection reset mid-upload.
            over = over || buf.len() + chunk.len() > max;
            if !over {
                buf.extend_from_slice(&chunk);
            }
        }
        if over {
            return Err(ImageError::TooLarge { limit: max }.problem());
        }
        if buf.is_empty() {
            return Err(ImageError::Empty.problem());
        }
        return Ok(buf.freeze());
    }
    Err(bad(format!("the form has no \"{FIELD}\" field")))
}

/// Stores every variant of `p` under `<kind>/<owner>/<hash>/`. A failure part-way leaves
/// objects no row names, which the owner's next change or the sweep removes.
pub async fn store(store: &Store, kind: &str, owner: &str, p: &Processed) -> Result<(), StorageError> {
    for (v, bytes) in &p.variants {
        store.put(&key(kind, owner, &p.hash, v.name), bytes.clone()).await?;
    }
    Ok(())
}

/// Deletes the `variants` of picture `hash` of `owner` at once (a taken-down or removed
/// picture is not served again); the ones already gone are no error.
pub async fn delete(
    store: &Store,
    kind: &str,
    owner: &str,
    hash: &str,
    variants: &[Variant],
) -> Result<(), StorageError> {
    for v in variants {
        store.delete(&key(kind, owner, hash, v.name)).await?;
    }
    Ok(())
}

/// What one [`sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Objects looked at.
    pub seen: usize,
    /// Objects deleted.
    pub deleted: usize,
}

/// Owners looked up at once by a [`sweep`].
const SWEEP_BATCH: usize = 500;

/// Deletes the pictures of `kind` no owner shows any more: those of an owner that is gone, or
/// whose current picture (as `current` answers for a batch of owner ids: `None` = none) has
/// another hash. Only objects older than `grace`, so an upload stored and not yet recorded is
/// left alone. Keys not of the `<kind>/<owner>/<hash>/<file>` shape are not touched.
pub async fn sweep<F, Fut>(
    store: &Store,
    kind: &str,
    grace: std::time::Duration,
    current: F,
) -> Result<Swept, keel::workers::RunError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<std::collections::HashMap<String, Option<String>>, keel::workers::RunError>>,
{
    use futures_util::StreamExt as _;
    let cutoff = std::time::SystemTime::now().checked_sub(grace).unwrap_or(std::time::UNIX_EPOCH);
    let mut swept = Swept::default();
    let mut objects = std::pin::pin!(store.objects(&format!("{kind}/"))?);
    let mut batch: Vec<(String, String, String)> = Vec::new();
    loop {
        let next = objects.next().await.transpose()?;
        let done = next.is_none();
        if let Some(o) = next {
            swept.seen += 1;
            let mut parts = o.key.splitn(4, '/');
            if let (Some(k), Some(owner), Some(hash), Some(_file)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && k == kind
                && is_hash(hash)
                && o.modified < cutoff
            {
                batch.push((o.key.clone(), owner.to_owned(), hash.to_owned()));
            }
        }
        if batch.len() >= SWEEP_BATCH || (done && !batch.is_empty()) {
            let mut owners: Vec<String> = batch.iter().map(|(_, o, _)| o.clone()).collect();
            owners.sort_unstable();
            owners.dedup();
            let now = current(owners).await?;
            for (key, owner, hash) in batch.drain(..) {
                let shown = now.get(&owner).and_then(Option::as_deref);
                // Looked at again just before: the same picture uploaded anew since the listing
                // rewrote these keys (a name is its content) and may be recorded by now.
                if shown != Some(hash.as_str()) && store.modified(&key).await?.is_some_and(|m| m < cutoff) {
                    store.delete(&key).await?;
                    swept.deleted += 1;
                }
            }
        }
        if done {
            return Ok(swept);
        }
    }
}

/// The answer for a stored variant: the JPEG, cacheable for a year by anyone, never sniffed as
/// anything else; 404 when it is not (or no longer) stored.
pub async fn answer(store: &Store, key: &str) -> Response {
    match store.get(key).await {
        Ok(Some(bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
                (header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL)),
                (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
                (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox")),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => not_found(),
        Err(e) => Problem::from(e).into_response(),
    }
}

/// 404 for a picture that is not there.
pub fn not_found() -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "No such picture").into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::COVER;

    #[test]
    fn keys_and_names() {
        assert_eq!(key("covers", "e1", "0123456789abcdef", "card"), "covers/e1/0123456789abcdef/card.jpg");
        assert!(is_hash("0123456789abcdef"));
        assert!(!is_hash("0123456789ABCDEF"));
        assert!(!is_hash("../../etc/passwd"));
        assert_eq!(variant_of("card.jpg", COVER).map(|v| v.name), Some("card"));
        assert_eq!(variant_of("card.png", COVER), None);
        assert_eq!(variant_of("small.jpg", COVER), None);
    }
}
