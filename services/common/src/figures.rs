//! The product figures a service shows on its operator page ([`Counted`]): how many rows of its
//! own tables were made in the last hour and day (sign-ups, joins, promotions, mails).

use std::time::Duration;

use keel::data::Db;
use keel::management::ops::{Figure, OpsFuture, ProductFigures};

use crate::time::{now, to_micros};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Figures counted in the service's database: each a name and a `SELECT COUNT(*) … WHERE
/// created_at >= $1` (microseconds), run for the last hour and the last day.
pub struct Counted {
    db: Db,
    counts: Vec<(&'static str, &'static str)>,
}

impl Counted {
    /// Counts `counts` (`(name, query)`) in `db`; each query needs an index leading with its
    /// time column (the page reads them once a minute).
    pub fn new(db: Db, counts: Vec<(&'static str, &'static str)>) -> Self {
        Self { db, counts }
    }

    async fn count(&self, sql: &'static str, within: Duration) -> Result<u64, String> {
        let cutoff = to_micros(now()) - i64::try_from(within.as_micros()).unwrap_or(i64::MAX);
        let mut conn = self.db.acquire().await.map_err(|e| e.to_string())?;
        let n: i64 = sqlx::query_scalar(self.db.statement(sql))
            .bind(cutoff)
            .fetch_one(self.db.on(&mut *conn))
            .await
            .map_err(|e| keel::data::DataError::from(e).to_string())?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl ProductFigures for Counted {
    fn figures(&self) -> OpsFuture<'_, Vec<Figure>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(self.counts.len());
            for (name, sql) in &self.counts {
                out.push(Figure {
                    name: (*name).to_owned(),
                    last_hour: self.count(sql, HOUR).await?,
                    last_day: self.count(sql, DAY).await?,
                });
            }
            Ok(out)
        })
    }
}
