//! SQL statements as OpenTelemetry client spans: [`Traced`], the executor [`Db::exec`] and
//! [`Db::on`] hand out, and the one-pass reading of a statement's operation and table.
//!
//! sqlx makes no span of its own (it logs each statement at `debug`), so a request's trace
//! showed nothing of its queries. A statement run through [`Traced`] while spans are exported
//! and the caller's span is sampled is a client span with OpenTelemetry's database conventions;
//! otherwise the statement goes to the inner executor as it came, and no span is made.
//!
//! Either way a statement that fails is counted where it fails, once: `db_errors_total` by
//! kind, and a connection error marks the database down ([`Db::count_error`]). So a caller
//! propagates the error with `?` (`DataError: From<sqlx::Error>`) and counts nothing itself.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream};
use futures_util::{FutureExt as _, StreamExt as _};
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::error::BoxDynError;
use sqlx::{Any, Either, Execute, Executor, SqlStr};
use tracing::Instrument as _;

use super::{Backend, Db, error};

/// Where the pool connects, as the database conventions name it on each span. Never the user
/// name or the password.
#[derive(Debug, Default)]
pub(crate) struct Target {
    /// The database's name (`db.namespace`); none for SQLite.
    namespace: Option<String>,
    address: Option<String>,
    port: Option<u16>,
}

impl Target {
    /// From the connection URL: host, port (the backend's default when the URL has none) and
    /// database name. A SQLite file has no server: nothing.
    pub(crate) fn of(backend: Backend, url: &sqlx::any::AnyConnectOptions) -> Self {
        let url = &url.database_url;
        let default_port = match backend {
            Backend::Postgres => 5432,
            Backend::MySql => 3306,
            Backend::Sqlite => return Self::default(),
        };
        let name = url.path().trim_start_matches('/');
        Self {
            namespace: (!name.is_empty()).then(|| name.to_owned()),
            address: url.host_str().filter(|h| !h.is_empty()).map(str::to_owned),
            port: Some(url.port().unwrap_or(default_port)),
        }
    }
}

/// An executor that runs each statement in a client span when the request it serves is traced
/// (see [`Db::exec`] and [`Db::on`]). Any `Executor<Database = Any>` goes inside: `&AnyPool`,
/// `&mut AnyConnection` (a pooled connection's or a transaction's).
pub struct Traced<'a, X> {
    /// None: never traced.
    db: Option<&'a Db>,
    inner: X,
}

impl<'a, X> Traced<'a, X> {
    pub(crate) fn new(db: &'a Db, inner: X) -> Self {
        Self { db: Some(db), inner }
    }

    /// `inner` as it is, never traced: for code that takes a [`Traced`] where no [`Db`] is at
    /// hand (a pool made without one).
    pub fn untraced(inner: X) -> Self {
        Self { db: None, inner }
    }

    /// The executor inside.
    pub fn into_inner(self) -> X {
        self.inner
    }
}

impl<X: std::fmt::Debug> std::fmt::Debug for Traced<'_, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced").field("inner", &self.inner).finish_non_exhaustive()
    }
}

/// Whether a statement made now gets a span: spans are exported and the caller's span is
/// sampled (as for Redis commands). Recording one costs microseconds that an unexported or
/// unsampled span would buy nothing with.
fn tracing_now() -> bool {
    keel_telemetry::exporting() && keel_telemetry::span_context(&tracing::Span::current()).is_sampled()
}

/// A statement taken apart to read its text first, put back together for the inner executor
/// (as sqlx's own `AnyConnection` executor takes it apart).
struct Taken {
    sql: SqlStr,
    arguments: Option<AnyArguments>,
    persistent: bool,
}

impl Execute<'_, Any> for Taken {
    fn sql(self) -> SqlStr {
        self.sql
    }
    fn statement(&self) -> Option<&AnyStatement> {
        // The `Any` executors read the text, never a cached statement.
        None
    }
    fn take_arguments(&mut self) -> Result<Option<AnyArguments>, BoxDynError> {
        Ok(self.arguments.take())
    }
    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// Takes `query` apart; an argument that could not be encoded is the statement's error, as
/// the inner executor would return it.
fn take<'q, E: Execute<'q, Any>>(mut query: E) -> Result<Taken, sqlx::Error> {
    let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
    let persistent = query.persistent();
    Ok(Taken { sql: query.sql(), arguments, persistent })
}

