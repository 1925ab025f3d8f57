//! Logging in with an OpenID Connect provider, end to end: the all-in-one behind its web pages,
//! and a real provider run locally (panva's certified oidc-provider, `tests/oidc/provider.mjs`),
//! driven the way a browser is (cookies per site, redirects followed by hand).
//!
//! A new person gets an account; they sign in again to the same one; an existing account is
//! linked only with its password; the attacks are refused: a replayed callback, a spent code
//! injected into another flow, a callback opened in another browser, a tampered nonce, a
//! tampered PKCE challenge, and forged ID tokens (another key, `alg: none`, changed claims,
//! another audience or issuer, expired); the provider's key rotation is followed; unlinking
//! never takes the last way to log in.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Platform;
use common::idp::{self, Idp};
use reqwest::{Method, StatusCode};

const PASSWORD: &str = "correct horse battery staple";

/// A browser: cookies kept per origin, redirects followed one by one.
struct Browser {
    http: reqwest::Client,
    site: String,
    cookies: BTreeMap<String, BTreeMap<String, String>>,
}

struct Answer {
    status: StatusCode,
    location: String,
    body: String,
}

fn origin(url: &str) -> String {
    let u = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    format!("{}://{}", u.scheme(), u.host_str().unwrap()) + &u.port().map(|p| format!(":{p}")).unwrap_or_default()
}

fn encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// The `value` of the first `name="<name>" value="…"` in a page.
fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        .to_owned()
}

impl Browser {
    fn new(site: &str) -> Self {
        keel::http::client::install_tls_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { http, site: site.to_owned(), cookies: BTreeMap::new() }
    }

