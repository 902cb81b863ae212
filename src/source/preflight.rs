//! The source server's side of a check, read-only: its settings, walhook's role, the
//! publication and the slot. Each check is a `Finding` (ok, warning or problem); a
//! problem carries the idempotent SQL that fixes it and who must run it, so that
//! `walhook check --sql` prints one script for everything fixable.
//!
//! What `walhook run` would do itself counts as ok: with `source.create` it creates the
//! slot, and the publication when its role may. What it may not do is a problem that
//! names the role that may (a table's owner, or a superuser).

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::config::{quote_ident, Config, Op, TableName};
use crate::report::{literal, Finding, Who};

use super::setup::SetupError;

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
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)
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
    // transaction carries it (pipeline::ticker).
    if let Some(i) = config.events.iter().position(|r| r.coalesce.is_some()) {
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
        out.push(if may {
            Finding::ok(subject, "may write stream time into the WAL (coalescing)")
        } else {
            Finding::problem(
                subject,
                format!(
                    "events[{i}].coalesce needs the role to write stream time into the WAL with \
                     pg_logical_emit_message"
                ),
            )
            .at(format!("events[{i}].coalesce"))
            .with_fix(
                Who::Superuser,
                vec![format!(
                    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_logical_emit_message({signature}) TO {role};"
                )],
            )
        });
    }
    Ok(server)
}

/// What the publication check needs of each captured table.
pub struct Captured {
    pub owner: String,
    /// The rules on it and what they listen to.
    pub ops: Vec<Op>,
}

/// The publication: it exists or this role may create it, it holds every captured
/// table (or this role may add them), it publishes the operations the rules listen to,
/// and what a column list or row filter made by hand means for the events.
pub async fn publication(
    client: &Client,
    config: &Config,
    server: &Server,
    tables: &BTreeMap<TableName, Captured>,
    partitioned: bool,
    out: &mut Vec<Finding>,
) -> Result<(), SetupError> {
    if tables.is_empty() {
        return Ok(());
    }
    let name = &config.source.publication;
    let subject = format!("publication {name}");
    let names: Vec<&TableName> = tables.keys().collect();
    let row = client
        .query_opt(
            "SELECT puballtables, pg_get_userbyid(pubowner)::text, pubinsert, pubupdate, pubdelete, pubtruncate
             FROM pg_publication WHERE pubname = $1",
            &[name],
        )
        .await?;
    let Some(row) = row else {
        let sql = create_publication(name, &names, partitioned, server.major());
        let may = server.superuser
            || (server.create_in_database && tables.values().all(|t| t.owner == server.role));
        if config.source.create && may {
            out.push(Finding::ok(
                subject,
                "does not exist yet; walhook creates it at start",
            ));
            return Ok(());
        }
        let who = runner(client, server, tables.iter().map(|(t, c)| (t, c.owner.as_str()))).await?;
        let why = if config.source.create {
            format!(
                "does not exist, and role {} may not create it: a publication of a table can only be \
                 made by the table's owner (or a superuser)",
                server.role
            )
        } else {
            "does not exist (source.create = false)".to_string()
        };
        out.push(
            Finding::problem(subject, why)
                .at("source.publication")
                .with_fix(who, vec![sql]),
        );
        return Ok(());
    };
    let all_tables: bool = row.get(0);
    let owner: String = row.get(1);
    let published: Vec<(&str, bool)> = ["insert", "update", "delete", "truncate"]
        .into_iter()
        .zip([row.get(2), row.get(3), row.get(4), row.get(5)])
        .collect();
    for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
        let listening: Vec<String> = tables
            .iter()
            .filter(|(_, c)| c.ops.contains(&op))
            .map(|(t, _)| t.to_string())
            .collect();
        if published.contains(&(op.as_str(), false)) && !listening.is_empty() {
            let set: Vec<&str> = published
                .iter()
                .filter(|(o, yes)| *yes || *o == op.as_str())
                .map(|(o, _)| *o)
                .collect();
            out.push(
                Finding::problem(
                    subject.clone(),
                    format!(
                        "does not publish {}s, which rules on {} listen to",
                        op.as_str(),
                        listening.join(", ")
                    ),
                )
                .with_fix(
                    server.owner(&owner, Vec::new()),
                    vec![format!(
                        "ALTER PUBLICATION {} SET (publish = {});",
                        quote_ident(name),
                        literal(&set.join(", "))
                    )],
                ),
            );
        }
    }
    if all_tables {
        out.push(Finding::ok(
            subject.clone(),
            "publishes every table (FOR ALL TABLES)",
        ));
    } else {
        let missing = missing_tables(client, name, &names).await?;
        if missing.is_empty() {
            out.push(Finding::ok(
                subject.clone(),
                format!("exists and holds every captured table ({})", names.len()),
            ));
        } else {
            let list = missing
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let may = server.superuser
                || (owner == server.role
                    && missing
                        .iter()
                        .all(|t| tables.get(t).is_some_and(|c| c.owner == server.role)));
            if config.source.create && may {
                out.push(Finding::ok(
                    subject.clone(),
                    format!("walhook adds {list} at start"),
                ));
            } else {
                let who = if missing
                    .iter()
                    .all(|t| tables.get(t).is_some_and(|c| c.owner == owner))
                {
                    server.owner(&owner, missing.iter().map(|t| t.to_string()).collect())
                } else {
                    Who::Superuser
                };
                let sql = missing.iter().map(|t| add_table(name, t)).collect();
                out.push(
                    Finding::problem(
                        subject.clone(),
                        format!(
                            "does not include {list}; only a role that owns both the publication (role {owner}) \
                             and the table may add it"
                        ),
                    )
                    .at("source.publication")
                    .with_fix(who, sql),
                );
            }
        }
    }
    if server.major() >= 15 {
        filters(client, name, &names, &subject, out).await?;
    }
    if server.major() >= 18 {
        let fixes_itself = config.source.create && (server.superuser || owner == server.role);
        generated_columns(client, name, &owner, server, fixes_itself, &names, &subject, out).await?;
    }
    Ok(())
}