impl Db {
    /// `db.system.name`: `mysql` until a MySQL-protocol server is known to be MariaDB.
    fn system_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Postgres => "postgresql",
            Backend::Sqlite => "sqlite",
            Backend::MySql if self.inner.mariadb.get() == Some(&true) => "mariadb",
            Backend::MySql => "mysql",
        }
    }

    /// The client span of the statement `sql`: named `{operation} {table}` (or the operation
    /// alone, or the database system when the text names neither), with the statement's text
    /// as written, placeholders and all, and never a bound value.
    pub(crate) fn statement_span(&self, sql: &str) -> tracing::Span {
        let target = &self.inner.target;
        let summary = summarize(sql);
        let name = match (&summary.operation, &summary.collection) {
            (Some(op), Some(table)) => Cow::Owned(format!("{op} {table}")),
            (Some(op), None) => Cow::Borrowed(op.as_ref()),
            (None, _) => Cow::Borrowed(self.system_name()),
        };
        tracing::info_span!(
            "sql",
            otel.name = %name,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = self.system_name(),
            db.operation.name = summary.operation.as_deref(),
            db.collection.name = summary.collection.as_deref(),
            db.query.summary = summary.operation.is_some().then_some(name.as_ref()),
            db.query.text = sql,
            db.namespace = target.namespace.as_deref(),
            server.address = target.address.as_deref(),
            // As an `i64`: the OpenTelemetry layer exports a `u64` as a string.
            server.port = target.port.map(i64::from),
            db.response.returned_rows = tracing::field::Empty,
            db.response.status_code = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        )
    }

    /// A span for `sql` when the caller is traced (see [`tracing_now`]), else none.
    pub(crate) fn span_if_traced(&self, sql: &str) -> Option<tracing::Span> {
        tracing_now().then(|| self.statement_span(sql))
    }
}

/// Marks `span` failed with `e`: `error.type` is the server's code for a database error (the
/// SQLSTATE; MySQL's error number; SQLite's extended result code), also `db.response.status_code`,
/// else the kind `db_errors_total` counts it under. Never the message, which may quote a value.
pub(crate) fn record_error(span: &tracing::Span, e: &sqlx::Error) {
    span.record("otel.status_code", "ERROR");
    match error::server_code_of(e) {
        Some(code) => {
            span.record("db.response.status_code", code.as_str());
            span.record("error.type", code.as_str());
        }
        None => {
            span.record("error.type", error::sql_kind(e));
        }
    }
}

/// The inner executor's stream of results, polled inside the statement's span; errors and the
/// rows returned are recorded on it, and errors counted. The span ends when the stream is
/// dropped.
struct InSpan<'e> {
    inner: BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>,
    span: tracing::Span,
    rows: i64,
    db: Db,
}

impl Stream for InSpan<'_> {
    type Item = Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let poll = {
            let _entered = this.span.enter();
            this.inner.poll_next_unpin(cx)
        };
        match &poll {
            Poll::Ready(Some(Ok(Either::Right(_)))) => this.rows = this.rows.saturating_add(1),
            Poll::Ready(Some(Err(e))) => {
                record_error(&this.span, e);
                this.db.count_error(e);
            }
            Poll::Ready(None) => {
                this.span.record("db.response.returned_rows", this.rows);
            }
            Poll::Ready(Some(Ok(Either::Left(_)))) | Poll::Pending => {}
        }
        poll
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<'c, X> Executor<'c> for Traced<'_, X>
where
    X: Executor<'c, Database = Any>,
{
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let Some(db) = self.db else {
            return self.inner.fetch_many(query);
        };
        if !tracing_now() {
            let db = db.clone();
            return self.inner.fetch_many(query).inspect(move |r| db.count_failed(r)).boxed();
        }
        let taken = match take(query) {
            Ok(t) => t,
            Err(e) => {
                db.count_error(&e);
                return futures_util::stream::once(std::future::ready(Err(e))).boxed();
            }
        };
        let span = db.statement_span(taken.sql.as_str());
        let inner = {
            let _entered = span.enter();
            self.inner.fetch_many(taken)
        };
        InSpan { inner, span, rows: 0, db: db.clone() }.boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let Some(db) = self.db else {
            return self.inner.fetch_optional(query);
        };
        if !tracing_now() {
            let db = db.clone();
            return self.inner.fetch_optional(query).inspect(move |r| db.count_failed(r)).boxed();
        }
        let taken = match take(query) {
            Ok(t) => t,
            Err(e) => {
                db.count_error(&e);
                return std::future::ready(Err(e)).boxed();
            }
        };
        let span = db.statement_span(taken.sql.as_str());
        let run = {
            let _entered = span.enter();
            self.inner.fetch_optional(taken)
        };
        let db = db.clone();
        async move {
            let result = run.instrument(span.clone()).await;
            match &result {
                Ok(row) => {
                    span.record("db.response.returned_rows", i64::from(row.is_some()));
                }
                Err(e) => {
                    record_error(&span, e);
                    db.count_error(e);
                }
            }
            result
        }
        .boxed()
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        self.inner.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.inner.describe(sql)
    }
}

