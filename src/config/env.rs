//! Environment overrides: `WALHOOK_<SECTION>__<KEY>` (two underscores) sets the key of a
//! `[source]`, `[state]` or `[admin]` section. Every other `WALHOOK_*` name is left alone:
//! walhook's own `WALHOOK_CONFIG` and `WALHOOK_LOG_FORMAT`, a secret referenced as
//! `${WALHOOK_ADMIN_TOKEN}`, and the `WALHOOK_SERVICE_HOST`, `WALHOOK_PORT_9187_TCP_ADDR`, ...
//! that Kubernetes puts in every pod of a namespace with a Service named `walhook`.
//!
//! A name that looks like a mistyped override (`WALHOOK_SOURCE_URL`: a section and one of
//! its keys, one underscore apart) is ignored with a warning that names the right
//! spelling, unless the config file uses it as `${...}`. A `__` name that names no section
//! or key is an error: it can only be a typo of an override.

use std::collections::BTreeMap;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::{AdminConfig, Problem, SourceConfig, StateConfig};

/// What every override name starts with.
const PREFIX: &str = "WALHOOK_";
/// Between the section and the key.
const SEPARATOR: &str = "__";

/// The sections that take overrides, with their keys.
fn sections() -> [(&'static str, &'static [&'static str]); 3] {
    [
        ("source", field_names::<SourceConfig>()),
        ("state", field_names::<StateConfig>()),
        ("admin", field_names::<AdminConfig>()),
    ]
}

/// The `WALHOOK_*` variables of an environment, sorted out.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    /// The overrides, by variable name (as the `config` crate's environment source takes them).
    pub values: BTreeMap<String, String>,
    /// Names that look like mistyped overrides, with the right spelling: (name, message).
    pub near_misses: Vec<(String, String)>,
    /// `__` names that name no section or key.
    pub problems: Vec<Problem>,
}

impl Overrides {
    /// Sorts the variables `vars` (name, value) out; names that are not UTF-8 are skipped.
    pub fn from_vars<I>(vars: I) -> Overrides
    where
        I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    {
        let mut out = Overrides::default();
        for (name, value) in vars {
            let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
                continue;
            };
            out.take(name, value);
        }
        out
    }

    fn take(&mut self, name: &str, value: &str) {
        // Case-insensitive, as the `config` crate matches the prefix.
        let Some(rest) = name
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| name[PREFIX.len()..].to_ascii_lowercase())
        else {
            return;
        };
        let sections = sections();
        match rest.split_once(SEPARATOR) {
            Some((section, key)) => {
                let Some((_, keys)) = sections.iter().find(|(s, _)| *s == section) else {
                    let message = if section == "events" || section == "subscribers" {
                        format!(
                            "[[{section}]] cannot be overridden from the environment: \
                             write ${{VAR}} in the config file instead"
                        )
                    } else {
                        format!(
                            "no section [{section}]: environment overrides are {}",
                            section_list(&sections)
                        )
                    };
                    self.problems.push(Problem {
                        path: name.to_string(),
                        message,
                    });
                    return;
                };
                if !keys.contains(&key) {
                    self.problems.push(Problem {
                        path: name.to_string(),
                        message: format!("[{section}] has no key {key:?} (it has: {})", keys.join(", ")),
                    });
                    return;
                }
                self.values.insert(name.to_string(), value.to_string());
            }
            None => {
                let near = sections.iter().find_map(|(section, keys)| {
                    let key = rest.strip_prefix(section)?.strip_prefix('_')?;
                    keys.contains(&key).then_some((section, key))
                });
                if let Some((section, key)) = near {
                    let right = format!(
                        "{PREFIX}{}{SEPARATOR}{}",
                        section.to_ascii_uppercase(),
                        key.to_ascii_uppercase()
                    );
                    self.near_misses.push((
                        name.to_string(),
                        format!(
                            "environment variable {name} is ignored: to override {section}.{key}, \
                             name it {right} (two underscores between section and key)"
                        ),
                    ));
                }
            }
        }
    }
}

