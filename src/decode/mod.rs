//! Decode stage: pgoutput bytes in, faithful Rust/JSON values out.
//!
//! This stage turns the raw payload of a PostgreSQL logical replication
//! `XLogData` message (pgoutput plugin, protocol version 1, text-format
//! column values) into a [`LogicalMessage`], and turns each column's text
//! value into JSON via a [`TypeRegistry`].
//!
//! Guarantees:
//!
//! * **Never panics on bad bytes.** [`parse`] checks every declared length
//!   and count against the bytes actually remaining, never allocates more
//!   than the input can justify, rejects trailing bytes and reports every
//!   problem as a [`DecodeError`] naming what was being read and the byte
//!   offset where it started.
//! * **Values are faithful.** [`TypeRegistry::to_json`] never fails and never
//!   loses information: integers and `numeric` keep their exact digits (no
//!   round trip through `f64`), `json`/`jsonb` is embedded with big numbers
//!   intact (at any depth, see [`json`]), `bytea` becomes standard base64, arrays become nested JSON
//!   arrays, and any text that does not parse as its declared type is passed
//!   through unchanged as a JSON string.
//! * Timestamps in the protocol (PostgreSQL epoch microseconds) are rendered
//!   by [`time`] without any calendar library.

mod array;
pub mod json;
pub mod pgoutput;
pub mod time;
pub mod value;

pub use pgoutput::{parse, Cell, Column, DecodeError, LogicalMessage, Relation};
pub use value::{TypeKind, TypeRegistry};