    /// One request to `url` (absolute, or a path of the site).
    async fn send(&mut self, method: Method, url: &str, form: Option<&[(&str, &str)]>) -> Answer {
        let url = if url.starts_with('/') { format!("{}{url}", self.site) } else { url.to_owned() };
        let jar = self.cookies.entry(origin(&url)).or_default();
        let cookie: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut req = self.http.request(method, &url).header("cookie", cookie.join("; "));
        if let Some(fields) = form {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
            req = req.header("content-type", "application/x-www-form-urlencoded").body(body.join("&"));
        }
        let resp = req.send().await.unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (k, v) = c.split(';').next().unwrap().split_once('=').unwrap();
            let gone = v.is_empty() || c.to_ascii_lowercase().contains("max-age=0");
            if gone {
                jar.remove(k);
            } else {
                jar.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = resp.status();
        let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        Answer { status, location, body: resp.text().await.unwrap() }
    }

    async fn get(&mut self, url: &str) -> Answer {
        self.send(Method::GET, url, None).await
    }

    /// A form of the site's, with the CSRF token of the page at `page`.
    async fn post(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Answer {
        let html = self.get(page).await.body;
        let csrf = field(&html, "csrf");
        let mut all = fields.to_vec();
        all.push(("csrf", &csrf));
        self.send(Method::POST, action, Some(&all)).await
    }

    /// The site's cookie `name`.
    fn cookie(&self, name: &str) -> Option<&String> {
        self.cookies.get(&self.site).and_then(|j| j.get(name))
    }

    /// Starts a log-in at the site (`start`: `/login/oidc/corp` …): the provider's authorization URL.
    async fn start(&mut self, start: &str) -> String {
        let a = self.get(start).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{start}: {}", a.body);
        assert!(self.cookie("ce_oidc").is_some(), "the flow's state is kept in the browser");
        a.location
    }

    /// At the provider from `authorization_url`, logs in as `login`: the callback URL the
    /// provider sends the browser to (not opened).
    async fn at_provider(&mut self, authorization_url: &str, login: &str) -> String {
        let a = self.get(authorization_url).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "authorize: {}", a.body);
        // Signed in at the provider already: straight back.
        if a.location.starts_with(&self.site) {
            return a.location;
        }
        // The provider answers with paths.
        let at = |location: &str| format!("{}{location}", origin(authorization_url));
        let interaction = at(&a.location);
        let form = self.get(&interaction).await;
        assert!(form.body.contains("Sign in to the test IdP"), "{}", form.body);
        let mut next = self.send(Method::POST, &interaction, Some(&[("login", login)])).await;
        // The provider's own redirects (resume the authorization), up to the site's callback.
        for _ in 0..5 {
            assert!(next.status.is_redirection(), "at the provider: {} {}", next.status, next.body);
            if next.location.starts_with(&self.site) {
                return next.location;
            }
            let to = if next.location.starts_with('/') { at(&next.location) } else { next.location.clone() };
            next = self.get(&to).await;
        }
        panic!("the provider never sent the browser back");
    }

    /// A whole log-in as `login`: the callback's answer.
    async fn log_in_with(&mut self, login: &str) -> Answer {
        let auth = self.start("/login/oidc/corp").await;
        let callback = self.at_provider(&auth, login).await;
        self.get(&callback).await
    }
}

/// `url` with its query parameter `name` set to `value`.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name { value.to_owned() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

async fn register(idp: &Idp, login: &str, email: &str, verified: bool) {
    let r = reqwest::Client::new()
        .post(format!("{}/__test/accounts", idp.issuer))
        .json(&serde_json::json!({ "login": login, "email": email, "email_verified": verified, "name": login }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

async fn control(idp: &Idp, path: &str, body: serde_json::Value) {
    let r = reqwest::Client::new().post(format!("{}{path}", idp.issuer)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// Signs up with a password through the site's form; the browser is then signed in.
async fn sign_up(b: &mut Browser, email: &str) {
    let a = b.post("/signup", "/signup", &[("name", "Bob"), ("email", email), ("password", PASSWORD)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
}

fn refused(a: &Answer, what: &str) {
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {}", a.body);
    assert!(a.body.contains("could not be completed"), "{what}: {}", a.body);
}

#[test]
fn logging_in_with_a_provider_and_its_attacks() {
    if !idp::ready() {
        return;
    }
    let port = keel::testing::unused_port();
    let site = format!("http://127.0.0.1:{port}");
    let idp = Idp::start(&format!("{site}/login/oidc/corp/callback"));
    let mut env = idp.env(&site);
    env.push(("CITYEVENTS_GATEWAY__HTTP__PORT".into(), port.to_string()));
    // A second provider nobody answers for.
    let down = format!("http://127.0.0.1:{}", keel::testing::unused_port());
    let p = "CITYEVENTS_AUTH__APP__OIDC__PROVIDERS__DOWN";
    for (k, v) in [("NAME", "Down"), ("ISSUER", &down), ("CLIENT_ID", "x"), ("CLIENT_SECRET", "y")] {
        env.push((format!("{p}__{k}"), v.to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut platform = Platform::all_in_one(&env);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tag = common::unique("");
    let alice = format!("alice{tag}");

    rt.block_on(async {
        // The log-in and sign-up pages offer the provider.
        let mut a = Browser::new(&site);
        for page in ["/login", "/signup"] {
            let html = a.get(page).await.body;
            assert!(
                html.contains("href=\"/login/oidc/corp\"") && html.contains("Continue with Corp"),
                "{page}: {html}"
            );
        }
        let next = a.get("/login?next=/my/joins").await.body;
        assert!(next.contains("href=\"/login/oidc/corp?next=%2Fmy%2Fjoins\""), "{next}");

        // A provider that cannot be reached is a sentence (503); it is asked at most once a
        // second, so a burst of log-ins does not become a burst of calls to it.
        for _ in 0..4 {
            let unreachable = a.get("/login/oidc/down").await;
            assert_eq!(unreachable.status, StatusCode::SERVICE_UNAVAILABLE, "{}", unreachable.body);
            assert!(unreachable.body.contains("Down cannot be reached right now"), "{}", unreachable.body);
        }
        platform.wait_for_line("its discovery failed less than a second ago", Duration::from_secs(10));

        // The authorization request: code flow, PKCE S256, state and nonce, the scopes.
        let auth = a.start("/login/oidc/corp").await;
        assert!(auth.starts_with(&format!("{}/auth?", idp.issuer)), "{auth}");
        assert_eq!(param(&auth, "response_type").as_deref(), Some("code"));
        assert_eq!(param(&auth, "code_challenge_method").as_deref(), Some("S256"));
        assert_eq!(param(&auth, "code_challenge").map(|c| c.len()), Some(43));
        assert_eq!(param(&auth, "state").as_ref(), a.cookie("ce_oidc"));
        assert!(param(&auth, "nonce").is_some_and(|n| n.len() == 43));
        assert_eq!(param(&auth, "scope").as_deref(), Some("openid email profile"));
        assert_eq!(param(&auth, "redirect_uri"), Some(format!("{site}/login/oidc/corp/callback")));

        // A new person: an account is made, verified as the provider says, and signed in.
        let callback = a.at_provider(&auth, &alice).await;
        let done = a.get(&callback).await;
        assert_eq!((done.status, done.location.as_str()), (StatusCode::SEE_OTHER, "/?notice=welcome"), "{}", done.body);
        assert!(a.cookie("ce_oidc").is_none(), "the state cookie is spent");
        let account = a.get("/account").await.body;
        assert!(account.contains(&format!("{alice}@example.test")), "{account}");
        assert!(account.contains("No password yet") && account.contains("Corp"), "{account}");
        assert!(account.contains("Your only way to log in"), "no unlink without another way: {account}");

        // The same callback again, the state cookie put back: the flow is spent.
        let state = param(&callback, "state").unwrap();
        a.cookies.get_mut(&site).unwrap().insert("ce_oidc".into(), state.clone());
        refused(&a.get(&callback).await, "a replayed callback");

        // Its spent code in a new flow (with that flow's own state and cookie): the provider
        // refuses the code (used, and bound to another PKCE challenge).
        let mut c = Browser::new(&site);
        let other = c.start("/login/oidc/corp").await;
        let code = param(&callback, "code").unwrap();
        let injected = format!(
            "{site}/login/oidc/corp/callback?code={}&state={}",
            encode(&code),
            encode(&param(&other, "state").unwrap())
        );
        refused(&c.get(&injected).await, "a spent code injected into another flow");

        // A callback opened in another browser (login CSRF): its state is not that browser's.
        let mut victim = Browser::new(&site);
        let mut attacker = Browser::new(&site);
        let auth = attacker.start("/login/oidc/corp").await;
        let callback = attacker.at_provider(&auth, "mallory").await;
        refused(&victim.get(&callback).await, "another browser's callback");
        let _ = victim.start("/login/oidc/corp").await;
        refused(&victim.get(&callback).await, "another browser's callback, with a flow of its own");

        // The same person again, in a new browser: the same account.
        let mut a2 = Browser::new(&site);
        let done = a2.log_in_with(&alice).await;
        assert_eq!(
            (done.status, done.location.as_str()),
            (StatusCode::SEE_OTHER, "/?notice=signed_in"),
            "{}",
            done.body
        );
        assert!(a2.get("/account").await.body.contains(&format!("{alice}@example.test")));

        // A tampered nonce: the ID token carries it, and it is not the flow's.
        let mut n = Browser::new(&site);
        let auth = n.start("/login/oidc/corp").await;
        let tampered = with_param(&auth, "nonce", "a-nonce-the-attacker-chose-and-replays-000000");
        let callback = n.at_provider(&tampered, &alice).await;
        refused(&n.get(&callback).await, "a tampered nonce");
        platform.wait_for_line("Invalid nonce", Duration::from_secs(10));

        // A tampered PKCE challenge: the code is bound to it, and auth's verifier does not match.
        let mut p = Browser::new(&site);
        let auth = p.start("/login/oidc/corp").await;
        let tampered = with_param(&auth, "code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGjSstw-cM");
        let callback = p.at_provider(&tampered, &alice).await;
        refused(&p.get(&callback).await, "a tampered PKCE challenge");
        platform.wait_for_line("the provider refused the code", Duration::from_secs(10));

        // Forged ID tokens in the provider's answer.
        for (mode, reason) in [
            ("key", "Signature verification failed"),
            ("none", "ID token failed its checks"),
            ("tampered", "Signature verification failed"),
            ("audience", "Invalid audiences"),
            ("issuer", "Invalid issuer"),
            ("expired", "Expired"),
        ] {
            control(&idp, "/__test/forge", serde_json::json!({ "mode": mode })).await;
            let mut f = Browser::new(&site);
            refused(&f.log_in_with(&alice).await, &format!("a forged ID token ({mode})"));
            platform.wait_for(
                reason,
                |l| l.contains("ID token failed its checks") && l.contains(reason),
                Duration::from_secs(10),
            );
            platform.seen.clear();
        }

        // The provider rotates its signing key: its new key id is fetched, and logging in works.
        control(&idp, "/__test/rotate", serde_json::json!({})).await;
        let mut r = Browser::new(&site);
        let done = r.log_in_with(&alice).await;
        assert_eq!(
            (done.status, done.location.as_str()),
            (StatusCode::SEE_OTHER, "/?notice=signed_in"),
            "{}",
            done.body
        );

        // An account with a password and the provider's verified address: linked only once its
        // owner gives the password.
        let bob = format!("bob{tag}");
        let bob_email = format!("{bob}@example.test");
        sign_up(&mut Browser::new(&site), &bob_email).await;
        let mut b = Browser::new(&site);
        let offer = b.log_in_with(&bob).await;
        assert_eq!(offer.status, StatusCode::OK, "{}", offer.body);
        assert!(offer.body.contains("Link your Corp log-in") && offer.body.contains(&bob_email), "{}", offer.body);
        assert!(b.cookie("ce_session").is_none(), "not signed in before the password");
        let offer_token = field(&offer.body, "offer");
        let wrong = b
            .post("/login", "/login/oidc/link", &[("offer", &offer_token), ("password", "not the password at all")])
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
        assert!(wrong.body.contains("That is not this account"), "{}", wrong.body);
        let linked = b.post("/login", "/login/oidc/link", &[("offer", &offer_token), ("password", PASSWORD)]).await;
        assert_eq!(
            (linked.status, linked.location.as_str()),
            (StatusCode::SEE_OTHER, "/?notice=signed_in"),
            "{}",
            linked.body
        );
        let spent = Browser::new(&site)
            .post("/login", "/login/oidc/link", &[("offer", &offer_token), ("password", PASSWORD)])
            .await;
        assert_eq!(spent.status, StatusCode::BAD_REQUEST, "an offer is spent once used: {}", spent.body);
        // Linked: the provider now signs straight in.
        let mut b2 = Browser::new(&site);
        let done = b2.log_in_with(&bob).await;
        assert_eq!(done.location, "/?notice=signed_in", "{}", done.body);

        // The provider has not verified the address an account uses: never linked.
        let carol_email = format!("carol{tag}@example.test");
        sign_up(&mut Browser::new(&site), &carol_email).await;
        register(&idp, &format!("carol{tag}"), &carol_email, false).await;
        let unverified = Browser::new(&site).log_in_with(&format!("carol{tag}")).await;
        assert_eq!(unverified.status, StatusCode::CONFLICT, "{}", unverified.body);
        assert!(unverified.body.contains("has not verified this address"), "{}", unverified.body);
        // Nor does an unverified address make an account: the same answer, whoever has it.
        register(&idp, &format!("dave{tag}"), &format!("dave{tag}@example.test"), false).await;
        let nobody = Browser::new(&site).log_in_with(&format!("dave{tag}")).await;
        assert_eq!(nobody.status, StatusCode::CONFLICT, "{}", nobody.body);
        assert!(nobody.body.contains("has not verified this address"), "{}", nobody.body);

        // Unlinking: Bob has a password, so he may; Alice's provider is her only way in.
        let html = b2.get("/account").await.body;
        assert!(html.contains("/account/identities/corp/unlink"), "{html}");
        let gone = b2.post("/account", "/account/identities/corp/unlink", &[]).await;
        assert_eq!((gone.status, gone.location.as_str()), (StatusCode::SEE_OTHER, "/account?notice=unlinked"));
        let offer = Browser::new(&site).log_in_with(&bob).await;
        assert!(
            offer.body.contains("Link your Corp log-in"),
            "unlinked, the provider no longer signs in: {}",
            offer.body
        );
        let kept = a2.post("/account", "/account/identities/corp/unlink", &[]).await;
        assert_eq!(kept.status, StatusCode::CONFLICT, "{}", kept.body);

        // Linking from the account page while signed in: only with the account's password (a
        // session alone adds no way in), and only from the site's own form.
        let html = b2.get("/account").await.body;
        assert!(
            html.contains("action=\"/account/identities/link\"") && html.contains("name=\"provider\" value=\"corp\""),
            "{html}"
        );
        let link = [("provider", "corp"), ("password", PASSWORD)];
        let forged = b2.send(Method::POST, "/account/identities/link", Some(&link)).await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "no CSRF token: {}", forged.body);
        let wrong =
            b2.post("/account", "/account/identities/link", &[("provider", "corp"), ("password", "not it")]).await;
        assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{}", wrong.body);
        assert!(wrong.body.contains("id=\"link_password-error\">Is wrong."), "{}", wrong.body);
        let missing = b2.post("/account", "/account/identities/link", &[("provider", "corp")]).await;
        assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.body);
        assert!(missing.body.contains("link_password-error"), "{}", missing.body);
        let unknown =
            b2.post("/account", "/account/identities/link", &[("provider", "nope"), ("password", PASSWORD)]).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.body);
        let go = b2.post("/account", "/account/identities/link", &link).await;
        assert_eq!(go.status, StatusCode::OK, "{}", go.body);
        assert!(b2.cookie("ce_oidc").is_some(), "the flow's state is kept in the browser");
        let auth = go
            .body
            .split("class=\"button\" href=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("a link to the provider: {}", go.body))
            .replace("&#38;", "&");
        assert!(auth.starts_with(&format!("{}/auth?", idp.issuer)), "{auth}");
        let callback = b2.at_provider(&auth, &bob).await;
        let done = b2.get(&callback).await;
        assert_eq!(
            (done.status, done.location.as_str()),
            (StatusCode::SEE_OTHER, "/account?notice=linked"),
            "{}",
            done.body
        );
        assert!(b2.get("/account").await.body.contains("/account/identities/corp/unlink"));
        // The owner hears of the new way in.
        let told = |p: &Platform| {
            p.mails().iter().any(|m| m.contains(&format!("To: {bob_email}")) && m.contains("log in with Corp"))
        };
        for _ in 0..100 {
            if told(&platform) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(told(&platform), "a sign_in_added mail to {bob_email}");

        // A link started before the account's sessions ended does not finish.
        let gone = b2.post("/account", "/account/identities/corp/unlink", &[]).await;
        assert_eq!(gone.status, StatusCode::SEE_OTHER, "{}", gone.body);
        let go = b2.post("/account", "/account/identities/link", &link).await;
        assert_eq!(go.status, StatusCode::OK, "{}", go.body);
        let auth = go.body.split("class=\"button\" href=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
        let auth = auth.replace("&#38;", "&");
        let callback = b2.at_provider(&auth, &bob).await;
        let mut other = Browser::new(&site);
        let signed_in = other.post("/login", "/login", &[("email", &bob_email), ("password", PASSWORD)]).await;
        assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.body);
        let ended = other.post("/account", "/account/logout-all", &[]).await;
        assert!(ended.status.is_redirection(), "{}", ended.body);
        let late = b2.get(&callback).await;
        assert!(!late.location.contains("notice=linked"), "{} {}", late.location, late.body);
        platform.wait_for_line("the session that started the link has ended", Duration::from_secs(10));
        let mut again = Browser::new(&site);
        again.post("/login", "/login", &[("email", &bob_email), ("password", PASSWORD)]).await;
        let html = again.get("/account").await.body;
        assert!(html.contains("Link Corp") && !html.contains("/account/identities/corp/unlink"), "not linked: {html}");

        // A cancel at the provider is a sentence on the log-in page.
        let canceled = Browser::new(&site).get("/login/oidc/corp/callback?error=access_denied&state=x").await;
        assert!(canceled.body.contains("was canceled"), "{}", canceled.body);
    });
}
