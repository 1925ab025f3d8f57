//! Every SQL statement of auth, one module per group of tables; the other modules decide and
//! call these.
//!
//! Auth owns `users` ([`accounts`]; its session versions in [`sessions`], `contact_sent_at` in
//! [`mail`]), `refresh_tokens` ([`tokens`]), `login_throttle` ([`lockout`]), `account_tokens`
//! and `registration_notices` ([`mail`]); the outbox's and the audit log's tables are Keel's.
//!
//! One portable dialect for PostgreSQL, MySQL/MariaDB and SQLite through sqlx's `Any` driver:
//! `$n` placeholders (rewritten by `Db::statement`), ids bound as text, times as microseconds;
//! a statement that cannot be portable (an upsert, `FOR UPDATE`) branches on `Db::backend`.
//! Functions take the `Db` (a pooled connection of their own) or the caller's transaction, so
//! the callers decide what commits together.

pub(crate) mod accounts;
pub(crate) mod lockout;
pub(crate) mod mail;
pub(crate) mod oidc;
pub(crate) mod sessions;
pub(crate) mod tokens;