/// What a statement's text says it does, read in one pass without allocating (but for an
/// operation keyword outside the common ones, or a quoted qualified name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Summary<'s> {
    /// The first keyword, upper-cased (`SELECT`, `INSERT`, `WITH`); none when the text does
    /// not start with a word.
    pub(crate) operation: Option<Cow<'static, str>>,
    /// The one table the statement evidently works on, unquoted, with its schema if written:
    /// the table after `INSERT … INTO`, `UPDATE`, or the first `FROM` of a `SELECT` or
    /// `DELETE`. None when the statement may touch another one (a join, a comma list, a
    /// subquery, `USING`, `UPDATE … FROM`, several statements), or names none.
    pub(crate) collection: Option<Cow<'s, str>>,
}

/// The operations a span is most often named after, so that naming one needs no allocation.
const OPERATIONS: [&str; 27] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "WITH",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SET",
    "START",
    "SAVEPOINT",
    "RELEASE",
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "REPLACE",
    "MERGE",
    "VALUES",
    "PRAGMA",
    "EXPLAIN",
    "SHOW",
    "LOCK",
    "CALL",
    "ANALYZE",
    "VACUUM",
    "COPY",
];

/// The longest keyword read as an operation.
const MAX_OPERATION: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'s> {
    /// A bare word (keyword or name), or a number.
    Word(&'s str),
    /// A quoted name, without its quotes.
    Quoted(&'s str),
    /// A string literal, dollar-quoted string or placeholder: something that names nothing.
    Literal,
    /// One character of punctuation.
    Punct(u8),
}

/// The tokens of SQL text, comments and whitespace skipped. Bytes from 0x80 are word bytes, so
/// every token starts and ends on a character boundary.
#[derive(Clone)]
struct Tokens<'s> {
    s: &'s str,
    /// Where reading goes on.
    i: usize,
    /// Where the last token read began.
    start: usize,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl<'s> Tokens<'s> {
    fn new(s: &'s str) -> Self {
        Self { s, i: 0, start: 0 }
    }

    /// A copy to read ahead with; assign it back to take what it read.
    fn peek(&self) -> Self {
        self.clone()
    }

    /// The index of the first `close` at or after `from` (`doubled` close characters are an
    /// escaped one), or the end.
    fn until(&self, from: usize, close: u8, doubled: bool) -> (usize, usize) {
        let b = self.s.as_bytes();
        let mut j = from;
        while j < b.len() {
            if b[j] == close {
                if doubled && b.get(j + 1) == Some(&close) {
                    j += 2;
                    continue;
                }
                return (j, j + 1);
            }
            j += 1;
        }
        (b.len(), b.len())
    }
}

impl<'s> Iterator for Tokens<'s> {
    type Item = Token<'s>;

    fn next(&mut self) -> Option<Token<'s>> {
        let s = self.s;
        let b = s.as_bytes();
        loop {
            self.start = self.i;
            let c = *b.get(self.i)?;
            let next = b.get(self.i + 1).copied();
            match c {
                c if c.is_ascii_whitespace() => self.i += 1,
                b'-' if next == Some(b'-') => {
                    self.i = b[self.i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| self.i + p + 1);
                }
                b'/' if next == Some(b'*') => {
                    // PostgreSQL nests block comments.
                    let mut depth = 0usize;
                    let mut j = self.i;
                    while j < b.len() {
                        if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                            depth += 1;
                            j += 2;
                        } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                            depth -= 1;
                            j += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            j += 1;
                        }
                    }
                    self.i = j.min(b.len());
                }
                b'\'' => {
                    let (_, after) = self.until(self.i + 1, b'\'', true);
                    self.i = after;
                    return Some(Token::Literal);
                }
                b'"' | b'`' | b'[' => {
                    let close = match c {
                        b'[' => b']',
                        q => q,
                    };
                    let (end, after) = self.until(self.i + 1, close, c != b'[');
                    let inner = &s[self.i + 1..end];
                    self.i = after;
                    return Some(Token::Quoted(inner));
                }
                b'$' if next.is_some_and(|n| n.is_ascii_digit()) => {
                    self.i += 1;
                    while b.get(self.i).is_some_and(u8::is_ascii_digit) {
                        self.i += 1;
                    }
                    return Some(Token::Literal);
                }
                b'$' => {
                    // A dollar-quoted string, `$$…$$` or `$tag$…$tag$`, else a lone `$`.
                    let tag_end = b[self.i + 1..]
                        .iter()
                        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                        .map(|p| self.i + 1 + p);
                    match tag_end {
                        Some(t) if b[t] == b'$' => {
                            let tag = &s[self.i..=t];
                            let body = t + 1;
                            self.i = s[body..].find(tag).map_or(b.len(), |p| body + p + tag.len());
                            return Some(Token::Literal);
                        }
                        _ => {
                            self.i += 1;
                            return Some(Token::Punct(c));
                        }
                    }
                }
                c if is_word_byte(c) => {
                    let start = self.i;
                    while b.get(self.i).is_some_and(|&c| is_word_byte(c)) {
                        self.i += 1;
                    }
                    return Some(Token::Word(&s[start..self.i]));
                }
                c => {
                    self.i += 1;
                    return Some(Token::Punct(c));
                }
            }
        }
    }
}

