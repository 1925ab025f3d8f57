//! The placeholder rewriter (`$1` → `?` for MySQL/MariaDB and SQLite, outside quotes): any text
//! rewrites without a panic, PostgreSQL text is never touched, quoted text is kept, each
//! placeholder becomes one `?`, and rewriting twice changes nothing more.

#![no_main]

use keel::data::Backend;
use libfuzzer_sys::fuzz_target;

/// The placeholders outside quotes, and the quoted texts, as the rewriter reads them.
fn scan(sql: &str) -> (usize, Vec<String>) {
    let (mut quote, mut n, mut prev_dollar, mut quoted) = (None, 0, false, Vec::<String>::new());
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => {
                if let Some(t) = quoted.last_mut() {
                    t.push(c);
                }
            }
            (None, '\'' | '"' | '`') => {
                quote = Some(c);
                quoted.push(String::new());
            }
            (None, c) if prev_dollar && c.is_ascii_digit() => n += 1,
            _ => {}
        }
        prev_dollar = quote.is_none() && c == '$';
    }
    (n, quoted)
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    assert_eq!(Backend::Postgres.sql(sql), sql);
    let (placeholders, quoted) = scan(sql);
    for b in [Backend::MySql, Backend::Sqlite] {
        let once = b.sql(sql);
        assert_eq!(b.sql(&once), once, "a second rewrite changed {sql:?}");
        assert_eq!(once.matches('?').count(), sql.matches('?').count() + placeholders);
        assert_eq!(scan(&once), (0, quoted.clone()));
    }
});
