//! `walhook backfill ...`: asks for backfills and steers them through the state database
//! (the one the config names), so it works whether walhook runs or not; the leading
//! walhook takes a backfill up within a second.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::BackfillAction;
use crate::state::backfills::{Backfill, Request, Status};
use crate::state::State;

pub(super) async fn backfill(action: BackfillAction) -> i32 {
    match run(action).await {
        Ok(code) => code,
        Err((code, message)) => {
            // An empty message was printed where it arose (a config that does not load).
            if !message.is_empty() {
                eprintln!("walhook: {message}");
            }
            code
        }
    }
}

type Failure = (i32, String);

async fn state(config: &crate::config::Config) -> Result<State, Failure> {
    State::connect(config.state_url(), &config.source.slot)
        .await
        .map_err(|e| (3, e.to_string()))
}

async fn run(action: BackfillAction) -> Result<i32, Failure> {
    match action {
        BackfillAction::Start {
            config,
            subscriber,
            tables,
            where_sql,
            document,
            wait,
        } => {
            let config = super::commands::load(&config.config).map_err(|c| (c, String::new()))?;
            let tables = match &document {
                Some(d) => crate::backfill::document_tables(&config, &subscriber, d),
                None => crate::backfill::tables(&config, &subscriber, &tables),
            }
            .map_err(|e| (2, e))?;
            if let Some(w) = &where_sql {
                let source = crate::pg::PgTarget::parse(&config.source.url)
                    .map_err(|e| (2, format!("source.url: {e}")))?;
                let client = source
                    .connect("backfill check")
                    .await
                    .map_err(|e| (3, crate::pg::connect_message("source.url", &e)))?;
                crate::backfill::check_where(&client, &tables, w)
                    .await
                    .map_err(|e| (2, e))?;
            }
            let state = state(&config).await?;
            let req = Request {
                subscriber: &subscriber,
                tables: &tables,
                where_sql: where_sql.as_deref(),
                initial: false,
                document: document.as_deref(),
            };
            let id = state
                .create_backfill(&req)
                .await
                .map_err(|e| (1, e.to_string()))?;
            let what = match &document {
                Some(d) => format!("document {d} (the keys of {})", tables.join(", ")),
                None => tables.join(", "),
            };
            println!(
                "backfill {id}: {what} to {subscriber}; the leading walhook takes it up within a second \
                 (walhook backfill list shows its progress)"
            );
            if wait {
                return watch(&state, id).await;
            }
            Ok(0)
        }
        BackfillAction::List { config, json } => {
            let config = super::commands::load(&config.config).map_err(|c| (c, String::new()))?;
            let list = state(&config)
                .await?
                .backfills()
                .await
                .map_err(|e| (1, e.to_string()))?;
            if json {
                println!("{:#}", serde_json::json!({ "backfills": list }));
            } else {
                print!("{}", table(&list));
            }
            Ok(0)
        }
        BackfillAction::Pause { config, id } => {
            steer(config, id, &[Status::Pending, Status::Running], Status::Paused).await
        }
        // A failed backfill goes on from its last saved chunk once its cause is fixed.
        BackfillAction::Resume { config, id } => {
            steer(config, id, &[Status::Paused, Status::Failed], Status::Pending).await
        }
        BackfillAction::Cancel { config, id } => {
            steer(
                config,
                id,
                &[Status::Pending, Status::Running, Status::Paused],
                Status::Cancelled,
            )
            .await
        }
    }
}

async fn steer(config: super::ConfigArg, id: i64, from: &[Status], to: Status) -> Result<i32, Failure> {
    let config = super::commands::load(&config.config).map_err(|c| (c, String::new()))?;
    let state = state(&config).await?;
    match state
        .set_backfill_status(id, from, to)
        .await
        .map_err(|e| (1, e.to_string()))?
    {
        (None, _) => Err((2, format!("no backfill {id} (walhook backfill list shows them)"))),
        (Some(b), true) => {
            println!("backfill {id}: {}", b.status.as_str());
            Ok(0)
        }
        (Some(b), false) => Err((
            2,
            format!(
                "backfill {id} is {}, so it cannot become {}",
                b.status.as_str(),
                to.as_str()
            ),
        )),
    }
}

