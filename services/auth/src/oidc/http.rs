//! Calls to providers for `openidconnect` (its `AsyncHttpClient`), on reqwest: redirects are
//! never followed (a provider's document must not send auth elsewhere: SSRF), every call is
//! bounded in time, and an answer in size.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// The largest answer read from a provider (discovery documents and key sets are a few KiB).
const MAX_ANSWER: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    #[error("the answer is larger than {MAX_ANSWER} bytes")]
    TooLarge,
    #[error("cannot build the answer: {0}")]
    Answer(#[from] ::http::Error),
}

#[derive(Debug, Clone)]
pub(crate) struct Fetch {
    http: reqwest::Client,
}

impl Fetch {
    pub(crate) fn new(timeout: Duration) -> Result<Self, String> {
        keel::http::client::install_tls_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("cityevents-auth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the OpenID Connect HTTP client: {e}"))?;
        Ok(Self { http })
    }
}

impl<'c> AsyncHttpClient<'c> for Fetch {
    type Error = FetchError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, FetchError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut answer =
                self.http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
            let mut read = Vec::new();
            while let Some(chunk) = answer.chunk().await? {
                if read.len() + chunk.len() > MAX_ANSWER {
                    return Err(FetchError::TooLarge);
                }
                read.extend_from_slice(&chunk);
            }
            let mut out = ::http::Response::builder().status(answer.status()).body(read)?;
            *out.headers_mut() = answer.headers().clone();
            Ok(out)
        })
    }
}
