//! `walhook deliveries` and `walhook subscribers`: clients of the running walhook's admin
//! API (with the same config), printing its answers.

use super::{DeliveriesAction, SubscribersAction};

/// `walhook deliveries ...`: calls the running walhook's admin API and prints the answer.
pub(super) async fn deliveries(action: DeliveriesAction) -> i32 {
    use crate::admin::client::table;
    let (config, method, path, body, json_out) = match action {
        DeliveriesAction::List {
            config,
            filter,
            status,
            limit,
            json,
        } => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("status", &status)
                .append_pair("limit", &limit.to_string());
            for (k, v) in [
                ("subscriber", &filter.subscriber),
                ("type", &filter.event_type),
                ("key", &filter.key),
                ("since", &filter.since),
                ("until", &filter.until),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
            (config, "GET", format!("/deliveries?{}", q.finish()), None, json)
        }
        DeliveriesAction::Show {
            config,
            subscriber,
            id,
        } => {
            let seg = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            (
                config,
                "GET",
                format!("/deliveries/{}/{}", seg(&subscriber), seg(&id)),
                None,
                true,
            )
        }
        DeliveriesAction::Replay {
            config,
            filter,
            id,
            all,
        } => {
            let Some(subscriber) = filter.subscriber else {
                eprintln!("walhook: replay needs --subscriber NAME");
                return 2;
            };
            let body = serde_json::json!({
                "subscriber": subscriber, "id": id, "type": filter.event_type, "key": filter.key,
                "since": filter.since, "until": filter.until, "all": all,
            });
            (
                config,
                "POST",
                "/deliveries/replay".to_string(),
                Some(body),
                false,
            )
        }
    };
    let answer = match admin_call(&config.config, method, &path, body.as_ref()).await {
        Ok(a) => a,
        Err(code) => return code,
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
    } else if let Some(list) = answer["deliveries"].as_array() {
        print!("{}", table(list));
    } else {
        let ids: Vec<&str> = answer["ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "replayed {} deliveries{}{}",
            ids.len(),
            if ids.is_empty() { "" } else { ": " },
            ids.join(" ")
        );
    }
    0
}

/// `walhook subscribers ...`: calls the running walhook's admin API and prints the answer.
pub(super) async fn subscribers(action: SubscribersAction) -> i32 {
    let seg = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let (config, method, path, body) = match action {
        SubscribersAction::List { config } => (config, "GET", "/subscribers".to_string(), None),
        SubscribersAction::Pause { config, name, reason } => (
            config,
            "POST",
            format!("/subscribers/{}/pause", seg(&name)),
            Some(
                serde_json::json!({ "reason": reason.unwrap_or_else(|| "paused with walhook subscribers pause".into()) }),
            ),
        ),
        SubscribersAction::Resume { config, name } => (
            config,
            "POST",
            format!("/subscribers/{}/resume", seg(&name)),
            None,
        ),
    };
    let answer = match admin_call(&config.config, method, &path, body.as_ref()).await {
        Ok(a) => a,
        Err(code) => return code,
    };
    match answer["subscribers"].as_array() {
        Some(list) => {
            for s in list {
                let get = |k: &str| s[k].as_str().unwrap_or("").to_string();
                let why = if get("status") == "active" {
                    String::new()
                } else {
                    format!(" since {}: {}", get("since"), get("reason"))
                };
                println!("{:<20} {:<9} {:<9}{why}", get("name"), get("status"), get("mode"));
            }
        }
        None => println!(
            "{}: {}",
            answer["name"].as_str().unwrap_or(""),
            answer["status"].as_str().unwrap_or("")
        ),
    }
    0
}

/// Loads the config and calls the running walhook's admin API: the answer of a 200, or
/// the exit code after printing why not.
async fn admin_call(
    path: &std::path::Path,
    method: &str,
    api_path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, i32> {
    use crate::admin::client::{call, error_of};
    let config = super::commands::load(path)?;
    match call(&config, method, api_path, body).await {
        Ok((200, answer)) => Ok(answer),
        Ok((status, answer)) => {
            eprintln!("walhook: {}", error_of(status, &answer));
            Err(1)
        }
        Err(e) => {
            eprintln!("walhook: {e}");
            Err(1)
        }
    }
}