fn is(token: Option<Token<'_>>, keyword: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
}

fn is_any(token: Option<Token<'_>>, keywords: &[&str]) -> bool {
    keywords.iter().any(|k| is(token, k))
}

/// The operation a statement's first word names, upper-cased.
fn operation(word: &str) -> Option<Cow<'static, str>> {
    if let Some(known) = OPERATIONS.iter().find(|k| k.eq_ignore_ascii_case(word)) {
        return Some(Cow::Borrowed(known));
    }
    let plain = word.len() <= MAX_OPERATION && word.bytes().all(|c| c.is_ascii_alphabetic() || c == b'_');
    plain.then(|| Cow::Owned(word.to_ascii_uppercase()))
}

/// A table name at the head of `tokens`: a word or quoted name, with any `schema.` (and
/// `database.`) before it. Returns the name and the token after it.
fn table<'s>(sql: &'s str, tokens: &mut Tokens<'s>) -> Option<(Cow<'s, str>, Option<Token<'s>>)> {
    let mut parts: [&'s str; 3] = [""; 3];
    let mut n = 0;
    let mut quoted = false;
    let mut start = None;
    loop {
        let part = match tokens.next()? {
            Token::Word(w) => w,
            Token::Quoted(q) if !q.is_empty() => {
                quoted = true;
                q
            }
            _ => return None,
        };
        start.get_or_insert(tokens.start);
        *parts.get_mut(n)? = part;
        n += 1;
        let end = tokens.i;
        let after = tokens.next();
        if after != Some(Token::Punct(b'.')) {
            let parts = &parts[..n];
            let raw = &sql[start.unwrap_or(end)..end];
            let name = match parts {
                [one] => Cow::Borrowed(*one),
                // `schema.table` as written, when written without quotes or spaces.
                _ if !quoted && raw.len() == parts.iter().map(|p| p.len() + 1).sum::<usize>() - 1 => Cow::Borrowed(raw),
                _ => Cow::Owned(parts.join(".")),
            };
            return Some((name, after));
        }
    }
}

/// Whether the statement, after its table name and the token `after` it, names no other table:
/// no subquery or set operation (`SELECT`), join, `USING`, `FROM` at the top level (`UPDATE …
/// FROM`), and no second statement.
fn alone<'s>(tokens: &mut Tokens<'s>, after: Option<Token<'s>>) -> bool {
    let mut depth = match after {
        None => return true,
        Some(Token::Punct(b';')) => return tokens.next().is_none(),
        Some(Token::Punct(b'(')) => 1usize,
        Some(t) if is_any(Some(t), &["SELECT", "JOIN", "STRAIGHT_JOIN", "USING", "WITH", "FROM"]) => return false,
        Some(_) => 0,
    };
    while let Some(t) = tokens.next() {
        match t {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth = depth.saturating_sub(1),
            Token::Punct(b';') if depth == 0 => return tokens.next().is_none(),
            t if is_any(Some(t), &["SELECT", "JOIN", "STRAIGHT_JOIN", "USING", "WITH"]) => return false,
            t if depth == 0 && is(Some(t), "FROM") => return false,
            _ => {}
        }
    }
    true
}

