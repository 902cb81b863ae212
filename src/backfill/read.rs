//! How a backfill reads: the chunk statements (keyset pagination in key order, keys read
//! again by value), one consistent read-only transaction per chunk, the checks of an
//! operator's condition, and what a failed read means.

use std::time::Duration;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{board, catalog};
use crate::config::{quote_ident, TableName};

/// What is wrong with `where_sql` as one condition, before the server sees it: it may not
/// end the statement (`;`), hold a comment, or close a parenthesis it did not open, so it
/// stays inside its own parentheses (outside quoted text and identifiers).
pub fn where_problem(where_sql: &str) -> Option<String> {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut chars = where_sql.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                // A doubled quote stands for itself.
                if chars.peek() == Some(&q) {
                    chars.next();
                } else {
                    quote = None;
                }
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Some("a \")\" closes a parenthesis the condition did not open".into());
                }
            }
            ';' => {
                return Some(
                    "\";\" may not end the condition: give one condition, e.g. \"status = 'active'\"".into(),
                )
            }
            '-' if chars.peek() == Some(&'-') => {
                return Some("comments (--) may not be in the condition".into())
            }
            '/' if chars.peek() == Some(&'*') => {
                return Some("comments (/*) may not be in the condition".into())
            }
            '$' => return Some("dollar quotes and parameters ($) may not be in the condition".into()),
            _ => {}
        }
    }
    match (quote, depth) {
        (Some(q), _) => Some(format!("a quote ({q}) is not closed")),
        (None, 0) => None,
        _ => Some("a parenthesis is not closed".into()),
    }
}

/// Whether `where_sql` is a condition on every one of `tables`: the server plans (never
/// runs) a read of each with it. An error quotes the server.
pub async fn check_where(source: &Client, tables: &[String], where_sql: &str) -> Result<(), String> {
    if let Some(why) = where_problem(where_sql) {
        return Err(format!("--where {where_sql:?}: {why}"));
    }
    // One statement (a prepared one cannot hold two) on a read-only session: the
    // condition cannot write, whatever it says.
    source
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .map_err(|e| crate::pg::describe(&e))?;
    for t in tables {
        let name = TableName::parse(t)?;
        let sql = format!("EXPLAIN SELECT 1 FROM {} WHERE (\n{where_sql}\n)", name.quoted());
        source
            .query(sql.as_str(), &[])
            .await
            .map_err(|e| format!("--where {where_sql:?} on {t}: {}", crate::pg::describe(&e)))?;
    }
    Ok(())
}

/// Keys read again in one statement at most.
pub(super) const REREAD_KEYS: usize = 1_000;
/// Reads whose snapshot missed a committed transaction are tried again this often at
/// most, 10 ms apart (then the backfill pauses as after any passing trouble).
const SNAPSHOT_TRIES: u32 = 200;

/// A table's chunk statements.
pub(super) struct Queries {
    cols: String,
    from: String,
    key_list: String,
    /// Casts of the key columns' text, `$1::text::bigint`, from parameter 1.
    casts: Vec<String>,
    filters: Vec<String>,
    limit: usize,
    /// The first chunk, and the next after a key.
    pub(super) first: String,
    pub(super) next: String,
}

