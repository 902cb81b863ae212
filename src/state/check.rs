//! The state database's side of a check, read-only: it answers, its `walhook` schema is
//! one this walhook knows (or may be created), and it takes writes.

use tokio_postgres::Client;

use crate::config::quote_ident;
use crate::report::{Finding, Who};

use super::MIGRATIONS;

/// What the state database at `url` says; `client` when it is already connected (the
/// state lives in the source database).
pub async fn inspect(url: &str, client: Option<&Client>) -> Vec<Finding> {
    let subject = "state database";
    let owned;
    let client = match client {
        Some(c) => c,
        None => match super::open(url).await {
            Ok(c) => {
                owned = c;
                &owned
            }
            Err(e) => return vec![Finding::problem(subject, e.to_string()).at("state.url")],
        },
    };
    match look(client).await {
        Ok(found) => found,
        Err(e) => vec![Finding::problem(
            subject,
            format!("cannot be inspected: {}", crate::pg::describe(&e)),
        )
        .at("state.url")],
    }
}

async fn look(client: &Client) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let subject = "state database";
    let row = client
        .query_one(
            // From the catalog by name: `to_regclass` needs USAGE on the schema, which a
            // role other than its owner may lack.
            "SELECT current_user::text, current_database()::text, pg_is_in_recovery(),
                    n.oid IS NOT NULL,
                    has_database_privilege(current_database(), 'CREATE'),
                    CASE WHEN n.oid IS NULL THEN false
                         ELSE has_schema_privilege(n.oid, 'USAGE') AND has_schema_privilege(n.oid, 'CREATE') END,
                    EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname = 'schema_migrations'),
                    pg_get_userbyid(n.nspowner)::text,
                    n.oid IS NULL OR pg_has_role(n.nspowner, 'USAGE'),
                    ARRAY(SELECT format('%I.%I', 'walhook', c.relname) FROM pg_class c
                          WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p') ORDER BY c.relname)
             FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = 'walhook'",
            &[],
        )
        .await?;
    let (role, database): (String, String) = (row.get(0), row.get(1));
    let (standby, schema, create_db, create_schema, versioned): (bool, bool, bool, bool, bool) =
        (row.get(2), row.get(3), row.get(4), row.get(5), row.get(6));
    let (owner, owned, tables): (Option<String>, bool, Vec<String>) = (row.get(7), row.get(8), row.get(9));
    let mut out = Vec::new();
    if standby {
        out.push(
            Finding::problem(
                subject,
                format!("{database} is a standby (read-only): walhook keeps its spill log, dead letters and lease there; point state.url at the primary"),
            )
            .at("state.url"),
        );
        return Ok(out);
    }
    let known = MIGRATIONS.len() as i32;
    // Migrations alter walhook's tables, which only their owner may do.
    if let Some(owner) = owner.filter(|_| !owned) {
        let role = quote_ident(&role);
        let mut sql = vec![format!("ALTER SCHEMA \"walhook\" OWNER TO {role};")];
        sql.extend(tables.iter().map(|t| format!("ALTER TABLE {t} OWNER TO {role};")));
        out.push(
            Finding::problem(
                subject,
                if tables.is_empty() {
                    format!(
                        "{database}: schema \"walhook\" belongs to role {owner}, not to {role}: walhook \
                         creates, writes and migrates its tables there, so it runs as the schema's owner. \
                         Run walhook as {owner}, or give the schema to {role}"
                    )
                } else {
                    format!(
                        "{database}: schema \"walhook\" and its tables belong to role {owner} (which walhook \
                         ran as before), not to {role}: walhook reads, writes and migrates them, so it runs \
                         as their owner. Run walhook as {owner}, or give them to {role}"
                    )
                },
            )
            .at("state.url")
            .with_fix(Who::Superuser, sql),
        );
        return Ok(out);
    }
    if !schema {
        out.push(if create_db {
            Finding::ok(
                subject,
                format!("{database}: walhook creates its schema \"walhook\" at start"),
            )
        } else {
            Finding::problem(
                subject,
                format!("{database} has no schema \"walhook\" yet, and role {role} may not create it"),
            )
            .at("state.url")
            .with_fix(
                Who::Superuser,
                vec![format!(
                    "GRANT CREATE ON DATABASE {} TO {};",
                    quote_ident(&database),
                    quote_ident(&role)
                )],
            )
        });
        return Ok(out);
    }
    let version: i32 = if versioned {
        client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM walhook.schema_migrations",
                &[],
            )
            .await?
            .get(0)
    } else {
        0
    };
    out.push(if version > known {
        Finding::warning(
            subject,
            format!(
                "{database}: schema version {version} is newer than this walhook knows ({known}): a newer \
                 walhook wrote it; run that version (or newer), this one leaves it as it is"
            ),
        )
    } else if version < known {
        Finding::ok(
            subject,
            format!("{database}: schema version {version}; walhook migrates it to {known} at start"),
        )
    } else {
        Finding::ok(subject, format!("{database}: schema version {version}, writable"))
    });
    if !create_schema {
        out.push(
            Finding::problem(
                subject,
                format!("role {role} may not create tables in schema \"walhook\""),
            )
            .at("state.url")
            .with_fix(
                Who::Superuser,
                vec![format!(
                    "GRANT USAGE, CREATE ON SCHEMA \"walhook\" TO {};",
                    quote_ident(&role)
                )],
            ),
        );
    }
    Ok(out)
}
