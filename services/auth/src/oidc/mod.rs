//! Sign-in with OpenID Connect providers (`app.oidc.*`), on the `openidconnect` crate.
//!
//! * **The flow**: the authorization code flow with PKCE (S256). [`Oidc::start`] keeps the
//!   flow's `nonce` and PKCE verifier server-side under the SHA-256 of its random `state`, for
//!   `app.oidc.flow_ttl`; the browser keeps `state` too (the gateway's HTTP-only cookie).
//!   [`Oidc::finish`] takes the flow once (a replayed callback finds nothing), checks that the
//!   browser's `state` is the redirect's and that the flow is this provider's, exchanges the code
//!   with the verifier, and validates the ID token: signature by the provider's JWKS, issuer,
//!   audience, expiry and the flow's nonce. A key id the kept key set does not have fetches the
//!   provider's keys again (key rotation); at most one fetch a second, so forged tokens cannot
//!   turn auth into a flood of requests to the provider.
//! * **The provider's document and keys** are discovered on first use and kept for an hour. A
//!   provider is asked at most once a second, failed attempts included: a provider that cannot
//!   be reached answers 503 `provider_unavailable` (the other ways to sign in keep working),
//!   unless its document was discovered before, which is then used until it answers again.
//! * **Calls to providers** go through [`http::Fetch`]: no redirects followed (SSRF), bounded in
//!   time (`app.oidc.request_timeout`) and size.

pub(crate) mod config;
mod http;
pub(crate) mod routes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::JsonWebKey as _;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};
use subtle::ConstantTimeEq as _;

pub(crate) use config::OidcConfig;

use crate::store::oidc::{self as store, Flow};
use cityevents_common::time::{now, to_micros};
use keel::data::{DataError, Db};

/// How long a provider's discovery document and keys are kept before they are fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The least time between two attempts to fetch one provider's document and keys (a key id
/// not in the kept set asks for one, and waits for the rest of the second if it must).
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest `next` path a flow keeps.
const MAX_NEXT: usize = 512;

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// Why a sign-in with a provider failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OidcError {
    /// No provider has this id.
    #[error("no provider `{0}`")]
    UnknownProvider(String),
    /// The provider could not be reached, or answered nonsense (discovery, keys, token).
    #[error("provider {provider} unavailable: {why}")]
    Unavailable { provider: String, why: String },
    /// The callback is refused: `why` is logged, never shown.
    #[error("sign-in refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Data(#[from] DataError),
}

/// What a provider says of the person who signed in, after every check.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) provider: String,
    pub(crate) issuer: String,
    pub(crate) subject: String,
    pub(crate) email: Option<String>,
    pub(crate) email_verified: bool,
    pub(crate) name: Option<String>,
    /// The flow's own: who links (a signed-in user) and their session version then, and where
    /// to go next.
    pub(crate) link_user_id: Option<String>,
    pub(crate) link_session_version: Option<i64>,
    pub(crate) next: String,
}

/// A provider's discovered client, and when it was last asked.
#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// The last attempt to discover, successful or not.
    attempted: Option<Instant>,
}

struct Cached {
    client: Arc<Client>,
    /// The key ids of its key set.
    kids: std::collections::HashSet<String>,
    fetched: Instant,
}

/// The configured providers, their discovered clients and the flows in the database.
#[derive(Clone)]
pub(crate) struct Oidc {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: OidcConfig,
    db: Db,
    fetch: http::Fetch,
    /// Per provider: a discovery under way holds its provider's lock only, so a provider that
    /// is slow to answer does not hold up the others.
    clients: HashMap<String, tokio::sync::Mutex<Slot>>,
}

/// A random URL-safe value of 256 bits.
fn random() -> String {
    crate::tokens::generate()
}

impl Oidc {
    pub(crate) fn new(cfg: OidcConfig, db: Db) -> Result<Self, String> {
        let fetch = http::Fetch::new(cfg.request_timeout)?;
        let clients = cfg.providers.keys().map(|id| (id.clone(), tokio::sync::Mutex::new(Slot::default()))).collect();
        Ok(Self { inner: Arc::new(Inner { cfg, db, fetch, clients }) })
    }

