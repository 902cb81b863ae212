//! The console in a real browser (headless Chromium through chromedriver): a wrong token
//! is refused, the right one logs in; every subscriber shows with its mode while one
//! fails; a subscriber is paused from its button; a dead letter is opened, replayed and
//! delivered; backfills and the config (secrets masked) show. A screenshot of each page
//! goes to `target/tmp/console/`. Also: changes made with the session need its CSRF
//! header, and without `admin.token` the console only says how to turn it on.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

const SCHEMA: &str =
    "CREATE TABLE products (id bigint PRIMARY KEY, sku text NOT NULL, price numeric NOT NULL);";
const TOKEN: &str = "console-test-token-5f2c9a7e31d84b06";

/// chromedriver on a free loopback port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let install = "the console test drives headless Chromium: install Debian's packages, \
                       apt-get install chromium chromium-driver (scripts/test.sh does it)";
        tool("chromium", install);
        let chromedriver = tool("chromedriver", install);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        Driver { child, port }
    }

    async fn browser(&self) -> Client {
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Root in CI: Chromium's sandbox needs an unprivileged user.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1440,1000"]
            }
        }))
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{}", self.port))
                .await
            {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot start a browser session through chromedriver: {e}"),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("screenshot");
    let path = shots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Waits for `css` and returns its text.
async fn text_of(b: &Client, css: &str) -> String {
    let el = b
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
    el.text().await.unwrap()
}

/// Waits until the text of `css` satisfies `ok`; returns it.
async fn wait_text(b: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(el) = b.find(Locator::Css(css)).await {
            if let Ok(t) = el.text().await {
                if ok(&t) {
                    return t;
                }
            }
        }
        if Instant::now() > deadline {
            let page = b.source().await.unwrap_or_default();
            panic!("timed out waiting for {what} ({css}); the page:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn log_in(b: &Client, admin: &str, token: &str) {
    b.goto(&format!("http://{admin}/login")).await.unwrap();
    let field = b
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    field.send_keys(token).await.unwrap();
    b.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_and_steers_walhook_in_a_browser() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let shop = Receiver::start().await;
    let market = Receiver::start().await;
    let chat = Receiver::start().await;
    // First the market refuses events for good (dead letters at once), then it fails.
    market.set_status(422);
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"console\"\n[[events]]\ntable = \"products\"\n{}{}{}",
        subscriber("shop", &shop.url(), "\"*\"", ""),
        subscriber(
            "market",
            &market.url(),
            "\"*\"",
            "max_attempts = 10\nretry_initial = \"100ms\"\nfinal_statuses = [422]\nspill_after = \"300ms\"\n\
             headers = { Authorization = \"Bearer market-api-key\" }"
        ),
        subscriber("chat", &chat.url(), "\"*\"", ""),
    );
    let w = Walhook::start_with_admin(&config, &format!("token = \"{TOKEN}\""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute(
        "INSERT INTO products SELECT g, 'SKU-' || g, 9.99 FROM generate_series(1, 20) g;
         UPDATE products SET price = 12345678901234567.89 WHERE id <= 5;",
    )
    .await
    .unwrap();
    shop.wait_for(Duration::from_secs(30), "shop's 25 events", |g| g.len() >= 25)
        .await;
    eventually(Duration::from_secs(30), "market's 25 dead letters", || async {
        let (_, v) = w
            .api(
                "GET",
                "/deliveries?subscriber=market&count=true",
                Some(TOKEN),
                None,
            )
            .await;
        v["total"].as_i64().is_some_and(|n| n >= 25)
    })
    .await;

    // Prices keep changing while the market fails: its lane keeps failing attempts.
    market.set_status(503);
    let writer = {
        let db = pg.client("shop").await;
        tokio::spawn(async move {
            for round in 0.. {
                let sql = format!(
                    "UPDATE products SET price = price + 1 WHERE id = {}",
                    round % 20 + 1
                );
                if db.batch_execute(&sql).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let driver = Driver::start();
    let b = driver.browser().await;
    let admin = w.admin.clone();

    // Not logged in: the console sends to /login, and a wrong token is refused.
    b.goto(&format!("http://{admin}/")).await.unwrap();
    assert!(b.current_url().await.unwrap().path().ends_with("/login"));
    screenshot(&b, "0-login").await;
    log_in(&b, &admin, "not-the-token").await;
    let refused = text_of(&b, ".error").await;
    assert!(refused.contains("not the admin token"), "{refused}");
    b.goto(&format!("http://{admin}/#/subscribers")).await.unwrap();
    assert!(
        b.current_url().await.unwrap().path().ends_with("/login"),
        "a refused login must not open the console"
    );

    // The right token opens the overview.
    log_in(&b, &admin, TOKEN).await;
    wait_text(&b, "#role", "the role", |t| t == "leader").await;
    text_of(&b, "#stat-role").await;
    // Two samples make the first point of the chart.
    wait_text(&b, ".legend", "the chart's first points", |t| {
        t.contains("one point per")
    })
    .await;
    b.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("svg.chart polyline.delivered"))
        .await
        .expect("the throughput chart draws");
    screenshot(&b, "1-overview").await;

    // Every subscriber, with its mode; the failing one with its last error.
    b.goto(&format!("http://{admin}/#/subscribers")).await.unwrap();
    for name in ["shop", "market", "chat"] {
        let mode = text_of(&b, &format!("tr[data-subscriber='{name}'] .mode")).await;
        assert!(
            ["hot", "spilling", "down", "paused", "disabled"].contains(&mode.as_str()),
            "{name}: {mode}"
        );
    }
    assert_eq!(text_of(&b, "tr[data-subscriber='shop'] .mode").await, "hot");
    wait_text(
        &b,
        "tr[data-subscriber='market'] .mode",
        "the market spilling or down",
        |t| t == "spilling" || t == "down",
    )
    .await;
    let failing = wait_text(&b, "tr[data-subscriber='market']", "market's last error", |t| {
        t.contains("HTTP 503")
    })
    .await;
    assert!(failing.contains("failing since"), "{failing}");
    screenshot(&b, "2-subscribers").await;

    // Pause chat from its button: the page shows it paused, and so does the API.
    b.find(Locator::Css(
        "tr[data-subscriber='chat'] button[data-action='pause']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_text(&b, "tr[data-subscriber='chat'] .mode", "chat paused", |t| {
        t == "paused"
    })
    .await;
    let (_, v) = w.api("GET", "/subscribers", Some(TOKEN), None).await;
    let chat_row = v["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "chat")
        .unwrap()
        .clone();
    assert_eq!(chat_row["status"], "paused", "{chat_row}");
    screenshot(&b, "3-subscriber-paused").await;

    // The market recovers; one of its dead letters is opened and replayed.
    writer.abort();
    market.set_status(200);
    b.goto(&format!(
        "http://{admin}/#/deliveries?status=dead&subscriber=market"
    ))
    .await
    .unwrap();
    let row = b
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#deliveries tbody tr[data-id]"))
        .await
        .unwrap();
    let id = row.attr("data-id").await.unwrap().expect("a delivery id");
    let count = text_of(&b, "#deliveries-count").await;
    assert!(count.contains("dead"), "{count}");
    row.click().await.unwrap();
    let body = wait_text(&b, "#delivery-body", "the dead letter's body", |t| {
        t.contains("products")
    })
    .await;
    // Shown with every digit (a browser's JSON numbers would round this price).
    let exact = if body.contains("\"op\": \"update\"") {
        "12345678901234567.89"
    } else {
        "9.99"
    };
    assert!(body.contains(exact), "{body}");
    let detail = text_of(&b, "#delivery-detail").await;
    assert!(
        detail.contains(&id),
        "the delivery shown is the one picked: {detail}"
    );
    let attempts = text_of(&b, "#delivery-detail table").await;
    assert!(attempts.contains("422"), "its attempts: {attempts}");
    screenshot(&b, "4-dead-letter").await;
    b.find(Locator::Id("replay-one"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    market
        .wait_for(Duration::from_secs(30), "the replayed delivery", |got| {
            got.iter().any(|r| r.id == id && r.status == 200)
        })
        .await;
    wait_text(&b, "#deliveries", "the replayed one gone from the dead", |t| {
        !t.contains(&id)
    })
    .await;

    // A backfill and its progress.
    let (status, v) = w
        .api(
            "POST",
            "/backfills",
            Some(TOKEN),
            Some(serde_json::json!({"subscriber": "shop"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    b.goto(&format!("http://{admin}/#/backfills")).await.unwrap();
    wait_text(
        &b,
        "#backfills tbody tr[data-backfill]",
        "the backfill done",
        |t| t.contains("done"),
    )
    .await;
    screenshot(&b, "5-backfills").await;

    // The config as loaded, its secrets masked.
    b.goto(&format!("http://{admin}/#/config")).await.unwrap();
    let shown = text_of(&b, "#config-json").await;
    assert!(shown.contains("\"market\""), "{shown}");
    for secret in [TOKEN, "market-api-key", SECRET] {
        assert!(!shown.contains(secret), "{secret} shows in the config page");
    }
    screenshot(&b, "6-config").await;
    b.goto(&format!("http://{admin}/#/overview")).await.unwrap();
    wait_text(&b, "#role", "the role", |t| t == "leader").await;
    screenshot(&b, "1-overview").await;
    // A reload that fails shows on the overview, with why.
    w.reload("[source\nthis is not TOML");
    let reload = wait_text(&b, "#page", "the refused reload", |t| t.contains("refused")).await;
    assert!(reload.contains("the running config stays"), "{reload}");
    b.close().await.unwrap();
}

/// The session cookie of a login with `token`, as the server sets it.
async fn session_cookie(admin: &str, token: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .post(format!("http://{admin}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    let set = r.headers().get("set-cookie")?.to_str().ok()?.to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    Some(set.split(';').next().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_changes_need_the_csrf_header_and_no_token_means_no_console() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"console\"\n[[events]]\ntable = \"products\"\n{}",
        subscriber("shop", &rx.url(), "\"*\"", ""),
    );
    let w = Walhook::start_with_admin(&config, &format!("token = \"{TOKEN}\""));
    w.wait_ready().await;
    assert_eq!(
        session_cookie(&w.admin, "wrong").await,
        None,
        "a wrong token sets no cookie"
    );
    let cookie = session_cookie(&w.admin, TOKEN).await.expect("a session");
    let client = reqwest::Client::new();
    let base = format!("http://{}", w.admin);
    // Reads take the cookie alone.
    let r = client
        .get(format!("{base}/subscribers"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A change with the cookie but without the CSRF header (what another site could
    // make a browser send) is refused; with the header it is done.
    let pause = format!("{base}/subscribers/shop/pause");
    let r = client
        .post(&pause)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("x-walhook-csrf"));
    let session: serde_json::Value = serde_json::from_str(
        &client
            .get(format!("{base}/session"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let csrf = session["csrf"].as_str().expect("a CSRF token").to_string();
    let r = client
        .post(&pause)
        .header("cookie", &cookie)
        .header("x-walhook-csrf", "0".repeat(csrf.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a wrong CSRF token");
    let r = client
        .post(&pause)
        .header("cookie", &cookie)
        .header("x-walhook-csrf", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A forged cookie is no session.
    let last = if cookie.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &cookie[..cookie.len() - 1]);
    let r = client
        .get(format!("{base}/subscribers"))
        .header("cookie", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    drop(w);

    // Without a token: the console says how to turn it on, and nothing else.
    let w = Walhook::start(&config);
    w.wait_ready().await;
    let r = reqwest::get(format!("http://{}/", w.admin)).await.unwrap();
    assert_eq!(r.status(), 404);
    let page = r.text().await.unwrap();
    assert!(page.contains("[admin]") && page.contains("token ="), "{page}");
    let r = reqwest::get(format!("http://{}/overview", w.admin))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
