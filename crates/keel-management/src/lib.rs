//! The management listener: `/metrics` and `/admin/*`.
//!
//! | route | answers |
//! |---|---|
//! | `GET /metrics` | Prometheus text format (no token) |
//! | `GET /admin/status[?refresh=off\|N]` | the operator page: HTML (reloading itself every 15 s), or JSON with `Accept: application/json` |
//! | `GET /admin/console` | the operations page of this instance: drain, log level, run a worker, pause a consumer, dead letters, recent changes ([`ops`]) |
//! | `POST /admin/console/instance`, `…/log-level`, `…/workers/{name}`, `…/consumers/{topic}/{group}`, `…/dead-letters/{topic}` | a signed-in browser's change from the operations page |
//! | `GET /admin/flags[?prefix=…]` | the feature flags in effect: JSON, or for a browser the console page with a form per flag |
//! | `POST /admin/console/flags/{key}` | a signed-in browser's change of a flag: on, off, save a definition, back to the default ([`console`](crate#flags)) |
//! | `GET`/`PUT`/`DELETE /admin/flags/{key}` | one flag; set or remove its runtime override ([`flags`](crate#flags)) |
//! | `GET /admin/flags/{key}/history` | its override changes, newest first |
//! | `POST /admin/flags/{key}/evaluate` | what it gives a user, environment, version and attributes |
//! | `GET /admin/audit` | the service's audit log, filtered and paged: HTML, JSON, or an export as CSV or JSON lines ([`audit`]); 404 when it keeps none |
//! | `GET`/`PUT /admin/log-level` | the log filter; a change (optionally with `expires_in`, after which it reverts) is recorded as a reload |
//! | `GET /admin/login` | the sign-in form; with `?code=…` a one-time link that signs the browser in |
//! | `POST /admin/login` | the form's token (`application/x-www-form-urlencoded`): signs the browser in |
//! | `POST /admin/logout` | ends the browser's session |
//! | `GET /admin/static/admin.css` | the pages' stylesheet |
//! | `GET /`, `GET /admin` | 303 to `/admin/status` (on a listener of its own) |
//! | `GET /favicon.ico` | 204: no icon, so a browser's console shows no 404 (on a listener of its own) |
//!
//! `/admin/status`, `/admin/flags`, `/admin/audit` and `/admin/log-level` require
//! `Authorization: Bearer <management.admin_token>` (the scheme in any case) on every address,
//! loopback included: a local process (a sidecar, a compromised neighbour) is not trusted by
//! position. A browser signs in instead, with the token or a one-time link ([`SignInCodes`]):
//! its session cookie is accepted for `GET` and `HEAD`, and for the console's forms with the
//! session's CSRF token; any other change needs the bearer token. A
//! browser without either is sent to the sign-in form; a script gets 401. Token comparisons take
//! the same time wherever the given token differs. With no token configured every `/admin/*`
//! route answers 401, naming the setting: admin is closed, not open. Any other path answers 404.
//!
//! # Flags
//!
//! `PUT /admin/flags/{key}` takes `{"flag": {"enabled": true, "strategy": "percentage",
//! "rules": {"percentage": 10}}, "reason": "ramp up"}` and answers the flag as it now is; an
//! invalid definition is a 422 naming each problem's path. `DELETE` takes `{"reason": "…"}` and
//! answers 204 (404 when the flag has no override). The override is stored where
//! `features.store` says (the service's database: every replica applies it within
//! `features.store.poll_interval`), kept in the flag's history, and recorded in the service's
//! audit log when it keeps one. A 503 means the store could not be written: nothing changed.
//!
//! # Console
//!
//! Every `POST /admin/console/…` form needs the session cookie, the session's CSRF token, a
//! reason and a ticked confirmation; each change is logged (`operator change`), kept in the
//! listener's journal shown on the operations page, and written to the service's audit log when
//! it keeps one. Consumers and dead letters reach this crate through [`ops::ConsumerOps`], which
//! keel-app implements over the service's bus.
//!
//! A signed-in browser acts on the flags page instead: each flag has a form (turn on or off,
//! save an edited definition, go back to the default) that needs a reason, a ticked
//! confirmation and the session's CSRF token (an HMAC of the session under the admin token), and
//! is recorded with the session as the actor (`operator:<session id>`).
//!
//! This is `keel-management`, re-exported by `keel` as `keel::management`; of Keel's crates it
//! depends on those whose state the page shows (config, HTTP, telemetry, health, features, rate
//! limits, resilience, workers). keel-app builds the
//! [`status::Sources`] of each service and serves [`Admin::router`] on `management.addr`.

#![forbid(unsafe_code)]

pub mod audit;
mod config;
mod console;
mod flags;
mod level;
mod operate;
pub mod ops;
mod routes;
mod session;
pub mod status;

pub use config::ManagementConfig;
pub use routes::Admin;
pub use session::SignInCodes;