/// Whether `publication` publishes stored generated columns (PostgreSQL 18; the catalog
/// column's name changed during 18's development, so whichever is there is read).
pub async fn publishes_generated(client: &Client, publication: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT coalesce(to_jsonb(p) ->> 'pubgencols_type', to_jsonb(p) ->> 'pubgencols', 'n') IN ('s', 'true')
             FROM pg_publication p WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .get(0))
}

/// PostgreSQL 18: a publication that does not publish stored generated columns, holding
/// a table with one and `REPLICA IDENTITY FULL`, makes the application's UPDATEs of that
/// table fail ("Replica identity must not contain unpublished generated columns"). Such
/// a table, or one a rule would need FULL on, is a problem with the fix that publishes
/// them (events then carry those columns too).
async fn generated_columns(
    client: &Client,
    name: &str,
    owner: &str,
    server: &Server,
    fixes_itself: bool,
    tables: &[&TableName],
    subject: &str,
    out: &mut Vec<Finding>,
) -> Result<(), SetupError> {
    if publishes_generated(client, name).await? {
        return Ok(());
    }
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident = 'f'
             FROM unnest($1::text[], $2::text[]) AS u(s, n)
             JOIN pg_namespace n ON n.nspname = u.s
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = u.n
             WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attgenerated = 's'
                           AND NOT a.attisdropped)",
            &[&schemas, &names],
        )
        .await?;
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        let full: bool = row.get(2);
        if fixes_itself {
            out.push(Finding::ok(
                subject,
                format!("{table} has a stored generated column: walhook publishes them at start (publish_generated_columns = stored)"),
            ));
            continue;
        }
        let why = if full {
            "the application's UPDATEs of it fail now"
        } else {
            "setting REPLICA IDENTITY FULL on it would make the application's UPDATEs of it fail"
        };
        out.push(
            Finding::problem(
                subject,
                format!(
                    "does not publish stored generated columns, and {table} has one: on PostgreSQL 18 {why} \
                     (\"Replica identity must not contain unpublished generated columns\"). Publish them \
                     (events then carry them)"
                ),
            )
            .at("source.publication")
            .with_fix(
                server.owner(owner, Vec::new()),
                vec![format!(
                    "ALTER PUBLICATION {} SET (publish_generated_columns = stored);",
                    quote_ident(name)
                )],
            ),
        );
    }
    Ok(())
}

/// Column lists and row filters of a publication made by hand, and what they mean.
async fn filters(
    client: &Client,
    name: &str,
    tables: &[&TableName],
    subject: &str,
    out: &mut Vec<Finding>,
) -> Result<(), SetupError> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text, attnames::text[], rowfilter
             FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await?;
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        if !tables.contains(&&table) {
            continue;
        }
        let columns: Option<Vec<String>> = row.get(2);
        let all: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1::text) AND attnum > 0 AND NOT attisdropped",
                &[&table.quoted()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(cols) = columns.filter(|c| c.len() < all.len()) {
            out.push(Finding::warning(
                subject,
                format!(
                    "publishes only columns {} of {table}: events carry only those, and a rule that names \
                     another column of it never sees a value",
                    cols.join(", ")
                ),
            ));
        }
        let filter: Option<String> = row.get(3);
        if let Some(filter) = filter {
            out.push(Finding::warning(
                subject,
                format!(
                    "publishes only rows of {table} where {filter}: other rows make no events, and an update \
                     that moves a row into or out of the filter arrives as an insert or a delete"
                ),
            ));
        }
    }
    Ok(())
}

