//! `[[documents]]`: a query keyed by an aggregate id (a product), made due by changes of
//! any of its source tables (see `mapping::documents` and `crate::documents`).

use super::*;

/// Sources a document may have at most (their operations are bits of a u64).
pub const MAX_SOURCES: usize = 16;

/// A document's window when it names none: changes of one key within it make one event.
pub const DEFAULT_DOCUMENT_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Event type, e.g. `product.updated`.
    pub name: String,
    /// Name of the document key in `data.key`, e.g. `product_id`.
    pub key: String,
    /// One SELECT; `$1` is the key. No row back: the event's op is `delete`.
    pub query: String,
    /// Tables whose changes make the document of their key due, and the column holding
    /// the key in each.
    pub sources: Vec<DocumentSource>,
    /// Changes of one key within this long (on commit times) make one event.
    #[serde(default = "default_document_window", with = "humantime_serde")]
    pub window: Duration,
    /// ... and the event goes out at the latest this long after the first change.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Open windows of this document at most; past it the oldest closes early.
    #[serde(default = "default_max_open")]
    pub max_open: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentSource {
    /// `schema.table`; schema defaults to `public`.
    pub table: String,
    /// The column holding the document key.
    pub key: String,
}

fn default_document_window() -> Duration {
    DEFAULT_DOCUMENT_WINDOW
}

impl Config {
    /// The problems of the `[[documents]]` the config can tell alone.
    pub(super) fn document_problems(&self, bad: &mut dyn FnMut(String, String)) {
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.documents.iter().enumerate() {
            let p = |k: &str| format!("documents[{i}].{k}");
            if !valid_event_name(&d.name) {
                bad(
                    p("name"),
                    format!(
                        "{:?} must be letters, digits, '.', '_' or '-', e.g. \"product.updated\"",
                        d.name
                    ),
                );
            } else if !names.insert(d.name.as_str()) {
                bad(
                    p("name"),
                    format!("{:?} names two documents: give each its own", d.name),
                );
            }
            if d.key.trim().is_empty() {
                bad(
                    p("key"),
                    "empty: name the document key, e.g. \"product_id\"".into(),
                );
            }
            if !d.query.contains("$1") {
                bad(
                    p("query"),
                    "must read the document of one key, given as $1, e.g. \"select ... from products p where p.id = $1\""
                        .into(),
                );
            }
            if d.sources.len() > MAX_SOURCES {
                bad(
                    p("sources"),
                    format!(
                        "{} tables: a document has at most {} sources",
                        d.sources.len(),
                        MAX_SOURCES
                    ),
                );
            }
            if d.sources.is_empty() {
                bad(
                    p("sources"),
                    "empty: list the tables whose changes make the document due, e.g. \
                     [{ table = \"public.products\", key = \"id\" }]"
                        .into(),
                );
            }
            let mut tables = std::collections::HashSet::new();
            for (j, s) in d.sources.iter().enumerate() {
                let sp = |k: &str| format!("documents[{i}].sources[{j}].{k}");
                match TableName::parse(&s.table) {
                    Ok(t) if !tables.insert(t.clone()) => {
                        bad(sp("table"), format!("{t} is listed twice: list each table once"))
                    }
                    Ok(_) => {}
                    Err(e) => bad(sp("table"), e),
                }
                if s.key.trim().is_empty() {
                    bad(
                        sp("key"),
                        "empty: name the column that holds the document key, e.g. \"product_id\"".into(),
                    );
                }
            }
            super::validate::window_problems(bad, &p, (d.window, d.max_wait, d.max_open));
        }
    }
}
