//! The source server's side of a check, read-only: its settings, walhook's role, the
//! publication and the slot. Each check is a `Finding` (ok, warning or problem); a
//! problem carries the idempotent SQL that fixes it and who must run it, so that
//! `walhook check --sql` prints one script for everything fixable.
//!
//! What `walhook run` would do itself counts as ok: with `source.create` it creates the
//! slot, and the publication when its role may. What it may not do is a problem that
//! names the role that may (a table's owner, or a superuser).

use tokio_postgres::Client;

use crate::config::{quote_ident, Config};
use crate::report::{literal, Finding, Who};

use super::setup::SetupError;

mod publication;

pub use publication::{
    create_publication, missing_tables, publication, publishes_generated, with_generated_columns, Captured,
};

/// The oldest PostgreSQL major walhook supports.
pub const OLDEST_MAJOR: i32 = 14;

/// What the server says of itself and of walhook's role.
pub struct Server {
    /// walhook's role (`current_user`).
    pub role: String,
    pub database: String,
    /// `server_version_num`, e.g. 150004.
    pub version_num: i32,
    pub superuser: bool,
    pub replication: bool,
    /// May create schemas (and publications) in the database.
    pub create_in_database: bool,
    /// The server is a standby (in recovery).
    pub standby: bool,
}

impl Server {
    pub fn major(&self) -> i32 {
        self.version_num / 10_000
    }

    fn subject(&self) -> String {
        format!("role {}", self.role)
    }

    /// The fix's runner for statements on `tables`, all owned by `owner`.
    fn owner(&self, owner: &str, tables: Vec<String>) -> Who {
        if owner == self.role {
            Who::Walhook { role: owner.into() }
        } else {
            Who::Owner {
                role: owner.into(),
                tables,
            }
        }
    }
}