    /// `(id, name)` of every provider, in id order.
    pub(crate) fn providers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner.cfg.providers.iter().map(|(id, p)| (id.as_str(), p.name.as_str()))
    }

    /// The name of provider `id`.
    pub(crate) fn name(&self, id: &str) -> Option<&str> {
        self.inner.cfg.providers.get(id).map(|p| p.name.as_str())
    }

    /// The client of provider `id`: discovered now when never or long ago, or when `kid` (an ID
    /// token's key id) is not in the key set kept; never more than once a [`MIN_REFRESH`].
    async fn client(&self, id: &str, kid: Option<&str>) -> Result<Arc<Client>, OidcError> {
        let cfg = self.inner.cfg.providers.get(id).ok_or_else(|| OidcError::UnknownProvider(id.to_owned()))?;
        let slot = self.inner.clients.get(id).ok_or_else(|| OidcError::UnknownProvider(id.to_owned()))?;
        let unavailable = |why: String| OidcError::Unavailable { provider: id.to_owned(), why };
        let mut waited = false;
        // One discovery at a time per provider: callers wait for the one under way.
        let mut kept = loop {
            let kept = slot.lock().await;
            if let Some(c) = kept.cached.as_ref()
                && c.fetched.elapsed() < METADATA_TTL
                && kid.is_none_or(|k| c.kids.contains(k))
            {
                return Ok(c.client.clone());
            }
            let Some(rest) = kept.attempted.and_then(|at| MIN_REFRESH.checked_sub(at.elapsed())) else { break kept };
            // Asked less than a second ago. A new key id waits for the rest of the second, once
            // and without the lock; anyone else makes do with what is kept.
            if kid.is_some() && !waited {
                drop(kept);
                tokio::time::sleep(rest).await;
                waited = true;
                continue;
            }
            return match kept.cached.as_ref() {
                Some(c) => Ok(c.client.clone()),
                None => Err(unavailable("its discovery failed less than a second ago".to_owned())),
            };
        };
        kept.attempted = Some(Instant::now());
        match self.discover(id, cfg).await {
            Ok((client, kids)) => {
                let client = Arc::new(client);
                kept.cached = Some(Cached { client: client.clone(), kids, fetched: Instant::now() });
                Ok(client)
            }
            // The document kept, past its hour, serves until the provider answers again.
            Err(why) if let Some(c) = kept.cached.as_ref() => {
                tracing::warn!(provider = id, why, "sign-in provider unreachable: its document kept is used");
                Ok(c.client.clone())
            }
            Err(why) => Err(unavailable(why)),
        }
    }

    /// Fetches provider `id`'s document and keys: its client and key ids.
    async fn discover(
        &self,
        id: &str,
        cfg: &config::ProviderConfig,
    ) -> Result<(Client, std::collections::HashSet<String>), String> {
        let issuer = IssuerUrl::new(cfg.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata =
            CoreProviderMetadata::discover_async(issuer, &self.inner.fetch).await.map_err(|e| error_chain(&e))?;
        let kids = metadata.jwks().keys().iter().filter_map(|k| k.key_id().map(|k| k.as_str().to_owned())).collect();
        let redirect = RedirectUrl::new(self.redirect_uri(id)).map_err(|e| e.to_string())?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(cfg.client_id.clone()),
            Some(ClientSecret::new(cfg.client_secret.expose().to_owned())),
        )
        .set_redirect_uri(redirect);
        Ok((client, kids))
    }

    /// `<redirect_base>/login/oidc/<id>/callback`.
    fn redirect_uri(&self, id: &str) -> String {
        let base = self.inner.cfg.redirect_base.as_deref().unwrap_or_default().trim_end_matches('/');
        format!("{base}/login/oidc/{id}/callback")
    }

    /// Starts a sign-in (or, with `link`, the account and its session version, a link) at
    /// provider `id`: the authorization URL and the flow's `state`.
    pub(crate) async fn start(
        &self,
        id: &str,
        link: Option<(String, i64)>,
        next: &str,
    ) -> Result<(String, String), OidcError> {
        let client = self.client(id, None).await?;
        let cfg = self.inner.cfg.providers.get(id).ok_or_else(|| OidcError::UnknownProvider(id.to_owned()))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (state, nonce) = (random(), random());
        let (state_for_url, nonce_for_url) = (state.clone(), nonce.clone());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state_for_url),
                move || Nonce::new(nonce_for_url),
            )
            .set_pkce_challenge(challenge);
        for scope in cfg.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.url();
        let next = if next.len() <= MAX_NEXT { next } else { "/" };
        let flow = Flow {
            provider: id.to_owned(),
            nonce,
            pkce_verifier: verifier.secret().clone(),
            link_session_version: link.as_ref().map(|l| l.1),
            link_user_id: link.map(|l| l.0),
            next_path: next.to_owned(),
            expires_at: to_micros(now()) + micros(self.inner.cfg.flow_ttl),
        };
        store::insert_flow(&self.inner.db, &crate::tokens::hash(&state), &flow).await?;
        Ok((url.to_string(), state))
    }

    /// Finishes the flow of `state` at provider `id`: every check of the module's docs.
    pub(crate) async fn finish(
        &self,
        id: &str,
        state: &str,
        browser_state: &str,
        code: &str,
    ) -> Result<Verified, OidcError> {
        if !self.inner.cfg.providers.contains_key(id) {
            return Err(OidcError::UnknownProvider(id.to_owned()));
        }
        if !bool::from(state.as_bytes().ct_eq(browser_state.as_bytes())) {
            return Err(OidcError::Refused(
                "the browser's state is not the callback's (another browser's callback)".into(),
            ));
        }
        let flow = store::take_flow(&self.inner.db, &crate::tokens::hash(state))
            .await?
            .ok_or_else(|| OidcError::Refused("no such flow: unknown, expired or already finished".into()))?;
        if flow.expires_at < to_micros(now()) {
            return Err(OidcError::Refused("the flow expired".into()));
        }
        if flow.provider != id {
            return Err(OidcError::Refused(format!("the flow was started at {}, not {id}", flow.provider)));
        }
        let client = self.client(id, None).await?;
        let unavailable = |why: String| OidcError::Unavailable { provider: id.to_owned(), why };
        let request = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| unavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.pkce_verifier.clone()));
        let tokens = match request.request_async(&self.inner.fetch).await {
            Ok(t) => t,
            // The provider refused the code (spent, another flow's, a wrong verifier).
            Err(openidconnect::RequestTokenError::ServerResponse(e)) => {
                return Err(OidcError::Refused(format!("the provider refused the code: {e}")));
            }
            Err(e) => return Err(unavailable(error_chain(&e))),
        };
        let id_token = tokens.id_token().ok_or_else(|| OidcError::Refused("no ID token in the answer".into()))?;
        let nonce = Nonce::new(flow.nonce.clone());
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(c) => c.clone(),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) if let Some(kid) = key_id(&id_token.to_string()) => {
                // Signed by a key the provider has published since: fetch its keys again.
                let client = self.client(id, Some(&kid)).await?;
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|e| OidcError::Refused(format!("the ID token failed its checks: {}", error_chain(&e))))?
                    .clone()
            }
            Err(e) => return Err(OidcError::Refused(format!("the ID token failed its checks: {}", error_chain(&e)))),
        };
        let subject = claims.subject().as_str();
        if subject.is_empty() || subject.len() > 255 || claims.issuer().as_str().len() > 255 {
            return Err(OidcError::Refused("subject or issuer empty or longer than 255 bytes".into()));
        }
        Ok(Verified {
            provider: id.to_owned(),
            issuer: claims.issuer().as_str().to_owned(),
            subject: subject.to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
            link_user_id: flow.link_user_id,
            link_session_version: flow.link_session_version,
            next: flow.next_path,
        })
    }

    /// Deletes expired flows and link offers; how many.
    pub(crate) async fn prune(&self) -> Result<u64, DataError> {
        store::prune(&self.inner.db, to_micros(now())).await
    }

    /// `app.oidc.link_ttl` in microseconds.
    pub(crate) fn link_ttl_micros(&self) -> i64 {
        micros(self.inner.cfg.link_ttl)
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The `kid` of a compact JWS's header, if it has one.
fn key_id(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

/// An error and its sources, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
