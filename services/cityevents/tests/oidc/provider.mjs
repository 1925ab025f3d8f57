// A local OpenID Provider for City Events' sign-in tests: panva's oidc-provider (OpenID
// Certified), configured as a company IdP would be (authorization code flow, PKCE required,
// RS256 ID tokens carrying the e-mail claims), with a one-field login form and test controls.
//
// Env: PORT (0 picks one), CLIENT_ID, CLIENT_SECRET, REDIRECT_URIS (comma-separated).
// Prints `oidc-provider listening on http://127.0.0.1:<port>` once it answers.
//
// The login form (`/interaction/<uid>`) signs in whoever is typed: an account registered with
// `POST /__test/accounts {login, email, email_verified, name}`, else `<login>@example.test`,
// verified. Test controls (loopback only, like the whole server):
// * `POST /__test/rotate`: a new signing key (new `kid`); the old one leaves the JWKS at once.
// * `POST /__test/forge {mode}`: the next token response carries a forged ID token: `key`
//   (signed by another key under the real `kid`), `none` (alg none), `tampered` (claims changed,
//   signature kept), `audience`, `issuer` or `expired` (re-signed by the real key).
import http from "node:http";
import Provider from "oidc-provider";
import * as jose from "jose";

const { CLIENT_ID, CLIENT_SECRET, REDIRECT_URIS } = process.env;
if (!CLIENT_ID || !CLIENT_SECRET || !REDIRECT_URIS) {
  throw new Error("CLIENT_ID, CLIENT_SECRET and REDIRECT_URIS must be set");
}

const accounts = new Map();
let forge = null;
let current = null;
let issuer = null;
let signing = null;

async function newKey() {
  const { privateKey } = await jose.generateKeyPair("RS256", { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { ...jwk, kid: `k-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`, use: "sig", alg: "RS256" };
}

function account(login) {
  const known = accounts.get(login);
  return {
    sub: `sub-${login}`,
    email: known?.email ?? `${login}@example.test`,
    email_verified: known?.email_verified ?? true,
    name: known?.name ?? login,
  };
}

function build(key) {
  const provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      redirect_uris: REDIRECT_URIS.split(","),
      response_types: ["code"],
      grant_types: ["authorization_code"],
      token_endpoint_auth_method: "client_secret_basic",
    }],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"] },
    // The ID token carries what its scopes ask for, as Google's and most IdPs' do.
    conformIdTokenClaims: false,
    findAccount: async (_ctx, sub) => {
      const login = sub.replace(/^sub-/, "");
      return { accountId: sub, claims: async () => account(login) };
    },
    jwks: { keys: [key] },
    cookies: { keys: ["cityevents-oidc-test-cookie-key"] },
    renderError: async (ctx, out) => {
      ctx.type = "text/plain";
      ctx.body = `error: ${out.error}: ${out.error_description ?? ""}`;
    },
  });
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === "/token" && ctx.status === 200 && forge && ctx.body?.id_token) {
      const mode = forge;
      forge = null;
      ctx.body = { ...ctx.body, id_token: await forged(mode, ctx.body.id_token) };
    }
  });
  return provider;
}

async function forged(mode, token) {
  const [h, p, s] = token.split(".");
  const header = JSON.parse(Buffer.from(h, "base64url"));
  const payload = JSON.parse(Buffer.from(p, "base64url"));
  const now = Math.floor(Date.now() / 1000);
  const sign = async (claims, key) =>
    new jose.SignJWT(claims).setProtectedHeader({ alg: "RS256", kid: header.kid, typ: header.typ }).sign(
      await jose.importJWK(key, "RS256"),
    );
  switch (mode) {
    case "key":
      return sign(payload, await newKey());
    case "none":
      return `${Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url")}.${p}.`;
    case "tampered": {
      const changed = { ...payload, sub: "sub-mallory", email: "mallory@example.test" };
      return `${h}.${Buffer.from(JSON.stringify(changed)).toString("base64url")}.${s}`;
    }
    case "audience":
      return sign({ ...payload, aud: "someone-else" }, signing);
    case "issuer":
      return sign({ ...payload, iss: "http://evil.example" }, signing);
    case "expired":
      return sign({ ...payload, iat: now - 7200, exp: now - 3600 }, signing);
    default:
      throw new Error(`unknown forge mode ${mode}`);
  }
}

async function body(req) {
  let text = "";
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 65536) throw new Error("body too large");
  }
  return text;
}

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function interaction(req, res) {
  const provider = current;
  const details = await provider.interactionDetails(req, res);
  if (req.method === "GET") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(`<!doctype html><html lang="en"><head><title>Test IdP: sign in</title><link rel="icon" href="data:,"></head><body><main>
<h1>Test IdP</h1><form method="post" action="/interaction/${escape(details.uid)}">
<label>Account <input name="login" autocomplete="username" required></label>
<button type="submit">Sign in to the test IdP</button></form></main></body></html>`);
    return;
  }
  const login = new URLSearchParams(await body(req)).get("login")?.trim();
  if (!login) {
    res.writeHead(400).end("login is required");
    return;
  }
  const accountId = `sub-${login}`;
  const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { login: { accountId }, consent: { grantId } }, {
    mergeWithLastSubmission: false,
  });
}

async function control(req, res) {
  const input = req.method === "POST" ? JSON.parse((await body(req)) || "{}") : {};
  if (req.url === "/__test/rotate") {
    signing = await newKey();
    current = build(signing);
  } else if (req.url === "/__test/forge") {
    forge = input.mode;
  } else if (req.url === "/__test/accounts") {
    accounts.set(input.login, input);
  } else {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(204).end();
}

const server = http.createServer((req, res) => {
  const handle = req.url.startsWith("/interaction/")
    ? interaction(req, res)
    : req.url.startsWith("/__test/")
      ? control(req, res)
      : current.callback()(req, res);
  Promise.resolve(handle).catch((e) => {
    console.error(e);
    if (!res.headersSent) res.writeHead(500);
    res.end(String(e));
  });
});
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", async () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  signing = await newKey();
  current = build(signing);
  console.log(`oidc-provider listening on ${issuer}`);
});
