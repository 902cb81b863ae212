//! The publication's side of a check: it exists or walhook may create it, it holds every
//! captured table or walhook may add them, it publishes what the rules listen to, and
//! (made by hand) what its column lists, row filters and, on PostgreSQL 18, its handling
//! of generated columns mean for the events and for the application's writes. Also the
//! idempotent statements that create and extend it.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::Server;
use crate::config::{quote_ident, Config, Op, TableName};
use crate::report::{literal, Finding, Who};
use crate::source::inspect::table_names;
use crate::source::setup::SetupError;

/// What the publication check needs of each captured table.
pub struct Captured {
    pub owner: String,
    /// The operations its changes must be published for.
    pub ops: Vec<Op>,
    /// It has REPLICA IDENTITY FULL now.
    pub full: bool,
    /// A rule on it reads old rows, so it needs REPLICA IDENTITY FULL.
    pub needs_full: bool,
    /// It has no replica identity (no primary key, or `REPLICA IDENTITY NOTHING`): who
    /// may give it one, and the statements that do.
    pub unidentified: Option<(Who, Vec<String>)>,
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
        // The publication walhook (or the fix) creates publishes every operation.
        unidentified(tables, (&[], true), &subject, out);
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
    // What it must publish: what it does, and every operation a rule listens to. One
    // statement sets all of it (one per missing operation would undo each other).
    let listening = |op: Op| -> Vec<String> {
        tables
            .iter()
            .filter(|(_, c)| c.ops.contains(&op))
            .map(|(t, _)| t.to_string())
            .collect()
    };
    let wanted: Vec<(&str, bool)> = published
        .iter()
        .zip([Op::Insert, Op::Update, Op::Delete, Op::Truncate])
        .map(|(&(o, yes), op)| (o, yes || !listening(op).is_empty()))
        .collect();
    let set: Vec<&str> = wanted.iter().filter(|(_, yes)| *yes).map(|(o, _)| *o).collect();
    let set_publish = format!(
        "ALTER PUBLICATION {} SET (publish = {});",
        quote_ident(name),
        literal(&set.join(", "))
    );
    for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
        let listening = listening(op);
        if published.contains(&(op.as_str(), false)) && !listening.is_empty() {
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
                    server.owner(&owner, vec![format!("publication {name}")]),
                    vec![set_publish.clone()],
                ),
            );
        }
    }
    let missing = if all_tables {
        Vec::new()
    } else {
        missing_tables(client, name, &names).await?
    };
    // Updates or deletes published now, or once the fix above publishes them.
    if wanted[1].1 || wanted[2].1 {
        let held: Vec<&TableName> = names.iter().copied().filter(|t| !missing.contains(t)).collect();
        unidentified(tables, (&held, published[1].1 || published[2].1), &subject, out);
    }
    if all_tables {
        out.push(Finding::ok(
            subject.clone(),
            "publishes every table (FOR ALL TABLES)",
        ));
    } else {
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
        generated_columns(client, name, &owner, server, fixes_itself, tables, &subject, out).await?;
    }
    Ok(())
}

