use super::fast::Fast;
use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A standard body as mapping renders it.
const BODY: &str = r#"{"type":"product.detail_changed","timestamp":"2026-11-22T10:00:00.123456Z","data":{"table":"catalog.products","op":"update","key":{"id":7},"new":{"id":7,"sku":"SKU-1","title":"Chair \"Oslo\"","brand":"Nord","price":19.90,"big":9007199254740993},"old":{"id":7,"sku":"SKU-1","title":"Chair","brand":"Nor","price":18.5,"big":1},"changed":["title","brand"],"source":{"lsn":"0/16B3748","xid":731,"commit_time":"2026-11-22T10:00:00.123456Z","seq":0}}}"#;

fn text(extra: &str) -> String {
    format!(
        r#"
[source]
url = "postgres://localhost/shop"
[[events]]
table = "products"
[[subscribers]]
name = "s"
url = "https://a.example.com/hook"
events = ["*"]
secrets = ["{SECRET}"]
{extra}
"#
    )
}

fn subscriber(extra: &str) -> Subscriber {
    crate::app::check::from_toml(&text(extra), "t", &|_| None)
        .unwrap()
        .subscribers
        .remove(0)
}

/// What loading the config says about the subscriber: (key within it, message).
fn problems(extra: &str) -> Vec<(String, String)> {
    match crate::app::check::from_toml(&text(extra), "t", &|_| None) {
        Ok(_) => Vec::new(),
        Err(crate::config::ConfigError::Invalid { problems, .. }) => problems
            .into_iter()
            .map(|p| {
                (
                    p.path.trim_start_matches("subscribers[0].").to_string(),
                    p.message,
                )
            })
            .collect(),
        Err(e) => panic!("{e}"),
    }
}

fn format(extra: &str) -> (String, String, Vec<(String, String)>, String) {
    let f = Formatter::new(&subscriber(extra), 0, "shop").unwrap();
    let r = f.format("evt_1", BODY.as_bytes()).unwrap();
    (
        r.method.into_owned(),
        r.content_type.into_owned(),
        r.headers,
        String::from_utf8(r.body.into_owned()).unwrap(),
    )
}

#[test]
fn standard_sends_the_body_as_it_is() {
    let (method, ct, headers, body) = format("");
    assert_eq!((method.as_str(), ct.as_str()), ("POST", "application/json"));
    assert!(headers.is_empty());
    assert_eq!(body, BODY);
    let (method, ct, _, _) = format("method = \"PUT\"\ncontent_type = \"application/vnd.shop+json\"");
    assert_eq!(
        (method.as_str(), ct.as_str()),
        ("PUT", "application/vnd.shop+json")
    );
}