/// Who may run statements on `tables` (each with its owner): their one owner, or a
/// superuser when they have several or the owner may not create in the database.
async fn runner<'a>(
    client: &Client,
    server: &Server,
    tables: impl Iterator<Item = (&'a TableName, &'a str)>,
) -> Result<Who, SetupError> {
    let mut owners: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (t, owner) in tables {
        owners.entry(owner).or_default().push(t.to_string());
    }
    if owners.len() != 1 {
        return Ok(Who::Superuser);
    }
    let Some((owner, tables)) = owners.into_iter().next() else {
        return Ok(Who::Superuser);
    };
    let may_create: bool = client
        .query_one(
            "SELECT rolsuper OR has_database_privilege(rolname, current_database(), 'CREATE')
             FROM pg_roles WHERE rolname = $1",
            &[&owner],
        )
        .await?
        .get(0);
    Ok(if may_create {
        server.owner(owner, tables)
    } else {
        Who::Superuser
    })
}

/// `CREATE PUBLICATION` for `tables`, idempotent. It publishes partitions' changes as
/// their partitioned table's, and on PostgreSQL 18 stored generated columns too (without
/// them, a table with REPLICA IDENTITY FULL and a stored generated column refuses the
/// application's updates).
pub fn create_publication(name: &str, tables: &[&TableName], partitioned: bool, major: i32) -> String {
    let list = tables.iter().map(|t| t.quoted()).collect::<Vec<_>>().join(", ");
    let mut with = Vec::new();
    if partitioned {
        with.push("publish_via_partition_root = true");
    }
    if major >= 18 {
        with.push("publish_generated_columns = stored");
    }
    let with = if with.is_empty() {
        String::new()
    } else {
        format!(" WITH ({})", with.join(", "))
    };
    format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {lit}) THEN \
         CREATE PUBLICATION {ident} FOR TABLE {list}{with}; END IF; END $$;",
        lit = literal(name),
        ident = quote_ident(name)
    )
}

/// `ALTER PUBLICATION ... ADD TABLE`, idempotent.
fn add_table(name: &str, table: &TableName) -> String {
    format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = {lit} \
         AND schemaname = {s} AND tablename = {t}) THEN ALTER PUBLICATION {ident} ADD TABLE {q}; END IF; END $$;",
        lit = literal(name),
        s = literal(&table.schema),
        t = literal(&table.name),
        ident = quote_ident(name),
        q = table.quoted()
    )
}

/// The tables among `tables` the publication does not publish. A table counts as
/// published when it, a partitioned table it is a partition of, or one of its
/// partitions is listed (without publish_via_partition_root the list names a
/// partitioned table's partitions).
pub async fn missing_tables(
    client: &Client,
    publication: &str,
    tables: &[&TableName],
) -> Result<Vec<TableName>, tokio_postgres::Error> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    Ok(client
        .query(
            "SELECT u.s, u.n FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(s, n, i)
             WHERE NOT EXISTS (
               SELECT 1 FROM pg_publication_tables pt
               JOIN pg_namespace pn ON pn.nspname = pt.schemaname
               JOIN pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = pt.tablename
               WHERE pt.pubname = $1 AND pc.oid IN (
                 SELECT format('%I.%I', u.s, u.n)::regclass
                 UNION ALL SELECT relid FROM pg_partition_ancestors(format('%I.%I', u.s, u.n)::regclass)
                 UNION ALL SELECT relid FROM pg_partition_tree(format('%I.%I', u.s, u.n)::regclass)))
             ORDER BY u.i",
            &[&publication, &schemas, &names],
        )
        .await?
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect())
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
    let failover = config.source.failover_slot.unwrap_or(major >= 17);
    if failover && major < 17 {
        out.push(Finding::config(
            "source.failover_slot",
            format!("failover slots need PostgreSQL 17 or later; this server is {major}: remove source.failover_slot"),
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
                    vec![format!(
                        "SELECT pg_create_logical_replication_slot({lit}, 'pgoutput') WHERE NOT EXISTS \
                         (SELECT 1 FROM pg_replication_slots WHERE slot_name = {lit});",
                        lit = literal(name)
                    )],
                )
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
    fn scripts_are_idempotent_and_complete() {
        let price = TableName {
            schema: "public".into(),
            name: "price".into(),
        };
        let sql = create_publication("wal'hook", &[&price], false, 18);
        assert!(sql.contains("pubname = 'wal''hook'"), "{sql}");
        assert!(
            sql.contains("CREATE PUBLICATION \"wal'hook\" FOR TABLE \"public\".\"price\""),
            "{sql}"
        );
        assert!(sql.contains("publish_generated_columns = stored"), "{sql}");
        assert!(!create_publication("w", &[&price], true, 17).contains("generated"));
        assert!(create_publication("w", &[&price], true, 17).contains("publish_via_partition_root = true"));
        let add = add_table("w", &price);
        assert!(add.starts_with("DO $$ BEGIN IF NOT EXISTS"), "{add}");
        assert!(add.contains("ADD TABLE \"public\".\"price\""), "{add}");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 kB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GB");
        assert_eq!(bytes(-3), "0 B");
    }
}