/// A table without a replica identity, in a publication that publishes updates or
/// deletes, makes the application's UPDATEs and DELETEs of it fail ("cannot update table
/// ... because it does not have a replica identity and publishes updates"), whatever the
/// rules on it listen to. Such a table is a problem: its fix gives it one, before any
/// statement puts it in the publication. `held`: the tables the publication holds now;
/// `writes_now`: it publishes updates or deletes now.
fn unidentified(
    tables: &BTreeMap<TableName, Captured>,
    (held, writes_now): (&[&TableName], bool),
    subject: &str,
    out: &mut Vec<Finding>,
) {
    for (table, captured) in tables {
        let Some((who, fix)) = &captured.unidentified else {
            continue;
        };
        let when = match (held.contains(&table), writes_now) {
            (true, true) => "fail now",
            (true, false) => "would fail once it publishes updates or deletes, as the rules need",
            (false, _) => "would fail once it holds the table",
        };
        out.push(
            Finding::problem(
                subject,
                format!(
                    "publishes updates or deletes (or is to), and {table} has no replica identity (no primary key): \
                     the application's UPDATEs and DELETEs of it {when} (\"cannot update table ... because \
                     it does not have a replica identity and publishes updates\"). Give it one (or add a \
                     primary key, or capture it through a publication with publish = 'insert')"
                ),
            )
            .at("source.publication")
            .with_fix(who.clone(), fix.clone())
            .first(),
        );
    }
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
/// a table, or one a rule needs FULL on, is a problem whose fix publishes them (events
/// then carry those columns too) and comes first in `--sql`, before any REPLICA IDENTITY
/// FULL; unless walhook publishes them itself at start. Any other table with one only
/// loses those columns from its events (a warning).
#[allow(clippy::too_many_arguments)]
async fn generated_columns(
    client: &Client,
    name: &str,
    owner: &str,
    server: &Server,
    fixes_itself: bool,
    tables: &BTreeMap<TableName, Captured>,
    subject: &str,
    out: &mut Vec<Finding>,
) -> Result<(), SetupError> {
    if publishes_generated(client, name).await? {
        return Ok(());
    }
    let fix = vec![format!(
        "ALTER PUBLICATION {} SET (publish_generated_columns = stored);",
        quote_ident(name)
    )];
    for table in with_generated_columns(client, tables.keys()).await? {
        let Some(captured) = tables.get(&table) else {
            continue;
        };
        let finding = if !captured.full && !captured.needs_full {
            Finding::warning(
                subject,
                format!("does not publish stored generated columns: events of {table} leave its out"),
            )
        } else if fixes_itself {
            let when = if captured.full {
                "fail now, until walhook starts"
            } else {
                "would fail once it is FULL, until walhook starts"
            };
            Finding::warning(
                subject,
                format!(
                    "does not publish stored generated columns, and {table} has one: on PostgreSQL 18 the \
                     application's UPDATEs of it {when} and publishes them (publish_generated_columns = stored). \
                     Publish them now to be safe"
                ),
            )
        } else {
            let why = if captured.full {
                "the application's UPDATEs of it fail now"
            } else {
                "setting REPLICA IDENTITY FULL on it (which its rules need) would make the application's UPDATEs of it fail"
            };
            Finding::problem(
                subject,
                format!(
                    "does not publish stored generated columns, and {table} has one: on PostgreSQL 18 {why} \
                     (\"Replica identity must not contain unpublished generated columns\"). Publish them \
                     (events then carry them)"
                ),
            )
            .at("source.publication")
        };
        let urgent = captured.full || captured.needs_full;
        let finding = finding.with_fix(server.owner(owner, Vec::new()), fix.clone());
        out.push(if urgent { finding.first() } else { finding });
    }
    Ok(())
}

/// Those of `tables` that have a stored generated column.
pub async fn with_generated_columns<'a>(
    client: &Client,
    tables: impl Iterator<Item = &'a TableName>,
) -> Result<Vec<TableName>, tokio_postgres::Error> {
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.map(|t| (t.schema.as_str(), t.name.as_str())).unzip();
    Ok(table_names(
        &client
            .query(
                "SELECT n.nspname::text, c.relname::text
             FROM unnest($1::text[], $2::text[]) AS u(s, n)
             JOIN pg_namespace n ON n.nspname = u.s
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = u.n
             WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attgenerated = 's'
                           AND NOT a.attisdropped)",
                &[&schemas, &names],
            )
            .await?,
    ))
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
                // Generated columns are left out of `attnames` unless published.
                // By name, not `to_regclass`: that needs USAGE on the table's schema.
                "SELECT attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND attnum > 0 \
                 AND NOT attisdropped AND attgenerated = ''",
                &[&table.schema, &table.name],
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
/// partitioned table's partitions). Tables are looked up by name in the catalog, not with
/// `::regclass`, which needs USAGE on their schema.
pub async fn missing_tables(
    client: &Client,
    publication: &str,
    tables: &[&TableName],
) -> Result<Vec<TableName>, tokio_postgres::Error> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    Ok(table_names(
        &client
            .query(
                "SELECT u.s, u.n FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(s, n, i)
             LEFT JOIN LATERAL (
               SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = u.s AND c.relname = u.n) t ON true
             WHERE NOT EXISTS (
               SELECT 1 FROM pg_publication_tables pt
               JOIN pg_namespace pn ON pn.nspname = pt.schemaname
               JOIN pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = pt.tablename
               WHERE pt.pubname = $1 AND pc.oid IN (
                 SELECT t.oid
                 UNION ALL SELECT relid FROM pg_partition_ancestors(t.oid)
                 UNION ALL SELECT relid FROM pg_partition_tree(t.oid)))
             ORDER BY u.i",
                &[&publication, &schemas, &names],
            )
            .await?,
    ))
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
}