#[test]
fn cloudevents_wrap_the_data_with_the_attributes_the_spec_names() {
    let (method, ct, _, body) = format("format = \"cloudevents\"\ntype_prefix = \"com.example.pim\"");
    assert_eq!(
        (method.as_str(), ct.as_str()),
        ("POST", "application/cloudevents+json")
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["id"], "evt_1");
    assert_eq!(v["source"], "/walhook/shop/catalog.products");
    assert_eq!(v["type"], "com.example.pim.product.detail_changed");
    assert_eq!(v["subject"], "7");
    assert_eq!(v["time"], "2026-11-22T10:00:00.123456Z");
    assert_eq!(v["datacontenttype"], "application/json");
    let std: Value = serde_json::from_str(BODY).unwrap();
    assert_eq!(v["data"], std["data"]);
    // Every digit of the data survives.
    assert!(body.contains(r#""price":19.90,"big":9007199254740993"#), "{body}");

    let f = Formatter::new(&subscriber("format = \"cloudevents\""), 0, "my db").unwrap();
    let two_keys = BODY.replace(r#""key":{"id":7}"#, r#""key":{"id":7,"lang":"de"}"#);
    let r = f.format("evt_2", two_keys.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["type"], "product.detail_changed");
    assert_eq!(v["subject"], r#"{"id":7,"lang":"de"}"#);
    assert_eq!(v["source"], "/walhook/my%20db/catalog.products");
}

#[test]
fn a_chat_template_renders_the_chat_services_shape() {
    let (_, ct, _, body) = format(
        r#"format = "template"
template = '{"text": {{ (data.new.sku ~ ": " ~ data.changed|join(", ") ~ " changed")|tojson }}}'"#,
    );
    assert_eq!(ct, "application/json");
    assert_eq!(body, r#"{"text": "SKU-1: title, brand changed"}"#);
}

#[test]
fn method_content_type_and_headers_are_templates_too() {
    let (method, ct, headers, body) = format(
        r#"format = "template"
method = "{{ 'PURGE' if data.op == 'update' else 'POST' }}"
content_type = "application/x-www-form-urlencoded"
template = "paths={{ ('/p/' ~ data.new.sku)|urlencode }}&title={{ data.new.title|truncate(8) }}&id={{ id }}"
headers = { X-Purge-Tag = "product-{{ data.key.id }}", X-Static = "yes" }"#,
    );
    assert_eq!(method, "PURGE");
    assert_eq!(ct, "application/x-www-form-urlencoded");
    assert_eq!(
        headers,
        vec![("X-Purge-Tag".to_string(), "product-7".to_string())]
    );
    assert_eq!(body, "paths=/p/SKU-1&title=Chair...&id=evt_1");
}

#[test]
fn numbers_reach_templates_with_every_digit() {
    let (_, _, _, body) = format(
        r#"format = "template"
template = "{{ data.new.price }} {{ data.old.price }} {{ data.new.big }} {{ data.new|tojson }} {{ [data.new.price]|tojson }} {{ data.key|tojson(indent=1) }}""#,
    );
    assert!(body.starts_with("19.90 18.5 9007199254740993 {"), "{body}");
    // A map of the body comes out as stored: numbers with every digit.
    assert!(
        body.contains(r#""price":19.90,"big":9007199254740993}"#),
        "{body}"
    );
    // Other values through minijinja's tojson: a decimal it cannot print is a string.
    assert!(body.contains(r#" ["19.90"] "#), "{body}");
    assert!(body.ends_with("{\n \"id\": 7\n}"), "{body}");
}

#[test]
fn a_template_that_fails_on_one_event_is_an_error_not_a_panic() {
    let f = Formatter::new(
        &subscriber("format = \"template\"\ntemplate = \"{{ data.new.nope }}\""),
        3,
        "shop",
    )
    .unwrap();
    let err = f.format("evt_1", BODY.as_bytes()).unwrap_err();
    assert!(err.starts_with("subscribers[3].template failed:"), "{err}");
    let err = f.format("evt_1", b"not json").unwrap_err();
    assert!(err.contains("not a walhook event"), "{err}");
    let bad_method = Formatter::new(
        &subscriber("format = \"template\"\ntemplate = \"x\"\nmethod = \"{{ 'BAD METHOD' }}\""),
        0,
        "shop",
    )
    .unwrap();
    let err = bad_method.format("evt_1", BODY.as_bytes()).unwrap_err();
    assert!(
        err.contains("subscribers[0].method rendered \"BAD METHOD\""),
        "{err}"
    );
}

#[test]
fn bad_settings_are_named_with_their_keys() {
    let keys = |extra: &str| problems(extra).into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys("format = \"template\""), ["template"]);
    assert_eq!(keys("template = \"x\""), ["template"]);
    assert_eq!(keys("type_prefix = \"com.x\""), ["type_prefix"]);
    assert_eq!(
        keys("format = \"cloudevents\"\ntype_prefix = \"com x\""),
        ["type_prefix"]
    );
    assert_eq!(keys("method = \"HEAD\""), ["method"]);
    assert_eq!(
        keys("method = \"{{ x }}\""),
        ["method"],
        "templates only with format = template"
    );
    assert_eq!(keys("content_type = \"\""), ["content_type"]);
    assert_eq!(
        keys("headers = { Content-Type = \"text/plain\" }"),
        ["headers.Content-Type"]
    );
    let p = problems("format = \"template\"\ntemplate = \"{{ data.new.sku \"");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "template");
    assert!(p[0].1.contains("syntax error"), "{}", p[0].1);
    let p = problems("format = \"template\"\ntemplate = \"x\"\nheaders = { X-A = \"{% if %}\" }");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "headers.X-A");
    assert!(problems("format = \"template\"\ntemplate = \"{{ id }}\"\nmethod = \"{{ 'PUT' }}\"").is_empty());
}

#[test]
fn templates_walk_maps_and_lists_of_the_body() {
    let (_, _, _, body) = format(
        r#"format = "template"
template = "{% for k, v in data.key|items %}{{ k }}={{ v }}{% endfor %};{{ data.changed[1] }};{{ data.new|length }};{% if data.old %}old{% endif %};{{ data.changed|join('+') }};{{ data.source.lsn }};{{ data.new.title }};{{ data.missing is defined }};{{ type }}""#,
    );
    assert_eq!(
        body,
        r#"id=7;brand;6;old;title+brand;0/16B3748;Chair "Oslo";False;product.detail_changed"#
    );
}

#[test]
fn malformed_bodies_are_errors_or_undefined_never_panics() {
    let f = Formatter::new(
        &subscriber("format = \"template\"\ntemplate = \"{{ data.new.sku|default('?') }}{{ data.changed|default([])|join(',') }}\""),
        0,
        "shop",
    )
    .unwrap();
    let cases: [&[u8]; 9] = [
        b"",
        b"[1,2]",
        b"{",
        b"{\"data\":",
        b"{\"data\":{\"new\":{\"sku\":\"A\\",
        b"{\"data\":{\"new\":{\"sku\":\"A\"}}}",
        b"{\"data\":{\"new\":[1,2,}}}",
        b"{\"data\":{\"changed\":[\"a\",\"b\"],\"new\":{\"sku\":\"\\u00e9\"}}}",
        b"\xff\xfe{}",
    ];
    let got: Vec<Result<String, String>> = cases
        .iter()
        .map(|b| {
            f.format("evt", b)
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        })
        .collect();
    assert!(got[0].is_err() && got[1].is_err() && got[8].is_err(), "{got:?}");
    assert_eq!(got[5].as_deref(), Ok("A"));
    assert_eq!(got[7].as_deref(), Ok("éa,b"));
}

/// A json value nested thousands of levels deep (embedded verbatim by mapping) reaches
/// every format: templates see a map or list nested past 512 levels as a string of its
/// JSON text, and `tojson` of anything around it writes it as stored.
#[test]
fn deep_json_values_reach_every_format() {
    let n = 5_000;
    let deep = format!("{}1{}", r#"{"a":["#.repeat(n), "]}".repeat(n));
    let body = BODY.replace(
        r#""big":9007199254740993}"#,
        &format!(r#""big":9007199254740993,"doc":{deep}}}"#),
    );
    assert_ne!(body, BODY);
    let run = |extra: &str| {
        let f = Formatter::new(&subscriber(extra), 0, "shop").unwrap();
        let r = f.format("evt_1", body.as_bytes()).unwrap();
        String::from_utf8(r.body.into_owned()).unwrap()
    };
    assert_eq!(run(""), body);
    let ce = run("format = \"cloudevents\"");
    assert!(ce.contains(&format!(r#""doc":{deep}}}"#)), "{}", &ce[..200]);
    let new = body.split(r#""new":"#).nth(1).unwrap();
    let new = &new[..new.find(r#","old":"#).unwrap()];
    // the fast path and minijinja agree
    for template in [
        "{{ data.new|tojson }}",
        "{{ data.new|tojson }}{{ data.missing|default('') }}",
    ] {
        assert_eq!(
            run(&format!("format = \"template\"\ntemplate = \"{template}\"")),
            new
        );
    }
    // The body's map (0), data (1), new (2), doc (3), then each `.a[0]` two levels:
    // `at_limit` is a map at level 511, and its list `a` at level 512 is opaque.
    let at_limit = "data.new.doc".to_string() + &".a[0]".repeat(254);
    let m = n - 255;
    let opaque = format!("[{}1{}]", r#"{"a":["#.repeat(m), "]}".repeat(m));
    for template in [
        format!("{{{{ {at_limit}.a }}}}"),
        format!("{{{{ {at_limit}.a|tojson }}}}"),
        format!("{{{{ {at_limit}.a }}}}{{{{ data.missing|default('') }}}}"),
        format!("{{{{ {at_limit}.a|length }}}}"),
    ] {
        let got = run(&format!("format = \"template\"\ntemplate = \"{template}\""));
        let want = if template.contains("tojson") {
            serde_json::to_string(&opaque).unwrap()
        } else if template.contains("length") {
            opaque.len().to_string()
        } else {
            opaque.clone()
        };
        // (the values are too long to print whole)
        assert!(
            got == want,
            "{}: {}...",
            &template[template.len() - 30..],
            &got[..got.len().min(80)]
        );
    }
    // one level up is still a map
    assert_eq!(
        run(&format!(
            "format = \"template\"\ntemplate = \"{{{{ {at_limit}|length }}}}\""
        )),
        "1"
    );
}

#[test]
fn rendering_stops_at_max_body_bytes() {
    let err_of = |extra: &str| {
        let f = Formatter::new(&subscriber(extra), 2, "shop").unwrap();
        let started = std::time::Instant::now();
        let r = f.format("evt_1", BODY.as_bytes()).map(|r| r.body.len());
        (r, started.elapsed())
    };
    // minijinja: 10^10 copies of the body (terabytes) unless rendering stops at the limit.
    let endless = "format = \"template\"\ntemplate = \"{% for i in range(100000) %}{% for j in range(100000) %}{{ data|tojson }}{% endfor %}{% endfor %}\"";
    for (extra, limit) in [
        (endless.to_string(), DEFAULT_MAX_BODY_BYTES),
        (format!("{endless}\nmax_body_bytes = 1000"), 1000),
    ] {
        let (r, took) = err_of(&extra);
        let err = r.unwrap_err();
        assert_eq!(
            err,
            format!(
                "subscribers[2].template rendered more than max_body_bytes ({limit} bytes): rendering stopped there \
                 (raise subscribers[2].max_body_bytes, or make the template write less)"
            )
        );
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }
    // The fast path: text and `~` past the limit.
    let fast = "format = \"template\"\ntemplate = \"{{ data|tojson }},{{ data|tojson ~ data|tojson }}\"";
    assert!(Fast::compile("{{ data|tojson }},{{ data|tojson ~ data|tojson }}").is_some());
    let (r, _) = err_of(&format!("{fast}\nmax_body_bytes = {}", BODY.len()));
    assert!(r.unwrap_err().contains("max_body_bytes"));
    let data_len = {
        let f = Formatter::new(
            &subscriber("format = \"template\"\ntemplate = \"{{ data|tojson }}\""),
            0,
            "shop",
        )
        .unwrap();
        f.format("evt_1", BODY.as_bytes()).unwrap().body.len()
    };
    let exact = 3 * data_len + 1;
    assert_eq!(err_of(&format!("{fast}\nmax_body_bytes = {exact}")).0, Ok(exact));
    assert!(err_of(&format!("{fast}\nmax_body_bytes = {}", exact - 1))
        .0
        .is_err());
    // The same template through minijinja (a filter the fast path leaves to it) agrees.
    let slow =
        "format = \"template\"\ntemplate = \"{{ data|tojson }},{{ data|tojson ~ data|tojson|string }}\"";
    assert_eq!(err_of(&format!("{slow}\nmax_body_bytes = {exact}")).0, Ok(exact));
    assert!(err_of(&format!("{slow}\nmax_body_bytes = {}", exact - 1))
        .0
        .is_err());
    // Headers have their own limit.
    let (r, _) = err_of(
        "format = \"template\"\ntemplate = \"x\"\nheaders = { X-Big = \"{% for i in range(10000) %}abc{% endfor %}\" }",
    );
    let err = r.unwrap_err();
    assert!(
        err.starts_with("subscribers[2].headers.X-Big rendered more than the limit of a rendered method or header (8192 bytes)"),
        "{err}"
    );
}

#[test]
fn max_body_bytes_is_for_templates_and_bounded() {
    assert_eq!(
        problems("max_body_bytes = 100"),
        [(
            "max_body_bytes".to_string(),
            "only used with format = \"template\": set format = \"template\" or remove max_body_bytes"
                .to_string()
        )]
    );
    for n in [0, MAX_MAX_BODY_BYTES + 1] {
        let p = problems(&format!(
            "format = \"template\"\ntemplate = \"x\"\nmax_body_bytes = {n}"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].0 == "max_body_bytes" && p[0].1.contains("outside 1.."),
            "{p:?}"
        );
    }
    assert!(problems("format = \"template\"\ntemplate = \"x\"\nmax_body_bytes = 1").is_empty());
}

/// A batch's request as (id, content type, body), the events sent, and those refused.
type Shaped = (Option<(String, String, String)>, Vec<usize>, Vec<(usize, String)>);

/// The batch request of three events (the second's body not a walhook event), and why
/// any were refused.
fn batch(extra: &str) -> Shaped {
    let f = Formatter::new(&subscriber(extra), 0, "shop").unwrap();
    let other = BODY.replace("\"id\":7", "\"id\":8");
    let events: Vec<(&str, &[u8])> = vec![
        ("evt_1", BODY.as_bytes()),
        ("evt_2", b"[1]"),
        ("evt_3", other.as_bytes()),
    ];
    let b = f.format_batch(&events, &|ids| format!("batch_{}", ids.join("+")));
    let request = b.request.map(|(id, r)| {
        (
            id,
            r.content_type.into_owned(),
            String::from_utf8(r.body.into_owned()).unwrap(),
        )
    });
    (request, b.sent, b.refused)
}

#[test]
fn a_standard_batch_is_an_array_of_bodies_each_with_its_id_and_a_bad_one_is_left_out() {
    let (request, sent, refused) = batch("batch = { max_events = 10 }");
    let (id, ct, body) = request.unwrap();
    assert_eq!(
        id, "batch_evt_1+evt_3",
        "the id is made from the events it carries"
    );
    assert_eq!(ct, "application/json");
    assert_eq!(sent, [0, 2]);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, 1);
    // Every digit kept: the events' bodies as stored, with "id" first.
    assert!(
        body.starts_with(r#"[{"id":"evt_1","type":"product.detail_changed""#),
        "{body}"
    );
    assert!(body.contains(r#""price":19.90,"big":9007199254740993"#), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["id"], "evt_3");
    assert_eq!(items[1]["data"]["key"]["id"], 8);
}

#[test]
fn a_cloudevents_batch_has_its_own_content_type() {
    let (request, sent, _) = batch("format = \"cloudevents\"\nbatch = { max_events = 10 }");
    let (_, ct, body) = request.unwrap();
    assert_eq!(ct, "application/cloudevents-batch+json");
    assert_eq!(sent, [0, 2]);
    let v: Value = serde_json::from_str(&body).unwrap();
    for (e, id) in v.as_array().unwrap().iter().zip(["evt_1", "evt_3"]) {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], id);
        assert_eq!(e["source"], "/walhook/shop/catalog.products");
    }
    // An explicit content type is kept.
    let (request, _, _) =
        batch("format = \"cloudevents\"\ncontent_type = \"application/json\"\nbatch = { max_events = 10 }");
    assert_eq!(request.unwrap().1, "application/json");
}

#[test]
fn a_batch_template_renders_once_over_events_and_leaves_out_the_events_it_fails_on() {
    let (request, sent, refused) = batch(
        "format = \"template\"\nbatch = { max_events = 10 }\n\
         template = '{\"batch\": {{ id|tojson }}, \"skus\": [{% for e in events %}{{ (e.id ~ \":\" ~ e.data.new.sku)|tojson }}{{ \",\" if not loop.last }}{% endfor %}]}'",
    );
    let (id, _, body) = request.unwrap();
    assert_eq!(sent, [0, 2]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["batch"], id.as_str());
    assert_eq!(v["skus"], serde_json::json!(["evt_1:SKU-1", "evt_3:SKU-1"]));
}

#[test]
fn batch_settings_are_checked() {
    let p = problems("batch = { max_events = 0, max_wait = \"0s\", max_bytes = 10 }");
    let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["batch.max_events", "batch.max_wait", "batch.max_bytes"],
        "{p:?}"
    );
    let p = problems("max_in_flight = 1000\nbatch = { max_events = 1000 }");
    assert!(p[0].1.contains("above the limit of 100000"), "{p:?}");
    let p = problems("rate_limit_events = \"10/s\"");
    assert_eq!(p[0].0, "rate_limit_events", "{p:?}");
    let p = problems("batch = { max_bytes = \"2MiB\", max_wait = \"5ms\" }\nrate_limit_events = \"10/s\"");
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(
        subscriber("batch = { max_bytes = \"2MiB\" }")
            .batch
            .unwrap()
            .max_bytes
            .as_u64(),
        2 << 20
    );
    // A batch template must use `events`, and only it and `id`, in every template.
    let p = problems("format = \"template\"\ntemplate = '{{ data|tojson }}'\nbatch = {}");
    assert_eq!(p[0].0, "template", "{p:?}");
    assert!(p[0].1.contains("not `data`"), "{p:?}");
    let p = problems("format = \"template\"\ntemplate = '{{ id }}'\nbatch = {}");
    assert!(p[0].1.contains("from `events`"), "{p:?}");
    let p = problems(
        "format = \"template\"\ntemplate = '{% for e in range(3) %}{{ events[0].id }}{% endfor %}'\n\
         headers = { X-Type = \"{{ type }}\" }\nbatch = {}",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "headers.X-Type", "{p:?}");
}

#[test]
fn a_batch_whose_template_body_is_too_big_says_so_and_one_event_fails_alone() {
    let f = Formatter::new(
        &subscriber(
            "format = \"template\"\nmax_body_bytes = 600\nbatch = {}\n\
             template = '[{% for e in events %}{{ e.data|tojson }}{% endfor %}]'",
        ),
        0,
        "shop",
    )
    .unwrap();
    let events: Vec<(&str, &[u8])> = vec![("evt_1", BODY.as_bytes()), ("evt_2", BODY.as_bytes())];
    let b = f.format_batch(&events, &|ids| ids.join("+"));
    assert!(b.too_big && b.request.is_none() && b.sent.is_empty() && b.refused.is_empty());
    let b = f.format_batch(&events[..1], &|ids| ids.join("+"));
    assert!(!b.too_big && b.request.is_some(), "{:?}", b.refused);
}
