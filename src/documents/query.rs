//! A document's query as walhook runs it: prepared once per connection, wrapped so every
//! column comes back as its text (then typed as streamed values are), with the key passed
//! in the type the query wants for `$1`.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use serde_json::Value;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;

use crate::config::quote_ident;

/// The alias the wrapped query gives the document's own query.
const ALIAS: &str = "walhook_document";

/// What preparing a document's query found: the statement that reads it as text, the
/// type of its key, and its columns with their type OIDs.
#[derive(Debug, Clone)]
pub struct Shape {
    pub sql: String,
    pub key_type: Type,
    pub columns: Vec<(String, u32)>,
}

/// The key types walhook can pass as `$1`.
fn passable(ty: &Type) -> bool {
    [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UUID,
    ]
    .contains(ty)
}

/// Prepares `query` on `client` and works out its shape. An error says what to change
/// in the query (the server's words when it refuses it).
pub async fn shape(client: &Client, query: &str) -> Result<Shape, String> {
    let stmt = client.prepare(query).await.map_err(|e| crate::pg::describe(&e))?;
    let key_type = match stmt.params() {
        [one] => one.clone(),
        [] => return Err("does not use $1 (the document key)".into()),
        more => {
            return Err(format!(
                "uses {} parameters: only $1 (the document key) is given",
                more.len()
            ))
        }
    };
    if !passable(&key_type) {
        return Err(format!(
            "$1 is compared as {key_type}, which walhook cannot pass; write it as ($1::text)::{key_type}"
        ));
    }
    let columns: Vec<(String, u32)> = (stmt.columns().iter())
        .map(|c| (c.name().to_string(), c.type_().oid()))
        .collect();
    if columns.is_empty() {
        return Err("returns no columns: select the document's columns".into());
    }
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = columns.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Err(format!(
            "returns two columns named {dup:?}: give each its own name (… AS other_name)"
        ));
    }
    let cols = (columns.iter())
        .map(|(n, _)| format!("{ALIAS}.{}::text", quote_ident(n)))
        .collect::<Vec<_>>()
        .join(", ");
    // On lines of its own: a comment on the query's last line ends there. One row is
    // used, so one is fetched, whatever the query returns.
    let sql = format!("SELECT {cols} FROM (\n{query}\n) AS {ALIAS} LIMIT 1");
    Ok(Shape {
        sql,
        key_type,
        columns,
    })
}

/// A document key, passed as the type the query's `$1` has.
#[derive(Debug)]
pub struct KeyArg<'a>(pub &'a Value);

impl KeyArg<'_> {
    fn text(&self) -> String {
        match self.0 {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

impl ToSql for KeyArg<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let text = self.text();
        let bad = |e: &dyn std::fmt::Display| format!("document key {text:?} is not a {ty}: {e}");
        match *ty {
            Type::INT2 => out.put_i16(text.parse().map_err(|e| bad(&e))?),
            Type::INT4 => out.put_i32(text.parse().map_err(|e| bad(&e))?),
            Type::INT8 => out.put_i64(text.parse().map_err(|e| bad(&e))?),
            Type::OID => out.put_u32(text.parse().map_err(|e| bad(&e))?),
            Type::UUID => out.put_slice(&uuid_bytes(&text).ok_or_else(|| bad(&"not 32 hex digits"))?),
            _ => out.put_slice(text.as_bytes()),
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        passable(ty)
    }

    to_sql_checked!();
}

/// A UUID's 16 bytes from its text (hyphens and braces anywhere, as PostgreSQL takes it).
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b'-' | b'{' | b'}'))
        .map(|b| (b as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    if digits.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = pair[0] << 4 | pair[1];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_passed_as_the_query_wants_them() {
        let mut out = BytesMut::new();
        KeyArg(&serde_json::json!(42))
            .to_sql(&Type::INT8, &mut out)
            .unwrap();
        assert_eq!(&out[..], &42i64.to_be_bytes());
        out.clear();
        KeyArg(&serde_json::json!("7"))
            .to_sql(&Type::INT4, &mut out)
            .unwrap();
        assert_eq!(&out[..], &7i32.to_be_bytes());
        out.clear();
        KeyArg(&serde_json::json!("SKU-1"))
            .to_sql(&Type::TEXT, &mut out)
            .unwrap();
        assert_eq!(&out[..], b"SKU-1");
        out.clear();
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        KeyArg(&serde_json::json!(u))
            .to_sql(&Type::UUID, &mut out)
            .unwrap();
        assert_eq!(out[0], 0xa0);
        assert_eq!(out[15], 0x11);
        assert_eq!(out.len(), 16);
        // Bad keys are errors, never panics.
        assert!(KeyArg(&serde_json::json!("x"))
            .to_sql(&Type::INT8, &mut out)
            .is_err());
        assert!(KeyArg(&serde_json::json!("12"))
            .to_sql(&Type::UUID, &mut out)
            .is_err());
        assert!(KeyArg(&serde_json::json!(99999))
            .to_sql(&Type::INT2, &mut out)
            .is_err());
        assert!(!<KeyArg as ToSql>::accepts(&Type::NUMERIC));
    }
}