/// Settings and role: wal_level, free slots and WAL senders, the WAL a slot may hold,
/// the version, the replication attribute, and (when a rule coalesces) writing stream
/// time into the WAL.
pub async fn server(client: &Client, config: &Config, out: &mut Vec<Finding>) -> Result<Server, SetupError> {
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text,
                    current_setting('server_version_num')::int, current_setting('server_version'),
                    current_setting('wal_level'),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_stat_replication)::int,
                    current_setting('max_slot_wal_keep_size'),
                    r.rolsuper, r.rolreplication,
                    has_database_privilege(current_database(), 'CREATE'),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    pg_is_in_recovery()
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&config.source.slot],
        )
        .await?;
    let server = Server {
        role: row.get(0),
        database: row.get(1),
        version_num: row.get(2),
        superuser: row.get(10),
        replication: row.get(11),
        create_in_database: row.get(12),
        standby: row.get(14),
    };
    let version: String = row.get(3);
    let wal_level: String = row.get(4);
    let (max_slots, slots): (i32, i32) = (row.get(5), row.get(6));
    let (max_senders, senders): (i32, i32) = (row.get(7), row.get(8));
    let keep: String = row.get(9);
    let slot_exists: bool = row.get(13);

    let major = server.major();
    out.push(if major < OLDEST_MAJOR {
        Finding::warning(
            "server",
            format!("PostgreSQL {version}: walhook is tested on {OLDEST_MAJOR} to 18; upgrade the server"),
        )
    } else {
        Finding::ok("server", format!("PostgreSQL {version}"))
    });
    out.push(if wal_level == "logical" {
        Finding::ok("server", "wal_level = logical")
    } else {
        Finding::problem(
            "server",
            format!("wal_level is '{wal_level}', but logical replication needs 'logical'"),
        )
        .with_fix(
            Who::Superuser,
            vec!["ALTER SYSTEM SET wal_level = logical;".into()],
        )
        .then("restart PostgreSQL (wal_level takes effect at start)")
    });
    let restart = "restart PostgreSQL (max_replication_slots and max_wal_senders take effect at start)";
    if !slot_exists {
        out.push(if slots < max_slots {
            Finding::ok(
                "server",
                format!("{slots} of max_replication_slots = {max_slots} in use; walhook's slot fits"),
            )
        } else {
            Finding::problem(
                "server",
                format!("all {max_slots} replication slots are in use (max_replication_slots), so walhook cannot create its slot"),
            )
            .with_fix(
                Who::Superuser,
                vec![format!("ALTER SYSTEM SET max_replication_slots = {};", max_slots + 2)],
            )
            .then(restart)
        });
    }
    out.push(if senders < max_senders {
        Finding::ok(
            "server",
            format!("{senders} of max_wal_senders = {max_senders} in use"),
        )
    } else {
        Finding::problem(
            "server",
            format!("all {max_senders} WAL senders are in use (max_wal_senders), so walhook cannot stream"),
        )
        .with_fix(
            Who::Superuser,
            vec![format!("ALTER SYSTEM SET max_wal_senders = {};", max_senders + 2)],
        )
        .then(restart)
    });
    out.push(if keep == "-1" {
        Finding::warning(
            "server",
            "max_slot_wal_keep_size is unlimited: a slot whose reader stops holds WAL until the disk is \
             full. Cap it (the slot is invalidated past the cap, and walhook says so), size it for the \
             longest outage you want to ride out",
        )
        .with_fix(
            Who::Superuser,
            vec![
                "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB';".into(),
                "SELECT pg_reload_conf();".into(),
            ],
        )
    } else {
        Finding::ok("server", format!("max_slot_wal_keep_size = {keep}"))
    });

    let subject = server.subject();
    let role = quote_ident(&server.role);
    out.push(if server.superuser || server.replication {
        let how = if server.superuser {
            "a superuser"
        } else {
            "has REPLICATION"
        };
        Finding::ok(subject.clone(), format!("{how}: may stream changes"))
    } else {
        Finding::problem(
            subject.clone(),
            "may not start replication (it lacks REPLICATION)",
        )
        .with_fix(
            Who::Superuser,
            vec![format!("ALTER ROLE {role} WITH REPLICATION;")],
        )
    });
    // Coalescing windows close on stream time, which walhook writes into the WAL when no
    // transaction carries it (pipeline::ticker); backfills write their watermarks there.
    let may: bool = client
        .query_one(
            // PostgreSQL 17 added a fourth argument (flush).
            "SELECT coalesce(has_function_privilege(coalesce(
                 to_regprocedure('pg_catalog.pg_logical_emit_message(boolean, text, text, boolean)'),
                 to_regprocedure('pg_catalog.pg_logical_emit_message(boolean, text, text)'))::oid, 'EXECUTE'), false)",
            &[],
        )
        .await?
        .get(0);
    let signature = if major >= 17 {
        "boolean, text, text, boolean"
    } else {
        "boolean, text, text"
    };
    let grant = vec![format!(
        "GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message({signature}) TO {role};"
    )];
    // Coalescing windows and documents' windows close on stream time, moved by ticks.
    let windowed = match config.events.iter().position(|r| r.coalesce.is_some()) {
        Some(i) => Some(format!("events[{i}].coalesce")),
        None if !config.documents.is_empty() => Some("documents[0].window".to_string()),
        None => None,
    };
    let initial = config.subscribers.iter().position(|s| s.initial_backfill);
    out.push(match (may, windowed, initial) {
        (true, _, _) => Finding::ok(
            subject,
            "may write into the WAL with pg_logical_emit_message (coalescing, documents, backfills)",
        ),
        (false, Some(path), _) => Finding::problem(
            subject,
            format!("{path} needs the role to write stream time into the WAL with pg_logical_emit_message"),
        )
        .at(path)
        .with_fix(Who::Superuser, grant),
        (false, None, Some(i)) => Finding::problem(
            subject,
            format!(
                "subscribers[{i}].initial_backfill needs the role to write backfill watermarks into \
                 the WAL with pg_logical_emit_message"
            ),
        )
        .at(format!("subscribers[{i}].initial_backfill"))
        .with_fix(Who::Superuser, grant),
        (false, None, None) => Finding::warning(
            subject,
            "may not write into the WAL with pg_logical_emit_message: streaming works without, \
             but backfills write their watermarks with it",
        )
        .with_fix(Who::Superuser, grant),
    });
    Ok(server)
}