/// Reads a statement's operation and, when it evidently works on one table, that table.
///
/// One pass over the text, comments and quoted strings skipped; never panics, whatever the text.
pub(crate) fn summarize(sql: &str) -> Summary<'_> {
    let mut tokens = Tokens::new(sql);
    let Some(Token::Word(first)) = tokens.next() else {
        return Summary::default();
    };
    let operation = operation(first);
    let collection = collection(sql, first, &mut tokens);
    Summary { operation, collection }
}

/// The one table of a statement that began with `first`; `tokens` follow that word.
fn collection<'s>(sql: &'s str, first: &str, tokens: &mut Tokens<'s>) -> Option<Cow<'s, str>> {
    let op = |k: &str| first.eq_ignore_ascii_case(k);
    if op("INSERT") || op("REPLACE") {
        // `INSERT [OR IGNORE | IGNORE | …] INTO t`.
        loop {
            match tokens.next()? {
                t if is(Some(t), "INTO") => break,
                Token::Word(_) => {}
                _ => return None,
            }
        }
        let (name, after) = table(sql, tokens)?;
        return alone(tokens, after).then_some(name);
    }
    if op("UPDATE") {
        // `UPDATE [OR ROLLBACK | LOW_PRIORITY | IGNORE | ONLY] t [[AS] alias] SET …`
        loop {
            let mut ahead = tokens.peek();
            let t = ahead.next();
            if is(t, "OR") {
                ahead.next();
            } else if !is_any(t, &["LOW_PRIORITY", "IGNORE", "ONLY"]) {
                break;
            }
            *tokens = ahead;
        }
        let (name, after) = table(sql, tokens)?;
        let after = after_alias(tokens, after)?;
        return alone(tokens, after).then_some(name);
    }
    if op("SELECT") || op("DELETE") {
        // The first `FROM` at the top level, with no other `SELECT` before it.
        let mut depth = 0usize;
        loop {
            match tokens.next()? {
                Token::Punct(b'(') => depth += 1,
                Token::Punct(b')') => depth = depth.saturating_sub(1),
                Token::Punct(b';') if depth == 0 => return None,
                t if is(Some(t), "SELECT") => return None,
                t if depth == 0 && is(Some(t), "FROM") => break,
                _ => {}
            }
        }
        let mut ahead = tokens.peek();
        if is(ahead.next(), "ONLY") {
            *tokens = ahead;
        }
        let (name, after) = table(sql, tokens)?;
        if after == Some(Token::Punct(b'(')) {
            // A table function (`generate_series(…)`).
            return None;
        }
        let after = after_alias(tokens, after)?;
        return alone(tokens, after).then_some(name);
    }
    None
}