fn section_list(sections: &[(&str, &[&str])]) -> String {
    let names: Vec<String> = sections
        .iter()
        .map(|(s, _)| format!("{PREFIX}{}{SEPARATOR}<KEY>", s.to_ascii_uppercase()))
        .collect();
    names.join(", ")
}

/// The field names a `#[derive(Deserialize)]` struct accepts, as serde hands them to the
/// deserializer. Hand-written rather than from `serde-aux` (its `serde_introspect`), which
/// would bring chrono in for these few lines.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = T::deserialize(&mut fields);
    fields.0.unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sort(vars: &[(&str, &str)]) -> Overrides {
        Overrides::from_vars(vars.iter().map(|(k, v)| (k.into(), v.into())))
    }

    #[test]
    fn section_keys_are_the_structs_fields() {
        let s = sections();
        assert!(
            s[0].1.contains(&"url") && s[0].1.contains(&"receive_timeout"),
            "{s:?}"
        );
        assert!(s[1].1.contains(&"lease"), "{s:?}");
        assert_eq!(s[2].1, ["listen", "token"]);
    }

    #[test]
    fn only_section_key_names_are_overrides() {
        let o = sort(&[
            ("WALHOOK_SOURCE__URL", "postgres://db/shop"),
            ("walhook_admin__listen", "0.0.0.0:9187"),
            ("WALHOOK_CONFIG", "/etc/walhook/walhook.toml"),
            ("WALHOOK_LOG_FORMAT", "json"),
            ("WALHOOK_ADMIN_TOKEN_FILE", "/run/secrets/token"),
            ("WALHOOK_SERVICE_HOST", "10.0.0.7"),
            ("WALHOOK_SERVICE_PORT", "9187"),
            ("WALHOOK_PORT", "tcp://10.0.0.7:9187"),
            ("WALHOOK_PORT_9187_TCP_ADDR", "10.0.0.7"),
            ("WALHOOK_RECEIVER_SECRET", "whsec_x"),
            ("PATH", "/usr/bin"),
        ]);
        assert_eq!(
            o.values.keys().collect::<Vec<_>>(),
            ["WALHOOK_SOURCE__URL", "walhook_admin__listen"]
        );
        assert!(o.near_misses.is_empty(), "{:?}", o.near_misses);
        assert!(o.problems.is_empty(), "{:?}", o.problems);
    }

    #[test]
    fn a_mistyped_override_is_named_with_its_right_spelling() {
        let o = sort(&[
            ("WALHOOK_SOURCE_URL", "postgres://db/shop"),
            ("WALHOOK_STATE_LEASE", "10s"),
            ("WALHOOK_ADMIN_TOKEN", "0123456789abcdef"),
        ]);
        assert!(o.values.is_empty());
        let names: Vec<&str> = o.near_misses.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["WALHOOK_SOURCE_URL", "WALHOOK_STATE_LEASE", "WALHOOK_ADMIN_TOKEN"]
        );
        assert!(
            o.near_misses[0].1.contains("source.url") && o.near_misses[0].1.contains("WALHOOK_SOURCE__URL"),
            "{:?}",
            o.near_misses
        );
        assert!(o.near_misses[2].1.contains("WALHOOK_ADMIN__TOKEN"));
    }

    #[test]
    fn an_override_of_nothing_is_an_error_naming_the_variable() {
        let o = sort(&[
            ("WALHOOK_SOURC__URL", "x"),
            ("WALHOOK_SOURCE__URLS", "x"),
            ("WALHOOK_SUBSCRIBERS__URL", "x"),
        ]);
        assert!(o.values.is_empty());
        let p: Vec<String> = o.problems.iter().map(Problem::to_string).collect();
        assert!(
            p[0].starts_with("WALHOOK_SOURC__URL: no section [sourc]")
                && p[0].contains("WALHOOK_SOURCE__<KEY>"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("WALHOOK_SOURCE__URLS: [source] has no key \"urls\"")
                && p[1].contains("url, slot"),
            "{p:?}"
        );
        assert!(p[2].contains("${VAR}"), "{p:?}");
    }
}
