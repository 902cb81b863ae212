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
        Err(e) => vec![Finding::problem(subject, format!("cannot be inspected: {e}")).at("state.url")],
    }
}

async fn look(client: &Client) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let subject = "state database";
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, pg_is_in_recovery(),
                    to_regnamespace('walhook') IS NOT NULL,
                    has_database_privilege(current_database(), 'CREATE'),
                    CASE WHEN to_regnamespace('walhook') IS NULL THEN false
                         ELSE has_schema_privilege('walhook', 'CREATE') END,
                    to_regclass('walhook.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?;
    let (role, database): (String, String) = (row.get(0), row.get(1));
    let (standby, schema, create_db, create_schema, versioned): (bool, bool, bool, bool, bool) =
        (row.get(2), row.get(3), row.get(4), row.get(5), row.get(6));
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