/// The token after a table name's alias (`t AS x`, `t x`), reading it when there is one; `None`
/// when a comma follows the name or its alias (`FROM a, b`, `FROM a x, b y`, MySQL's
/// `UPDATE a, b`): a list of tables.
fn after_alias<'s>(tokens: &mut Tokens<'s>, after: Option<Token<'s>>) -> Option<Option<Token<'s>>> {
    let next = match after {
        Some(Token::Punct(b',')) => return None,
        Some(t) if is(Some(t), "AS") => {
            tokens.next();
            tokens.next()
        }
        // An alias, or the next clause's keyword: a comma after it can only follow an alias
        // (`LIMIT ?, ?` has a value between).
        Some(t @ Token::Word(_)) if !is_any(Some(t), &["SELECT", "JOIN", "STRAIGHT_JOIN", "USING", "WITH", "FROM"]) => {
            let mut ahead = tokens.peek();
            if ahead.next() == Some(Token::Punct(b',')) {
                return None;
            }
            return Some(after);
        }
        Some(Token::Quoted(_)) => tokens.next(),
        other => return Some(other),
    };
    (next != Some(Token::Punct(b','))).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::{Summary, summarize};

    fn read(sql: &str) -> (Option<String>, Option<String>) {
        let Summary { operation, collection } = summarize(sql);
        (operation.map(|o| o.into_owned()), collection.map(|c| c.into_owned()))
    }

    fn both(op: &str, table: &str) -> (Option<String>, Option<String>) {
        (Some(op.to_owned()), Some(table.to_owned()))
    }

    fn only(op: &str) -> (Option<String>, Option<String>) {
        (Some(op.to_owned()), None)
    }

    #[test]
    fn reads_the_operation_and_the_one_table() {
        let cases = [
            ("SELECT id, name FROM items ORDER BY id", both("SELECT", "items")),
            ("select * from events where id = $1", both("SELECT", "events")),
            ("SELECT a FROM items AS i WHERE i.id = ?", both("SELECT", "items")),
            ("SELECT a FROM items i WHERE i.id = ? ORDER BY a, b LIMIT ?, ?", both("SELECT", "items")),
            ("SELECT EXTRACT(EPOCH FROM now()) FROM items", both("SELECT", "items")),
            ("SELECT a FROM public.items", both("SELECT", "public.items")),
            ("SELECT a FROM \"public\".\"items\"", both("SELECT", "public.items")),
            ("SELECT a FROM `items` WHERE b IN (1, 2)", both("SELECT", "items")),
            ("SELECT a FROM [items]", both("SELECT", "items")),
            ("SELECT a FROM ONLY items", both("SELECT", "items")),
            ("SELECT * FROM t FOR UPDATE", both("SELECT", "t")),
            ("SELECT * FROM t;", both("SELECT", "t")),
            ("  -- a comment\n /* another /* nested */ one */ SELECT 1 FROM t", both("SELECT", "t")),
            ("/*+ MAX_EXECUTION_TIME(5) */ SELECT x FROM t", both("SELECT", "t")),
            ("SELECT 'FROM x' AS s, $$FROM y$$ FROM t", both("SELECT", "t")),
            ("SELECT $tag$ it's FROM z $tag$ FROM t", both("SELECT", "t")),
            ("INSERT INTO items (name) VALUES ($1)", both("INSERT", "items")),
            ("insert into items(name) values (?) returning id", both("INSERT", "items")),
            ("INSERT OR IGNORE INTO seen (id) VALUES (?)", both("INSERT", "seen")),
            ("INSERT IGNORE INTO seen (id) VALUES (?)", both("INSERT", "seen")),
            ("INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET a = excluded.a", both("INSERT", "t")),
            ("INSERT INTO t (a) VALUES (?) ON DUPLICATE KEY UPDATE a = VALUES(a)", both("INSERT", "t")),
            ("REPLACE INTO t (a) VALUES (?)", both("REPLACE", "t")),
            ("UPDATE items SET name = $1 WHERE id = $2", both("UPDATE", "items")),
            ("UPDATE OR ROLLBACK items SET n = 1", both("UPDATE", "items")),
            ("UPDATE LOW_PRIORITY IGNORE items SET n = 1", both("UPDATE", "items")),
            ("UPDATE items AS i SET n = 1", both("UPDATE", "items")),
            ("UPDATE t SET at = EXTRACT(EPOCH FROM now())", both("UPDATE", "t")),
            ("DELETE FROM items WHERE id = $1", both("DELETE", "items")),
            ("DELETE FROM ONLY items", both("DELETE", "items")),
            ("delete from items", both("DELETE", "items")),
            // No one table.
            ("SELECT 1", only("SELECT")),
            ("SELECT VERSION()", only("SELECT")),
            ("SELECT a FROM t JOIN u ON t.id = u.id", only("SELECT")),
            ("SELECT a FROM t LEFT OUTER JOIN u USING (id)", only("SELECT")),
            ("SELECT a FROM t, u WHERE t.id = u.id", only("SELECT")),
            ("SELECT a FROM t x, u y", only("SELECT")),
            ("SELECT a FROM t AS x, u", only("SELECT")),
            ("SELECT a FROM (SELECT 1) s", only("SELECT")),
            ("SELECT (SELECT max(id) FROM u) FROM t", only("SELECT")),
            ("SELECT a FROM t WHERE id IN (SELECT id FROM u)", only("SELECT")),
            ("SELECT a FROM t UNION SELECT a FROM u", only("SELECT")),
            ("SELECT * FROM generate_series(1, 3)", only("SELECT")),
            ("SELECT 1 FROM t; SELECT 2 FROM u", only("SELECT")),
            ("INSERT INTO t SELECT * FROM u", only("INSERT")),
            ("INSERT INTO t (a) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM t)", only("INSERT")),
            ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", only("UPDATE")),
            ("UPDATE t, u SET t.a = u.a", only("UPDATE")),
            ("UPDATE t JOIN u ON t.id = u.id SET t.a = 1", only("UPDATE")),
            ("UPDATE t SET a = (SELECT max(a) FROM u)", only("UPDATE")),
            ("DELETE FROM t USING u WHERE t.id = u.id", only("DELETE")),
            ("DELETE t FROM t JOIN u ON t.id = u.id", only("DELETE")),
            ("DELETE FROM t WHERE id IN (SELECT id FROM u)", only("DELETE")),
            ("WITH x AS (SELECT 1) SELECT * FROM x", only("WITH")),
            ("BEGIN IMMEDIATE", only("BEGIN")),
            ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION", only("SET")),
            ("SET LOCAL statement_timeout = 5", only("SET")),
            ("PRAGMA journal_mode = WAL", only("PRAGMA")),
            ("commit", only("COMMIT")),
            ("refresh materialized view v", only("REFRESH")),
            ("SELECT * FROM", only("SELECT")),
            ("INSERT INTO", only("INSERT")),
            ("UPDATE", only("UPDATE")),
            ("SELECT * FROM 'x'", only("SELECT")),
            ("SELECT * FROM \"\"", only("SELECT")),
            ("SELECT * FROM a.b.c.d", only("SELECT")),
        ];
        for (sql, want) in cases {
            assert_eq!(read(sql), want, "{sql}");
        }
    }

    #[test]
    fn text_that_starts_with_no_word_names_nothing() {
        for sql in ["", "   ", "-- only a comment", "/* unclosed", "(SELECT 1)", "'x'", "$1", "; SELECT 1"] {
            assert_eq!(read(sql), (None, None), "{sql:?}");
        }
        // A first word that is not a plain keyword is no operation either.
        assert_eq!(read("sel3ct 1"), (None, None));
        assert_eq!(read(&"X".repeat(40)), (None, None));
    }

    proptest::proptest! {
        /// Any text whatever: no panic, and a table read is a non-empty piece of the text's
        /// words (quotes and schema dots aside).
        #[test]
        fn never_panics(sql in "\\PC{0,80}") {
            let s = summarize(&sql);
            if let Some(c) = s.collection {
                proptest::prop_assert!(!c.is_empty());
                proptest::prop_assert!(s.operation.is_some());
            }
        }

        /// Text made of SQL's own pieces, which reach every branch of the reader.
        #[test]
        fn never_panics_on_sql_pieces(parts in proptest::collection::vec(proptest::sample::select(vec![
            "SELECT", "INSERT", "INTO", "UPDATE", "DELETE", "FROM", "JOIN", "ONLY", "AS", "OR", "t", "u.v", "(", ")",
            ",", ";", ".", "'", "\"", "`", "[", "]", "$1", "$$", "$a$", "--", "/*", "*/", "\n", " ", "é", "?",
        ]), 0..24)) {
            let sql = parts.concat();
            let _ = summarize(&sql);
            let spaced = parts.join(" ");
            let _ = summarize(&spaced);
        }

        /// The table of a simple statement is read back whatever its case and the comments and
        /// whitespace around it.
        #[test]
        fn reads_back_a_simple_statements_table(
            table in "[a-z_][a-z0-9_]{0,20}",
            which in 0usize..4,
            pad in "[ \t\n]{1,3}(/\\* [a-z ]{0,8} \\*/)?[ \t\n]{0,3}",
            upper in proptest::bool::ANY,
        ) {
            let sql = match which {
                0 => format!("SELECT{pad}a, b{pad}FROM{pad}{table}{pad}WHERE id = $1"),
                1 => format!("INSERT{pad}INTO{pad}{table} (a) VALUES (?)"),
                2 => format!("UPDATE{pad}{table}{pad}SET a = ?"),
                _ => format!("{pad}DELETE FROM{pad}{table}"),
            };
            let sql = if upper { sql.to_uppercase() } else { sql };
            let want = if upper { table.to_uppercase() } else { table.clone() };
            let s = summarize(&sql);
            proptest::prop_assert_eq!(s.collection.as_deref(), Some(want.as_str()), "{}", sql);
        }
    }
}

