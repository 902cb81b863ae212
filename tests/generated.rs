//! PostgreSQL 18 refuses UPDATEs of a table with a stored generated column and
//! `REPLICA IDENTITY FULL` when it is in a publication that does not publish generated
//! columns. walhook must never cause that to the application: the publication it makes
//! publishes them (and events carry them), and `walhook check` flags one made by hand
//! that would break the application's writes, with the fix.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = "
    CREATE TABLE product (id int PRIMARY KEY, price numeric NOT NULL,
                          gross numeric GENERATED ALWAYS AS (price * 1.2) STORED);
    ALTER TABLE product REPLICA IDENTITY FULL;
    INSERT INTO product (id, price) VALUES (1, 10), (2, 20);
";

fn config(url: &str, rx: &str, source_extra: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n{source_extra}\n\n\
         [[events]]\ntable = \"product\"\nname = \"price.changed\"\non = [\"update\"]\nchanged = [\"price\"]\n\n{}",
        subscriber("shop", rx, "\"*\"", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_18_the_applications_updates_keep_working() {
    let pg = PgCluster::start_major(18, &[]).await;
    let url = pg.create_db("shop", SCHEMA).await;
    let db = pg.client("shop").await;

    // walhook's own publication: the application's updates work, and events carry the
    // generated column.
    let rx = Receiver::start().await;
    let walhook = Walhook::start(&config(&url, &rx.url(), ""));
    walhook.wait_ready().await;
    db.batch_execute("UPDATE product SET price = 11 WHERE id = 1")
        .await
        .expect("the application's update must not fail");
    let got = rx
        .wait_for(Duration::from_secs(30), "the price change", |r| !r.is_empty())
        .await;
    let body = got[0].json();
    assert_eq!(
        serde_json::to_string(&body["data"]["new"]["gross"]).unwrap(),
        "13.2",
        "{body}"
    );
    drop(walhook);

    // A publication made by hand without generated columns: PostgreSQL refuses the
    // application's updates, and `walhook check` says so with the fix.
    db.batch_execute("DROP PUBLICATION walhook; CREATE PUBLICATION walhook FOR TABLE product")
        .await
        .unwrap();
    let refused = db
        .batch_execute("UPDATE product SET price = 21 WHERE id = 2")
        .await
        .expect_err("PostgreSQL 18 refuses this update");
    assert!(format!("{refused:?}").contains("generated column"), "{refused:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(
        &path,
        config(&url, &rx.url(), "create = false\n") + "\n[admin]\nlisten = \"\"\n",
    )
    .unwrap();
    let (code, out, err) = walhook_output(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("problem publication walhook") && l.contains("generated"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("ALTER PUBLICATION \"walhook\" SET (publish_generated_columns = stored);"),
        "{line}"
    );
    db.batch_execute("ALTER PUBLICATION walhook SET (publish_generated_columns = stored)")
        .await
        .unwrap();
    db.batch_execute("UPDATE product SET price = 21 WHERE id = 2")
        .await
        .expect("after the fix the application's update works");
    let (code, out, err) = walhook_output(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}
