//! When the server refuses to go on streaming the slot for good: the slot was dropped or
//! invalidated, or the publication was dropped (and maybe created again). Reconnecting
//! cannot fix any of these, and each has its own fix, which loses changes, so walhook
//! stops (exit code 3) with one message that carries the server's error and says what
//! each fix loses.
//!
//! The server's error alone does not tell these apart (a dropped publication and a
//! dropped slot are both 42704 undefined_object, and the text depends on
//! `lc_messages`), so the catalog is asked what exists now ([`Facts`]) and [`explain`]
//! decides from both.
//!
//! Why a re-created publication does not help: the walsender looks the publication up
//! with the catalog as it was at each change's position, so every change written while it
//! did not exist fails to decode, however often it is tried.

use tokio_postgres::Client;

use super::ServerError;
use crate::config::{quote_ident, Config, TableName};
use crate::event::format_lsn;

/// What the catalog says after the server refused to stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// None when the slot does not exist.
    pub slot: Option<SlotFacts>,
    pub publication_exists: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlotFacts {
    /// `pg_replication_slots.wal_status`: `lost` once the slot is invalidated.
    pub wal_status: String,
    /// Its confirmed flush LSN, as the server prints it.
    pub confirmed: Option<String>,
}

/// Reads the [`Facts`] about `config`'s slot and publication.
pub async fn facts(client: &Client, config: &Config) -> Result<Facts, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
                    (SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $2),
                    (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $2)",
            &[&config.source.publication, &config.source.slot],
        )
        .await?;
    let wal_status: Option<String> = row.get(1);
    Ok(Facts {
        publication_exists: row.get(0),
        slot: wal_status.map(|wal_status| SlotFacts {
            wal_status,
            confirmed: row.get(2),
        }),
    })
}

/// The message that ends walhook after the server refused to stream (`server`, or None
/// when walhook found the slot gone itself), naming the fix and what it loses. None when
/// the refusal is none of the known ones (the caller decides whether to retry).
/// `last_confirmed` is the last position walhook confirmed to the slot.
pub fn explain(
    server: Option<&ServerError>,
    facts: &Facts,
    config: &Config,
    last_confirmed: u64,
) -> Option<String> {
    let slot = &config.source.slot;
    let publication = &config.source.publication;
    let said = server.map_or(String::new(), |e| {
        format!("; the server said: {}", e.to_string().trim_end_matches('.'))
    });
    let confirmed = |s: &SlotFacts| s.confirmed.clone().unwrap_or_else(|| format_lsn(last_confirmed));
    let new_slot = if config.source.create {
        "it creates a new slot (source.create = true)".to_string()
    } else {
        format!(
            "after SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput'); (source.create = false) it uses the new slot"
        )
    };
    let Some(facts_slot) = &facts.slot else {
        return Some(format!(
            "replication slot {slot:?} was dropped while walhook used it{said}. Walhook cannot go on \
             without it. Fix: start walhook again: {new_slot} and sends the changes committed from \
             then on. The changes committed after {} (the last position walhook confirmed) and \
             before the new slot exists are never sent; resynchronise subscribers for that time \
             if they need them",
            format_lsn(last_confirmed)
        ));
    };
    let lsn = confirmed(facts_slot);
    if facts_slot.wal_status == "lost" {
        return Some(format!(
            "replication slot {slot:?} was invalidated: PostgreSQL removed WAL the slot still \
             needed, because it fell more than max_slot_wal_keep_size behind{said}. It can never \
             stream again. Fix: SELECT pg_drop_replication_slot('{slot}'); then start walhook \
             again: {new_slot} and sends the changes committed from then on. The changes \
             committed after {lsn} (the slot's last confirmed position) and before the new slot \
             exists are never sent; resynchronise subscribers for that time if they need them. \
             So that it does not happen again, raise max_slot_wal_keep_size (-1: no limit) or \
             find what held walhook back"
        ));
    }
    if server?.code != "42704" {
        return None;
    }
    // Both ways past the gap lose the same changes; keeping the slot keeps its name.
    let ways = format!(
        "either SELECT pg_replication_slot_advance('{slot}', pg_current_wal_lsn()); (the slot \
         stays; the changes committed after {lsn}, the slot's confirmed position, that were not \
         delivered yet, and every change up to the advance, are never sent) or SELECT \
         pg_drop_replication_slot('{slot}'); (when walhook starts again {new_slot}; the changes \
         committed after {lsn} that were not delivered yet, and every change up to the new \
         slot, are never sent); then start walhook again, and resynchronise subscribers for \
         that time if they need them"
    );
    if !facts.publication_exists {
        return Some(format!(
            "publication {publication:?} was dropped while the slot streamed it{said}. The slot \
             cannot decode the changes written after the drop, not even once the publication \
             exists again (decoding reads the catalog as it was at each change). Fix: as the \
             tables' owner (or a superuser; `walhook check --sql` names the role), CREATE \
             PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true); then {ways}",
            quote_ident(publication),
            rule_tables(config)
        ));
    }
    Some(format!(
        "the slot cannot decode a change written while publication {publication:?} did not \
         exist: it was dropped and created again{said}. Decoding reads the catalog as it was at \
         each change, so the changes written before the publication was created again fail \
         every time. Fix: {ways}"
    ))
}

