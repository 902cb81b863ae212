//! `${VAR}` expansion in string values (never in keys). `$${` writes a literal `${`.

use super::Problem;

/// Expands `${NAME}` references in `text`. Unknown variables are errors naming them.
pub fn expand_vars(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err("unterminated \"${\": write ${NAME}, or $${ for a literal".into());
            };
            let name = &after[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("\"${{{name}}}\" is not a variable name"));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(format!(
                        "environment variable {name} is not set (referenced as ${{{name}}})"
                    ))
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands every string in a deserialized config tree, recording problems by key path.
pub(super) fn expand_tree(
    value: &mut serde_json::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        serde_json::Value::String(s) => match expand_vars(s, env) {
            Ok(v) => *s = v,
            Err(message) => problems.push(Problem {
                path: path.to_string(),
                message,
            }),
        },
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_tree(item, &format!("{path}[{i}]"), env, problems);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                expand_tree(v, &p, env, problems);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "whsec_abc".to_string())
    }

    #[test]
    fn expands_known_and_reports_unknown() {
        assert_eq!(expand_vars("a ${SECRET} b", &env).unwrap(), "a whsec_abc b");
        assert_eq!(
            expand_vars("cost $5 and $${X}", &env).unwrap(),
            "cost $5 and ${X}"
        );
        let err = expand_vars("${NOPE}", &env).unwrap_err();
        assert!(err.contains("NOPE is not set"), "{err}");
        assert!(expand_vars("${OPEN", &env).unwrap_err().contains("unterminated"));
        assert!(expand_vars("${a-b}", &env)
            .unwrap_err()
            .contains("not a variable"));
    }
}