/// The spans themselves, on SQLite.
#[cfg(test)]
#[cfg(feature = "sqlite")]
mod spans {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::{Target, record_error};
    use crate::config::DatabaseConfig;
    use crate::{Backend, Db};

    type FieldMap = BTreeMap<String, String>;

    /// Every span made, by id: its name and the fields recorded on it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<BTreeMap<u64, (String, FieldMap)>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.insert(f.name().to_owned(), format!("{v:?}"));
        }
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.insert(f.name().to_owned(), v.to_owned());
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
        }
        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if let Some((_, fields)) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
                values.record(&mut Fields(fields));
            }
        }
    }

    impl Recorder {
        fn sql(&self) -> Vec<BTreeMap<String, String>> {
            self.0.lock().unwrap().values().filter(|(n, _)| n == "sql").map(|(_, f)| f.clone()).collect()
        }
    }

    /// A database in memory, and the runtime its pool runs on.
    fn db() -> (Db, tokio::runtime::Runtime) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _in = rt.enter();
        let metrics = keel_telemetry::Metrics::new();
        let db = Db::new("trace-test", "sqlite::memory:", &DatabaseConfig::default(), None, &metrics).unwrap();
        (db, rt)
    }

    #[test]
    fn a_statements_span_has_the_database_conventions_attributes_and_its_errors_code() {
        let (db, rt) = db();
        let seen = Recorder::default();
        let failure = rt.block_on(sqlx::query("SELECT * FROM missing").execute(db.pool())).unwrap_err();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(seen.clone()), || {
            let span = db.statement_span("SELECT name FROM items WHERE name = $1");
            record_error(&span, &failure);
            let other = db.statement_span("/* x */ commit");
            record_error(&other, &sqlx::Error::PoolTimedOut);
        });
        let spans = seen.sql();
        let select = spans.iter().find(|f| f["otel.name"] == "SELECT items").unwrap();
        let want = [
            ("otel.kind", "client"),
            ("otel.status_code", "ERROR"),
            ("db.system.name", "sqlite"),
            ("db.operation.name", "SELECT"),
            ("db.collection.name", "items"),
            ("db.query.summary", "SELECT items"),
            ("db.query.text", "SELECT name FROM items WHERE name = $1"),
            // SQLITE_ERROR: no such table.
            ("db.response.status_code", "1"),
            ("error.type", "1"),
        ];
        for (k, v) in want {
            assert_eq!(select.get(k).map(String::as_str), Some(v), "{k}: {select:?}");
        }
        for absent in ["db.namespace", "server.address", "server.port"] {
            assert!(!select.contains_key(absent), "{absent} for SQLite: {select:?}");
        }
        let commit = spans.iter().find(|f| f["otel.name"] == "COMMIT").unwrap();
        assert_eq!(commit["error.type"], "pool_timeout");
        assert!(!commit.contains_key("db.response.status_code"));
        assert_eq!(commit["db.query.summary"], "COMMIT");
        assert!(!commit.contains_key("db.collection.name"));
    }

    #[test]
    fn without_export_statements_run_as_they_are_and_make_no_span() {
        let (db, rt) = db();
        let seen = Recorder::default();
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
        let request = tracing::info_span!("request");
        let rows = rt.block_on(async {
            let _in = request.enter();
            let one: i64 = sqlx::query_scalar("SELECT $1 + 1").bind(1_i64).fetch_one(db.exec()).await.unwrap();
            let mut conn = db.pool().acquire().await.unwrap();
            let none: Option<i64> =
                sqlx::query_scalar("SELECT 1 WHERE 1 = 0").fetch_optional(db.on(&mut *conn)).await.unwrap();
            let mut tx = db.pool().begin().await.unwrap();
            sqlx::query("CREATE TEMP TABLE t (a INTEGER)").execute(db.on(&mut *tx)).await.unwrap();
            tx.commit().await.unwrap();
            (one, none)
        });
        assert_eq!(rows, (2, None));
        assert!(seen.sql().is_empty(), "{:?}", seen.sql());
    }

    #[test]
    fn the_target_is_read_from_the_url_without_its_credentials() {
        let t = |backend, url: &str| Target::of(backend, &url.parse().unwrap());
        let pg = t(Backend::Postgres, "postgres://app:hunter2@db.internal:6543/events?sslmode=require");
        assert_eq!(
            (pg.namespace.as_deref(), pg.address.as_deref(), pg.port),
            (Some("events"), Some("db.internal"), Some(6543))
        );
        assert!(!format!("{pg:?}").contains("hunter2"));
        let my = t(Backend::MySql, "mysql://root@127.0.0.1/app");
        assert_eq!(
            (my.namespace.as_deref(), my.address.as_deref(), my.port),
            (Some("app"), Some("127.0.0.1"), Some(3306))
        );
        let bare = t(Backend::Postgres, "postgres://localhost");
        assert_eq!((bare.namespace, bare.port), (None, Some(5432)));
        let lite = t(Backend::Sqlite, "sqlite://data/app.db?mode=rwc");
        assert_eq!((lite.namespace, lite.address, lite.port), (None, None, None));
    }
}