/// The tables of the rules, quoted, as `ensure_publication` publishes them.
fn rule_tables(config: &Config) -> String {
    let tables: std::collections::BTreeSet<TableName> = config
        .events
        .iter()
        .filter_map(|r| TableName::parse(&r.table).ok())
        .collect();
    tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(create: bool) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://localhost/shop\"\ncreate = {create}\n\
             [[events]]\ntable = \"stock\"\n[[events]]\ntable = \"catalog.Product\"\n\
             [[subscribers]]\nname = \"s\"\nurl = \"https://example.com/hook\"\nevents = [\"*\"]\n\
             secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n"
        );
        crate::app::check::from_toml(&text, "t", &|_| None).unwrap()
    }

    fn server(code: &str, message: &str) -> ServerError {
        ServerError {
            code: code.into(),
            message: message.into(),
            ..ServerError::default()
        }
    }

    fn slot(wal_status: &str) -> Option<SlotFacts> {
        Some(SlotFacts {
            wal_status: wal_status.into(),
            confirmed: Some("0/1925300".into()),
        })
    }

    #[test]
    fn a_dropped_publication_names_both_ways_past_the_gap() {
        let e = server("42704", "publication \"walhook\" does not exist");
        let facts = Facts {
            slot: slot("reserved"),
            publication_exists: false,
        };
        let m = explain(Some(&e), &facts, &config(true), 0).unwrap();
        assert!(m.starts_with("publication \"walhook\" was dropped"), "{m}");
        assert!(
            m.contains("the server said: publication \"walhook\" does not exist (SQLSTATE 42704)"),
            "{m}"
        );
        assert!(
            m.contains(
                "CREATE PUBLICATION \"walhook\" FOR TABLE \"catalog\".\"Product\", \"public\".\"stock\" WITH (publish_via_partition_root = true);"
            ),
            "{m}"
        );
        assert!(
            m.contains("SELECT pg_replication_slot_advance('walhook', pg_current_wal_lsn());"),
            "{m}"
        );
        assert!(m.contains("SELECT pg_drop_replication_slot('walhook');"), "{m}");
        assert!(m.contains("after 0/1925300"), "{m}");
        assert!(m.contains("never sent"), "{m}");
    }

    #[test]
    fn a_publication_created_again_needs_only_the_way_past_the_gap() {
        let e = server("42704", "publication \"walhook\" does not exist");
        let facts = Facts {
            slot: slot("reserved"),
            publication_exists: true,
        };
        let m = explain(Some(&e), &facts, &config(true), 0).unwrap();
        assert!(m.contains("dropped and created again"), "{m}");
        assert!(!m.contains("CREATE PUBLICATION"), "{m}");
        assert!(m.contains("pg_replication_slot_advance"), "{m}");
    }

    #[test]
    fn an_invalidated_slot_must_be_dropped() {
        let e = server(
            "55000",
            "can no longer get changes from replication slot \"walhook\"",
        );
        let facts = Facts {
            slot: slot("lost"),
            publication_exists: true,
        };
        let m = explain(Some(&e), &facts, &config(true), 0).unwrap();
        assert!(m.contains("was invalidated"), "{m}");
        assert!(m.contains("(SQLSTATE 55000)"), "{m}");
        assert!(m.contains("SELECT pg_drop_replication_slot('walhook');"), "{m}");
        assert!(m.contains("after 0/1925300"), "{m}");
        assert!(m.contains("max_slot_wal_keep_size"), "{m}");
    }

    #[test]
    fn a_dropped_slot_is_created_again_by_walhook_or_by_hand() {
        let gone = Facts {
            slot: None,
            publication_exists: true,
        };
        let m = explain(None, &gone, &config(true), 0x1925300).unwrap();
        assert!(m.starts_with("replication slot \"walhook\" was dropped"), "{m}");
        assert!(m.contains("source.create = true"), "{m}");
        assert!(m.contains("after 0/1925300"), "{m}");
        let m = explain(None, &gone, &config(false), 0x1925300).unwrap();
        assert!(
            m.contains("SELECT pg_create_logical_replication_slot('walhook', 'pgoutput');"),
            "{m}"
        );
    }

    #[test]
    fn other_refusals_are_left_to_the_caller() {
        let facts = Facts {
            slot: slot("reserved"),
            publication_exists: true,
        };
        // A slot in use, a terminated walsender, or wal_level lowered (55000 too, with a
        // sound slot): none of them is explained here.
        for (code, text) in [
            ("55006", "replication slot \"walhook\" is active for PID 42"),
            ("57P01", "terminating connection due to administrator command"),
            ("55000", "logical decoding requires wal_level >= logical"),
        ] {
            assert_eq!(
                explain(Some(&server(code, text)), &facts, &config(true), 0),
                None,
                "{code}"
            );
        }
    }
}
