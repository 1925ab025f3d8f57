//! Keel's JWT on gRPC calls: a tonic interceptor that verifies the `authorization: Bearer`
//! metadata with the service's [`Jwt`] and hands the claims to the handler.
//!
//! Refusals are the HTTP extractors' own, as statuses: no token `UNAUTHENTICATED`, a token that
//! fails verification `UNAUTHENTICATED` (saying only the class of failure), valid claims without
//! the required role `PERMISSION_DENIED`. Per service, as tonic intends:
//!
//! ```ignore
//! let auth = keel::grpc::auth::JwtInterceptor::<Claims>::new(s.jwt()?).require_role("editor");
//! s.grpc_service(SymbolsServer::with_interceptor(api, auth));
//!
//! // in a handler:
//! let claims = request.extensions().get::<Claims>().cloned();
//! ```

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tonic::service::Interceptor;

use crate::status::{Status, status};
use keel_security::jwt::{AuthRejection, Claims, HasRoles, Jwt};

/// Verifies bearer tokens on the calls of the service it intercepts; see the module docs.
pub struct JwtInterceptor<C = Claims> {
    jwt: Jwt,
    role: Option<Arc<str>>,
    optional: bool,
    _claims: PhantomData<fn() -> C>,
}

impl<C> Clone for JwtInterceptor<C> {
    fn clone(&self) -> Self {
        Self { jwt: self.jwt.clone(), role: self.role.clone(), optional: self.optional, _claims: PhantomData }
    }
}

impl<C> std::fmt::Debug for JwtInterceptor<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtInterceptor").field("role", &self.role).field("optional", &self.optional).finish()
    }
}

impl<C> JwtInterceptor<C> {
    /// Every call needs a valid token.
    pub fn new(jwt: Jwt) -> Self {
        Self { jwt, role: None, optional: false, _claims: PhantomData }
    }

    /// Every call needs a valid token whose claims have `role`.
    #[must_use]
    pub fn require_role(mut self, role: impl Into<Arc<str>>) -> Self {
        self.role = Some(role.into());
        self
    }

    /// A call without a token goes through anonymous (no claims in its extensions); one with a
    /// token that fails is still refused, as the HTTP side's `Option<Auth<C>>`.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

impl<C> Interceptor for JwtInterceptor<C>
where
    C: DeserializeOwned + HasRoles + Clone + Send + Sync + 'static,
{
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let claims = match self.jwt.authenticate::<C>(req.metadata().as_ref()) {
            Ok(Some(c)) => c,
            Ok(None) if self.optional && self.role.is_none() => return Ok(req),
            Ok(None) => return Err(status(AuthRejection::missing())),
            Err(rejection) => return Err(status(rejection)),
        };
        if let Some(role) = &self.role
            && !claims.has_role(role)
        {
            return Err(status(AuthRejection::forbidden(role.clone())));
        }
        req.extensions_mut().insert(claims);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use keel_config::Secret;
    use keel_security::jwt::JwtKey;

    use super::*;
    use crate::status::Code;

    fn jwt() -> Jwt {
        let key = JwtKey::hs256("k1", &Secret::new("grpc-auth-test-secret-0123456789abcdef")).unwrap();
        Jwt::builder().key(key).sign_with("k1").build().unwrap()
    }

    fn call(i: &mut JwtInterceptor, token: Option<&str>) -> Result<tonic::Request<()>, Status> {
        let mut req = tonic::Request::new(());
        if let Some(t) = token {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        i.call(req)
    }

    #[test]
    fn refusals_are_unauthenticated_or_permission_denied_and_claims_reach_the_handler() {
        let jwt = jwt();
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let reader = jwt.issue(&serde_json::json!({"sub": "u1", "exp": exp, "role": "reader"})).unwrap();
        let admin = jwt.issue(&serde_json::json!({"sub": "u2", "exp": exp, "role": "admin"})).unwrap();

        let mut any = JwtInterceptor::<Claims>::new(jwt.clone());
        let req = call(&mut any, Some(&reader)).unwrap();
        assert_eq!(req.extensions().get::<Claims>().unwrap().sub, "u1");
        assert_eq!(call(&mut any, None).unwrap_err().code(), Code::Unauthenticated);
        assert_eq!(call(&mut any, Some("not.a.token")).unwrap_err().code(), Code::Unauthenticated);

        let mut admins = JwtInterceptor::<Claims>::new(jwt.clone()).require_role("admin");
        let denied = call(&mut admins, Some(&reader)).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("admin"), "{denied:?}");
        assert!(call(&mut admins, Some(&admin)).is_ok());

        let mut optional = JwtInterceptor::<Claims>::new(jwt).optional();
        assert!(call(&mut optional, None).unwrap().extensions().get::<Claims>().is_none());
        assert_eq!(call(&mut optional, Some("bad")).unwrap_err().code(), Code::Unauthenticated);
    }
}