impl Queries {
    pub(super) fn new(t: &catalog::Table, where_sql: Option<&str>, limit: usize) -> Queries {
        let cols = t
            .columns
            .iter()
            .map(|(c, _)| format!("src.{}::text", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        // Qualified: in ORDER BY a bare name would be the selected text, in text order.
        let key_list = (t.key.iter())
            .map(|(c, _)| format!("src.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let casts: Vec<String> = (t.key.iter()).map(|(_, ty)| format!("::text::{ty}")).collect();
        let mut filters = Vec::new();
        if let Some(f) = &t.row_filter {
            filters.push(format!("({f})"));
        }
        // On lines of their own: a comment in the condition ends with its line.
        if let Some(w) = where_sql.filter(|w| !w.trim().is_empty()) {
            filters.push(format!("(\n{w}\n)"));
        }
        let from = format!("{} AS src", t.name.quoted());
        let mut q = Queries {
            cols,
            from,
            key_list,
            casts,
            filters,
            limit,
            first: String::new(),
            next: String::new(),
        };
        q.first = q.select(None, true);
        let after: Vec<String> = (q.casts.iter().enumerate())
            .map(|(i, c)| format!("${}{c}", i + 1))
            .collect();
        q.next = q.select(Some(format!("({}) > ({})", q.key_list, after.join(", "))), true);
        q
    }

    fn select(&self, key_filter: Option<String>, limited: bool) -> String {
        let filters: Vec<String> = key_filter
            .into_iter()
            .chain(self.filters.iter().cloned())
            .collect();
        let limit = if limited {
            format!(" LIMIT {}", self.limit)
        } else {
            String::new()
        };
        format!(
            "SELECT {} FROM {} {} ORDER BY {}{limit}",
            self.cols,
            self.from,
            where_clause(&filters),
            self.key_list
        )
    }

    /// The rows of these keys (their columns' text), and the arguments.
    pub(super) fn by_keys(&self, keys: &[board::TextRow]) -> (String, Vec<Option<String>>) {
        let width = self.casts.len();
        let tuples: Vec<String> = (0..keys.len())
            .map(|k| {
                let cells: Vec<String> = (self.casts.iter().enumerate())
                    .map(|(i, c)| format!("${}{c}", k * width + i + 1))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let sql = self.select(
            Some(format!("({}) IN ({})", self.key_list, tuples.join(", "))),
            false,
        );
        (sql, keys.iter().flatten().cloned().collect())
    }
}

/// Reads a chunk in one read-only transaction (a condition cannot turn that off) whose
/// snapshot sees every transaction committed before it in the WAL: one that was
/// committed but not yet visible (a commit waiting for a synchronous standby) would make
/// the read older than the stream around it, so the read is taken again.
pub(super) async fn consistent_read(
    c: &Client,
    sql: &str,
    args: &[Option<String>],
    width: usize,
) -> Result<Option<Vec<board::TextRow>>, tokio_postgres::Error> {
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let mut tries = 0;
    loop {
        c.batch_execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let read = async {
            let rows = c.query(sql, &params).await?;
            let unseen: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_snapshot_xip(pg_current_snapshot()) AS x
                     WHERE pg_xact_status(x) = 'committed'",
                    &[],
                )
                .await?
                .get(0);
            Ok::<_, tokio_postgres::Error>((rows, unseen))
        };
        let result = read.await;
        let _ = c.batch_execute("COMMIT").await;
        let (rows, unseen) = result?;
        if unseen == 0 {
            return Ok(Some(
                rows.iter()
                    .map(|r| (0..width).map(|i| r.get::<_, Option<String>>(i)).collect())
                    .collect(),
            ));
        }
        tries += 1;
        if tries >= SNAPSHOT_TRIES {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) fn where_clause(filters: &[String]) -> String {
    if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    }
}

/// Whether an error is the connection's or the server's passing trouble (a retry may
/// succeed), not the statement's.
pub(super) fn transient(e: &tokio_postgres::Error) -> bool {
    match e.code().map(|c| c.code()) {
        None => true,
        Some(c) => {
            ["08", "53", "57", "40", "55"]
                .iter()
                .any(|class| c.starts_with(class))
                && c != "57014"
        }
    }
}

/// The message a failed chunk read ends its backfill with, naming the fix.
pub(super) fn read_error(e: &tokio_postgres::Error, t: &TableName, role: &str) -> String {
    let what = crate::pg::describe(e);
    match e.code().map(|c| c.code()) {
        Some("42501") if what.contains("pg_logical_emit_message") => format!(
            "role {role} may not write watermarks: {what}. Fix: GRANT EXECUTE ON FUNCTION \
             pg_logical_emit_message(boolean, text, text) TO {};",
            quote_ident(role)
        ),
        Some("42501") => format!(
            "role {role} may not read {t}: {what}. Fix: GRANT SELECT ON {} TO {};",
            t.quoted(),
            quote_ident(role)
        ),
        Some(c) if c.starts_with("42") => format!("cannot read {t} (check the backfill's --where): {what}"),
        _ => format!("cannot read {t}: {what}"),
    }
}