/// The slot: it exists (or walhook creates it), is a pgoutput slot of this database,
/// was not invalidated, who streams it, and how much WAL it holds.
pub async fn slot(
    client: &Client,
    config: &Config,
    server: &Server,
    out: &mut Vec<Finding>,
) -> Result<(), SetupError> {
    let name = &config.source.slot;
    let subject = format!("slot {name}");
    let major = server.major();
    let sql = format!(
        "SELECT plugin::text, slot_type, d.datname::text, coalesce(wal_status, ''), active_pid,
                        pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                                             ELSE pg_current_wal_lsn() END, restart_lsn)::bigint,
                        {failover}
                 FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid
                 WHERE slot_name = $1",
        failover = if major >= 17 {
            "s.failover"
        } else {
            "NULL::boolean"
        }
    );
    let row = client.query_opt(sql.as_str(), &[name]).await?;
    let failover = config
        .source
        .failover_slot
        .unwrap_or(major >= 17 && !server.standby);
    if failover && major < 17 {
        out.push(Finding::config(
            "source.failover_slot",
            format!("failover slots need PostgreSQL 17 or later; this server is {major}: remove source.failover_slot"),
        ));
    } else if failover && server.standby {
        out.push(Finding::config(
            "source.failover_slot",
            "the source is a standby, where a slot cannot be a failover slot: remove source.failover_slot",
        ));
    }
    let Some(row) = row else {
        out.push(if config.source.create {
            Finding::ok(
                subject,
                if failover && major >= 17 {
                    "does not exist yet; walhook creates it at start, as a failover slot"
                } else {
                    "does not exist yet; walhook creates it at start"
                },
            )
        } else {
            Finding::problem(subject, "does not exist (source.create = false)")
                .at("source.slot")
                .with_fix(
                    Who::Walhook {
                        role: server.role.clone(),
                    },
                    // Does nothing before wal_level is logical: run the script again
                    // after the restart.
                    vec![format!(
                        "SELECT pg_create_logical_replication_slot({lit}, 'pgoutput'{failover}) WHERE NOT EXISTS \
                         (SELECT 1 FROM pg_replication_slots WHERE slot_name = {lit}) \
                         AND current_setting('wal_level') = 'logical';",
                        lit = literal(name),
                        failover = if failover && major >= 17 { ", false, false, true" } else { "" }
                    )],
                )
                .then("after a restart for wal_level, run the script again: it creates the slot only then")
        });
        return Ok(());
    };
    let plugin: Option<String> = row.get(0);
    let kind: String = row.get(1);
    let db: Option<String> = row.get(2);
    let wal_status: String = row.get(3);
    let pid: Option<i32> = row.get(4);
    let held: Option<i64> = row.get(5);
    let is_failover: Option<bool> = row.get(6);
    let drop = vec![format!("SELECT pg_drop_replication_slot({});", literal(name))];
    let walhook = Who::Walhook {
        role: server.role.clone(),
    };
    if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
        out.push(
            Finding::problem(
                subject,
                format!("is a {kind} slot with plugin {plugin:?}, not pgoutput: set source.slot to another name, or drop it"),
            )
            .at("source.slot"),
        );
        return Ok(());
    }
    if db.as_deref() != Some(server.database.as_str()) {
        out.push(
            Finding::problem(
                subject,
                format!(
                    "belongs to database {:?}, not {:?}: set source.slot to another name",
                    db.unwrap_or_default(),
                    server.database
                ),
            )
            .at("source.slot"),
        );
        return Ok(());
    }
    if wal_status == "lost" {
        out.push(
            Finding::problem(
                subject,
                "was invalidated: PostgreSQL removed WAL it still needed (max_slot_wal_keep_size), so the \
                 changes since are lost to it. Drop it; walhook creates a fresh one at start (then \
                 resynchronise the subscribers)",
            )
            .with_fix(walhook, drop),
        );
        return Ok(());
    }
    if failover && is_failover == Some(false) {
        out.push(Finding::warning(
            subject.clone(),
            "is not a failover slot (it was made before PostgreSQL 17, or with source.failover_slot = false): \
             a standby does not keep it, so after a failover walhook must start from a new slot. To make it \
             one, stop walhook, drop it and start walhook again (events committed in between are not sent), \
             or set source.failover_slot = false to say this is known",
        ));
    }
    let held = held.map_or_else(|| "unknown".to_string(), bytes);
    out.push(match pid {
        Some(pid) => Finding::ok(
            subject,
            format!("in use by process {pid} (another walhook leads; this one would stand by); holds {held} of WAL"),
        ),
        None => Finding::ok(subject, format!("exists, holds {held} of WAL")),
    });
    Ok(())
}

/// `n` bytes for people: "0 B", "12.3 MB".
fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 kB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GB");
        assert_eq!(bytes(-3), "0 B");
    }
}
