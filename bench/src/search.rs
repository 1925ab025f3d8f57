//! Full-text search of the events service on a large table, next to the unranked list, in one
//! run on this machine, on SQLite, PostgreSQL and MariaDB.
//!
//! `cargo run --release -p keel-bench --bin search-bench [EVENTS] [ROUNDS]` (defaults 100 000
//! and 200) with PostgreSQL and MariaDB running locally (`KEEL_TEST_POSTGRES_URL`,
//! `KEEL_TEST_MYSQL_URL`; a backend whose server is down is skipped). For each backend it fills
//! a fresh database through the events service's migrations with `EVENTS` published events (one
//! in four mentions `harbour`, one in a thousand `zeppelin`), then times `ROUNDS` calls of each
//! query through the service's own store (`cityevents_events::store::list_public`, the
//! production statements and their bounds) and prints p50, p99 and max, and p99 as a ratio of
//! the unranked list's in the same run.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cityevents_events::list::{PublicList, Search, Sort};
use cityevents_events::store::{SearchBounds, list_public};
use keel::data::{Backend, DatabaseConfig, Db};
use keel::testing::{TestDatabase, mysql_url, postgres_url};
use keel_bench::BoxError;
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One query of the run: its name and the list it asks for.
struct Case {
    name: &'static str,
    list: PublicList,
}

fn cases() -> Result<Vec<Case>, BoxError> {
    let list = |search: Option<&str>, sort: Sort| -> Result<PublicList, BoxError> {
        let search = search.map(Search::parse).transpose().map_err(|p| format!("{p:?}"))?;
        Ok(PublicList {
            search,
            city: None,
            category: None,
            organizer: None,
            from: None,
            to: None,
            ends_after: None,
            sort,
            limit: 20,
            after: None,
        })
    };
    Ok(vec![
        Case { name: "list, by start (no q)", list: list(None, Sort::StartsAt)? },
        Case { name: "q=harbour (25%), relevance", list: list(Some("harbour"), Sort::Relevance)? },
        Case { name: "q=harbour night, relevance", list: list(Some("harbour night"), Sort::Relevance)? },
        Case { name: "q=zeppelin (0.1%), relevance", list: list(Some("zeppelin"), Sort::Relevance)? },
        Case { name: "q=harbour, by start", list: list(Some("harbour"), Sort::StartsAt)? },
    ])
}

/// `n` published events, 500 to a statement, and SQLite's full-text rows as the store writes them.
async fn fill(db: &Db, n: usize) -> Result<(), BoxError> {
    let hour = 3_600_000_000_i64;
    let first = 1_900_000_000_000_000_i64;
    let organizer = uuid::Uuid::now_v7().to_string();
    let mut conn = db.acquire().await?;
    let mut i = 0;
    while i < n {
        let rows = (n - i).min(500);
        let mut text = String::from(
            "INSERT INTO events (id, organizer_id, title, description, city, city_key, category, category_key, \
             starts_at, ends_at, capacity, status, published_at, version, created_at, updated_at, venue, time_zone) VALUES ",
        );
        for r in 0..rows {
            let p = |k: usize| format!("${}", r * 6 + k);
            text.push_str(&format!(
                "{}({}, {}, {}, {}, 'Lyon', 'lyon', 'music', 'music', {}, {}, 0, 'published', 1, 1, 1, 1, '', 'UTC')",
                if r > 0 { ", " } else { "" },
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6)
            ));
        }
        let mut q = sqlx::query(db.statement(&text));
        for k in i..i + rows {
            let place = if k % 4 == 0 { "by the harbour" } else { "in the park" };
            let extra = if k % 1000 == 7 { " under the zeppelin" } else { "" };
            let title = if k % 40 == 0 { format!("Harbour night {k}") } else { format!("Evening {k}") };
            let starts = first + k as i64 * hour / 10;
            q = q
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(organizer.clone())
                .bind(title)
                .bind(format!("Songs {place}{extra}, with friends and a late supper"))
                .bind(starts)
                .bind(starts + 2 * hour);
        }
        q.execute(&mut *conn).await?;
        i += rows;
    }
    if db.backend() == Backend::Sqlite {
        sqlx::query("INSERT INTO events_fts_rows (id) SELECT id FROM events").execute(&mut *conn).await?;
        sqlx::query(
            "INSERT INTO events_fts (rowid, title, city, venue, description) \
             SELECT r.rowid, e.title, e.city, e.venue, e.description FROM events e JOIN events_fts_rows r ON r.id = e.id",
        )
        .execute(&mut *conn)
        .await?;
    }
    if db.backend() == Backend::Postgres {
        sqlx::query("ANALYZE events").execute(&mut *conn).await?;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn run(backend: Backend, url: &str, n: usize, rounds: usize) -> Result<(), BoxError> {
    let mut cfg = DatabaseConfig::default();
    cfg.pool.max_connections = 4;
    let migrations = Arc::new(cityevents_events::migrations());
    let db = Db::new("bench", url, &cfg, Some(migrations), &keel::telemetry::Metrics::new())?;
    db.clone().connect_in_background(CancellationToken::new()).await;
    let filled = Instant::now();
    fill(&db, n).await?;
    println!("\n{backend}: {n} events written in {:.1} s", filled.elapsed().as_secs_f64());
    let defaults = cityevents_events::SearchConfig::default();
    let bounds = SearchBounds { timeout: Duration::from_secs(30), max_ranked: defaults.max_ranked };
    println!("| query | rows | p50 ms | p99 ms | max ms | p99 / list p99 |");
    println!("|---|---|---|---|---|---|");
    let mut baseline = None;
    for case in cases()? {
        let mut times = Vec::with_capacity(rounds);
        let mut rows = 0;
        // One call first, untimed: the statement prepared and the pages cached, as in service.
        list_public(&db, &case.list, bounds).await?;
        for _ in 0..rounds {
            let started = Instant::now();
            rows = list_public(&db, &case.list, bounds).await?.len();
            times.push(started.elapsed());
        }
        times.sort();
        let p99 = percentile(&times, 0.99);
        let base = *baseline.get_or_insert(p99);
        println!(
            "| {} | {rows} | {} | {} | {} | {:.1} |",
            case.name,
            ms(percentile(&times, 0.5)),
            ms(p99),
            ms(times[times.len() - 1]),
            p99.as_secs_f64() / base.as_secs_f64()
        );
    }
    Ok(())
}

async fn bench() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let sqlite = TestDatabase::sqlite()?;
    run(Backend::Sqlite, sqlite.url(), n, rounds).await?;
    if keel::testing::require("PostgreSQL", &postgres_url()) {
        let db = TestDatabase::postgres(&postgres_url()).await?;
        run(Backend::Postgres, db.url(), n, rounds).await?;
    }
    if keel::testing::require("MariaDB", &mysql_url()) {
        let db = TestDatabase::mysql(&mysql_url()).await?;
        run(Backend::MySql, db.url(), n, rounds).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match bench().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("search-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
