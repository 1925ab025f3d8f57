//! The notifier's tables and every statement on them, in one portable dialect (`$n`
//! placeholders rewritten by `Db::sql`) for PostgreSQL, MySQL/MariaDB and SQLite. The callers
//! decide and hold the transactions; these only read and write.
//!
//! * [`notifications`]: `notifications`, what each user is told in the app.
//! * [`activity`]: `event_info`, `event_participants`, `pending_notices` and
//!   `organizer_digests`, what is followed of each event to tell its people of changes and joins.
//! * [`mail`]: `mail_contacts`, `mail_preferences` and `mail_log`.
//! * [`follows`]: `follows`, who follows which organizer.
//!
//! The inbox and outbox tables are Keel's.

pub(crate) mod activity;
pub(crate) mod follows;
pub(crate) mod mail;
pub(crate) mod notifications;

/// A transaction on the notifier's database.
pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Any>;