/// Shows a backfill's progress until it ends: a bar on a terminal, a line every tenth
/// otherwise. 0 when it is done, 1 when it failed or was cancelled.
async fn watch(state: &State, id: i64) -> Result<i32, Failure> {
    let tty = std::io::stderr().is_terminal();
    let mut last_tenth = -1;
    loop {
        let Some(b) = state.backfill(id).await.map_err(|e| (1, e.to_string()))? else {
            return Err((1, format!("backfill {id} is gone")));
        };
        let line = progress_line(&b);
        let tenth = percent(&b).map_or(0, |p| (p / 10.0) as i64);
        if tty {
            eprint!("\r{line:<100}");
            let _ = std::io::stderr().flush();
        } else if tenth != last_tenth || b.status.ended() {
            eprintln!("{line}");
        }
        last_tenth = tenth;
        if b.status.ended() {
            if tty {
                eprintln!();
            }
            return Ok(match b.status {
                Status::Done => 0,
                _ => {
                    if let Some(e) = &b.error {
                        eprintln!("walhook: backfill {id} failed: {e}");
                    }
                    1
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn percent(b: &Backfill) -> Option<f64> {
    let est = b.rows_estimate.filter(|e| *e > 0)?;
    Some((b.rows_done as f64 * 100.0 / est as f64).min(100.0))
}

fn rate(b: &Backfill) -> Option<f64> {
    (b.seconds > 0.5 && b.rows_done > 0).then(|| b.rows_done as f64 / b.seconds)
}

/// `[#####.....]  52%  26,000 of 50,000 rows  4,100 rows/s  ETA 6s  running`
fn progress_line(b: &Backfill) -> String {
    let pct = percent(b);
    let filled = pct.map_or(0, |p| (p / 5.0) as usize);
    let bar = format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled.min(20)));
    let mut line = format!(
        "{bar} {:>4} {} rows",
        pct.map_or("?".into(), |p| format!("{p:.0}%")),
        of(b)
    );
    if let Some(r) = rate(b) {
        line += &format!("  {} rows/s", thousands(r as i64));
    }
    if let Some(eta) = eta(b) {
        line += &format!("  ETA {eta}");
    }
    line + "  " + b.status.as_str()
}

fn of(b: &Backfill) -> String {
    match b.rows_estimate {
        Some(e) => format!("{} of ~{}", thousands(b.rows_done), thousands(e)),
        None => thousands(b.rows_done),
    }
}

fn eta(b: &Backfill) -> Option<String> {
    if b.status != Status::Running {
        return None;
    }
    let left = (b.rows_estimate? - b.rows_done).max(0) as f64;
    let s = (left / rate(b)?).round() as u64;
    Some(match s {
        0..=99 => format!("{s}s"),
        100..=5999 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    })
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The list as a table, newest first.
fn table(list: &[Backfill]) -> String {
    if list.is_empty() {
        return "no backfills (walhook backfill start asks for one)\n".into();
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|b| {
            [
                b.id.to_string(),
                b.status.as_str().to_string(),
                b.subscriber.clone(),
                b.document
                    .as_ref()
                    .map_or(String::new(), |d| format!("document {d} from "))
                    + &b.tables.join(",")
                    + b.where_sql
                        .as_deref()
                        .map(|w| format!(" where {w}"))
                        .as_deref()
                        .unwrap_or(""),
                format!(
                    "{} {}",
                    of(b),
                    percent(b).map_or(String::new(), |p| format!("({p:.0}%)"))
                ),
                rate(b).map_or("-".into(), |r| format!("{}/s", thousands(r as i64))),
                match (&b.error, eta(b)) {
                    (Some(e), _) => e.clone(),
                    (None, Some(eta)) => format!("ETA {eta}"),
                    (None, None) => b.finished_at.clone().unwrap_or_default(),
                },
            ]
        })
        .collect();
    let head = [
        "ID",
        "STATUS",
        "SUBSCRIBER",
        "TABLES",
        "ROWS",
        "RATE",
        "ETA / ENDED / ERROR",
    ];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i + 1 == head.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(done: i64, est: Option<i64>, seconds: f64) -> Backfill {
        Backfill {
            id: 3,
            subscriber: "shop".into(),
            tables: vec!["public.products".into()],
            where_sql: None,
            initial: false,
            status: Status::Running,
            progress: Default::default(),
            rows_done: done,
            rows_estimate: est,
            error: None,
            created_at: "2026-12-04T10:00:00Z".into(),
            started_at: Some("2026-12-04T10:00:00Z".into()),
            updated_at: "2026-12-04T10:00:10Z".into(),
            finished_at: None,
            seconds,
            document: None,
        }
    }

    #[test]
    fn progress_shows_share_rate_and_eta() {
        let line = progress_line(&sample(26_000, Some(50_000), 10.0));
        assert_eq!(
            line,
            "[##########..........]  52% 26,000 of ~50,000 rows  2,600 rows/s  ETA 9s  running"
        );
        let unknown = progress_line(&sample(10, None, 0.1));
        assert_eq!(unknown, "[....................]    ? 10 rows  running");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-1000), "-1,000");
        assert_eq!(eta(&sample(0, Some(720_000), 10.0)), None);
        assert_eq!(eta(&sample(1_000, Some(721_000), 10.0)).as_deref(), Some("2h00m"));
    }

    #[test]
    fn the_list_is_a_table() {
        let text = table(&[sample(26_000, Some(50_000), 10.0)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID  STATUS   SUBSCRIBER  TABLES"), "{text}");
        assert!(
            lines[1].contains("26,000 of ~50,000 (52%)") && lines[1].ends_with("ETA 9s"),
            "{text}"
        );
        assert!(table(&[]).starts_with("no backfills"));
    }
}
