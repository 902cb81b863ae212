//! Attaching to a database the way applications set theirs up: `wal_level = replica`,
//! tables owned by the application's role, a table without a primary key, and a walhook
//! role with no privileges. One `walhook check` lists every problem with its fix; the
//! script `walhook check --sql` prints, run section by section as the roles it names,
//! plus the restart it asks for, makes the next check pass and `walhook run` deliver.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pg::connect;
use common::*;

/// An application's schema in the style of Medusa 2: text ids, numeric amounts, jsonb
/// metadata, soft deletes; `inventory_level` has no primary key (so no replica identity).
const APP_SQL: &str = "
    CREATE TABLE product (id text PRIMARY KEY, title text NOT NULL, metadata jsonb,
                          deleted_at timestamptz);
    CREATE TABLE price (id text PRIMARY KEY, product_id text NOT NULL REFERENCES product,
                        currency_code text NOT NULL, amount numeric NOT NULL);
    CREATE TABLE inventory_level (inventory_item_id text NOT NULL, location_id text NOT NULL,
                                  stocked_quantity int NOT NULL);
    INSERT INTO product VALUES ('prod_01', 'Oak desk', '{\"origin\": \"FR\"}', NULL);
    INSERT INTO price VALUES ('price_01', 'prod_01', 'eur', 499.00);
    INSERT INTO inventory_level VALUES ('iitem_01', 'sloc_01', 12);
";

/// A cluster at default settings (`wal_level = replica`) with database `shop` owned by
/// role `medusa`, its tables created by `medusa`, and (`with_walhook`) a role `walhook`
/// that may only log in. Returns walhook's URL.
async fn app_database(pg: &PgCluster, with_walhook: bool) -> String {
    let admin = pg.client("postgres").await;
    admin.batch_execute("CREATE ROLE medusa LOGIN").await.unwrap();
    if with_walhook {
        admin.batch_execute("CREATE ROLE walhook LOGIN").await.unwrap();
    }
    admin
        .batch_execute("CREATE DATABASE shop OWNER medusa")
        .await
        .unwrap();
    let app = connect(&pg.url("shop").replace("postgres@", "medusa@")).await;
    app.batch_execute(APP_SQL).await.unwrap();
    pg.url("shop").replace("postgres@", "walhook@")
}

fn config(url: &str, receiver: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n\n\
         [[events]]\ntable = \"price\"\nname = \"price.changed\"\non = [\"update\"]\nchanged = [\"amount\"]\n\n\
         [[events]]\ntable = \"inventory_level\"\nkey = [\"inventory_item_id\", \"location_id\"]\n\
         on = [\"update\", \"delete\"]\n\n{}\n[admin]\nlisten = \"\"\n",
        subscriber("shop", receiver, "\"*\"", "")
    )
}

/// The line of `report` that names `subject` and says `what`.
fn line<'a>(report: &'a str, subject: &str, what: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(subject) && l.contains(what))
        .unwrap_or_else(|| panic!("no line on {subject} saying {what:?}:\n{report}"))
}

/// Runs `sql` as `role` with psql reading it as a file (one statement at a time, as
/// `psql -f` does).
fn psql(pg: &PgCluster, role: &str, sql: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), sql).unwrap();
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(pg.port().to_string())
        .args(["-U", role, "-d", "shop", "-f"])
        .arg(file.path())
        .output()
        .expect("run psql (Debian: apt-get install -y postgresql-client)");
    assert!(
        out.status.success(),
        "the part for {role} failed: {}\n{sql}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs each section of a `--sql` script as the role it names.
fn run_script(pg: &PgCluster, script: &str) {
    let mut sections: Vec<(String, String)> = Vec::new();
    for l in script.lines() {
        if let Some(who) = l.strip_prefix("-- as ") {
            let role = if who == "a superuser" {
                "postgres".to_string()
            } else {
                // "role medusa, the owner of ..." / "walhook's role walhook"
                who.split_whitespace()
                    .skip_while(|w| *w != "role")
                    .nth(1)
                    .expect("a role")
                    .trim_end_matches(',')
                    .to_string()
            };
            sections.push((role, String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(l);
            body.push('\n');
        }
    }
    assert!(!sections.is_empty(), "no sections in:\n{script}");
    for (role, body) in sections {
        psql(pg, &role, &body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_every_problem_and_its_script_fixes_them() {
    let pg = PgCluster::start_with(&[("wal_level", "replica")]).await;
    let url = app_database(&pg, true).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, config(&url, &rx.url())).unwrap();
    let path = path.to_str().unwrap();

    // One check lists everything, each with its fix.
    let (code, out, err) = walhook_output(&["check", "--config", path]);
    assert_eq!(code, 3, "a missing prerequisite: {out}\n{err}");
    line(&out, "server", "wal_level is 'replica'");
    line(&out, "role walhook", "REPLICATION");
    for table in ["public.price", "public.inventory_level"] {
        let select = line(&out, &format!("table {table}"), "may not read it");
        assert!(select.contains("GRANT SELECT"), "{select}");
        assert!(select.contains("as role medusa"), "the owner runs it: {select}");
    }
    line(&out, "table public.price", "only logs its key");
    line(&out, "table public.inventory_level", "has no replica identity");
    let publication = line(&out, "publication walhook", "may not create it");
    assert!(
        publication.contains("as role medusa") && publication.contains("CREATE PUBLICATION"),
        "the owner of the tables creates it: {publication}"
    );
    line(&out, "state database", "may not create it");
    assert!(err.contains("walhook check --sql"), "{err}");

    // `run` refuses with the same report, and sets nothing up.
    let (code, _, err) = walhook_output(&["run", "--config", path]);
    assert_eq!(code, 3, "{err}");
    line(&err, "server", "wal_level is 'replica'");
    line(&err, "publication walhook", "may not create it");

    // The script, run as the roles it names, then the restart it asks for.
    let (code, script, _) = walhook_output(&["check", "--sql", "--config", path]);
    assert_eq!(code, 3);
    assert!(script.contains("-- as a superuser"), "{script}");
    assert!(
        script.contains("-- as role medusa, the owner of public.inventory_level, public.price"),
        "{script}"
    );
    assert!(script.contains("restart PostgreSQL"), "{script}");
    run_script(&pg, &script);
    // Idempotent: a second run changes nothing and fails nowhere.
    run_script(&pg, &script);
    pg.restart().await;

    let (code, out, err) = walhook_output(&["check", "--config", path]);
    assert_eq!(code, 0, "after the fixes:\n{out}\n{err}");
    assert!(!out.lines().any(|l| l.starts_with("problem")), "{out}");
    line(&out, "server", "wal_level = logical");
    line(&out, "publication walhook", "holds every captured table");

    let walhook = Walhook::start(&config(&url, &rx.url()).replace("[admin]\nlisten = \"\"\n", ""));
    walhook.wait_ready().await;
    let app = connect(&pg.url("shop").replace("postgres@", "medusa@")).await;
    app.batch_execute(
        "UPDATE price SET amount = 459.00 WHERE id = 'price_01';
         UPDATE inventory_level SET stocked_quantity = 11 WHERE inventory_item_id = 'iitem_01';",
    )
    .await
    .unwrap();
    let got = rx
        .wait_for(Duration::from_secs(30), "two events", |r| r.len() >= 2)
        .await;
    let bodies: Vec<serde_json::Value> = got.iter().map(Received::json).collect();
    let price = bodies
        .iter()
        .find(|b| b["type"] == "price.changed")
        .unwrap_or_else(|| panic!("{bodies:?}"));
    let amount = |row: &str| serde_json::to_string(&price["data"][row]["amount"]).unwrap();
    assert_eq!((amount("new"), amount("old")), ("459.00".into(), "499.00".into()));
    assert!(
        bodies.iter().any(|b| b["type"] == "inventory_level.updated"),
        "{bodies:?}"
    );
}

/// The README's "Set-up on your database", followed literally: its SQL blocks run as the
/// roles they name (`-- as a superuser`, `-- as medusa`) on the application's database,
/// the restart it asks for, then `walhook check` passes and `walhook run` delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_set_up_gives_a_running_walhook() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Set-up on your database"))
        .expect("README has a section \"Set-up on your database\"");
    let blocks: Vec<&str> = section
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 2, "a superuser's block and the owner's:\n{section}");

    let pg = PgCluster::start_with(&[("wal_level", "replica")]).await;
    app_database(&pg, false).await;
    for block in blocks {
        let role = match block.lines().next() {
            Some("-- as a superuser") => "postgres",
            Some("-- as medusa") => "medusa",
            other => panic!("a README SQL block must say who runs it first, not {other:?}"),
        };
        psql(&pg, role, block);
    }
    assert!(section.contains("Then restart PostgreSQL"), "{section}");
    pg.restart().await;

    let url = format!("postgres://walhook:change-me@127.0.0.1:{}/shop", pg.port());
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, config(&url, &rx.url())).unwrap();
    let (code, out, err) = walhook_output(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "after the README's steps:\n{out}\n{err}");
    assert!(!out.lines().any(|l| l.starts_with("problem")), "{out}");

    let walhook = Walhook::start(&config(&url, &rx.url()).replace("[admin]\nlisten = \"\"\n", ""));
    walhook.wait_ready().await;
    let app = connect(&pg.url("shop").replace("postgres@", "medusa@")).await;
    app.batch_execute("UPDATE price SET amount = 479.00 WHERE id = 'price_01'")
        .await
        .unwrap();
    let got = rx
        .wait_for(Duration::from_secs(30), "the price change", |r| !r.is_empty())
        .await;
    assert_eq!(got[0].json()["type"], "price.changed");
}

/// A DBA made walhook's schema for its role, which may create nothing else in the
/// database: `walhook check` passes and `walhook run` starts (it creates the schema only
/// when it is missing, which would need CREATE on the database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_made_for_walhook_is_all_it_needs() {
    let pg = PgCluster::start().await;
    let url = app_database(&pg, true).await;
    psql(
        &pg,
        "postgres",
        "ALTER ROLE walhook WITH REPLICATION;\nCREATE SCHEMA walhook AUTHORIZATION walhook;\n",
    );
    psql(
        &pg,
        "medusa",
        "ALTER TABLE price REPLICA IDENTITY FULL;\nALTER TABLE inventory_level REPLICA IDENTITY FULL;\n\
         CREATE PUBLICATION walhook FOR TABLE price, inventory_level;\n",
    );
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, config(&url, &rx.url())).unwrap();
    let (code, out, err) = walhook_output(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    let walhook = Walhook::start(&config(&url, &rx.url()).replace("[admin]\nlisten = \"\"\n", ""));
    walhook.wait_ready().await;
    let app = connect(&pg.url("shop").replace("postgres@", "medusa@")).await;
    app.batch_execute("UPDATE price SET amount = 489.00 WHERE id = 'price_01'")
        .await
        .unwrap();
    rx.wait_for(Duration::from_secs(30), "the price change", |r| !r.is_empty())
        .await;
}

/// Tables an application made without walhook in mind: one without a primary key that a
/// rule only reads inserts of, one without a key that a rule gives no key, one in a
/// schema walhook's role may not use, and a state schema another role made. Nothing
/// walhook sets up may make the application's writes fail; `check` names each problem
/// (the same ones `run` refuses) and its script fixes them; a script that cannot fix what
/// is wrong says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_an_application_made_are_never_broken_and_check_names_every_fix() {
    let pg = PgCluster::start().await;
    let url = app_database(&pg, true).await;
    psql(
        &pg,
        "medusa",
        "CREATE TABLE audit_log (entity text, action text);\n\
         CREATE SCHEMA saleor;\n\
         CREATE TABLE saleor.warehouse_stock (id uuid PRIMARY KEY, quantity int NOT NULL);\n\
         INSERT INTO saleor.warehouse_stock VALUES ('6a1f0c5e-8d3b-4c1a-9f7e-2b5d4e3c1a00', 3);\n",
    );
    psql(&pg, "postgres", "CREATE SCHEMA walhook;\n");
    let rx = Receiver::start().await;
    // Inserts of inventory_level only (which has no primary key): PostgreSQL publishes
    // them without a replica identity, but a publication that also publishes updates
    // and deletes makes the application's UPDATEs and DELETEs of it fail.
    let config = |url: &str, audit_key: &str| {
        format!(
            "[source]\nurl = \"{url}\"\n\n\
             [[events]]\ntable = \"inventory_level\"\nkey = [\"inventory_item_id\", \"location_id\"]\non = [\"insert\"]\n\n\
             [[events]]\ntable = \"audit_log\"\non = [\"insert\"]\n{audit_key}\n\
             [[events]]\ntable = \"saleor.warehouse_stock\"\nname = \"stock.changed\"\non = [\"update\"]\n\n{}\n",
            subscriber("shop", &rx.url(), "\"*\"", "")
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    let app_writes = || async {
        let app = connect(&pg.url("shop").replace("postgres@", "medusa@")).await;
        app.batch_execute(
            "UPDATE inventory_level SET stocked_quantity = stocked_quantity + 1;
             UPDATE audit_log SET action = 'seen'; DELETE FROM audit_log WHERE false;",
        )
        .await
    };

    // Run by a superuser, which may create the publication: it refuses, creates nothing,
    // and the application's writes go on.
    std::fs::write(&path, config(&pg.url("shop"), "key = [\"entity\"]")).unwrap();
    let (code, _, err) = walhook_output(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    let refused = line(
        &err,
        "publication walhook",
        "public.inventory_level has no replica identity",
    );
    assert!(
        refused.contains("UPDATEs and DELETEs of it would fail") && refused.contains("REPLICA IDENTITY FULL"),
        "{refused}"
    );
    let admin = pg.client("shop").await;
    let publications: i64 = admin
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0, "run set nothing up");
    app_writes().await.expect("the application's writes");

    // As walhook's own role: every problem, each with its fix.
    std::fs::write(&path, config(&url, "")).unwrap();
    let path = path.to_str().unwrap();
    let (code, out, err) = walhook_output(&["check", "--config", path]);
    assert_eq!(
        code, 2,
        "a rule without a key on a table without one is a config mistake:\n{out}\n{err}"
    );
    line(&out, "events[1].key", "public.audit_log has no primary key");
    line(
        &out,
        "publication walhook",
        "public.audit_log has no replica identity",
    );
    let schema = line(&out, "table saleor.warehouse_stock", "no USAGE on schema");
    assert!(
        schema.contains("GRANT USAGE ON SCHEMA \"saleor\" TO \"walhook\";"),
        "{schema}"
    );
    let state = line(&out, "state database", "belongs to role postgres");
    assert!(
        state.contains("ALTER SCHEMA \"walhook\" OWNER TO \"walhook\";"),
        "{state}"
    );

    // The script gives the tables an identity before the publication holds them.
    let (_, script, _) = walhook_output(&["check", "--sql", "--config", path]);
    let at = |s: &str| script.find(s).unwrap_or_else(|| panic!("no {s:?} in:\n{script}"));
    assert!(
        at("ALTER TABLE \"public\".\"inventory_level\" REPLICA IDENTITY FULL;") < at("CREATE PUBLICATION")
    );
    assert!(at("ALTER TABLE \"public\".\"audit_log\" REPLICA IDENTITY FULL;") < at("CREATE PUBLICATION"));
    assert!(
        script.contains("not fixed by this script"),
        "the key is the config's: {script}"
    );
    line(&script, "--   problem", "events[1].key");
    run_script(&pg, &script);
    app_writes()
        .await
        .expect("the application's writes, after the script");

    // With the key given, all is well; the publication holds the schema's table, which
    // check reads without USAGE trouble, and run delivers.
    std::fs::write(path, config(&url, "key = [\"entity\"]")).unwrap();
    let (code, out, err) = walhook_output(&["check", "--config", path]);
    assert_eq!(code, 0, "after the script:\n{out}\n{err}");
    let walhook = Walhook::start(&config(&url, "key = [\"entity\"]"));
    walhook.wait_ready().await;
    let app = connect(&pg.url("shop").replace("postgres@", "medusa@")).await;
    app.batch_execute("UPDATE saleor.warehouse_stock SET quantity = 2")
        .await
        .unwrap();
    let got = rx
        .wait_for(Duration::from_secs(30), "the stock change", |r| !r.is_empty())
        .await;
    assert_eq!(got[0].json()["type"], "stock.changed");
    app_writes()
        .await
        .expect("the application's writes, with walhook running");

    // A role the server does not know: the script says it fixes nothing, not that all is well.
    let stranger = config(&url.replace("walhook@", "nobody@"), "key = [\"entity\"]");
    std::fs::write(path, stranger).unwrap();
    let (code, script, _) = walhook_output(&["check", "--sql", "--config", path]);
    assert_eq!(code, 3, "{script}");
    assert!(!script.contains("nothing to fix"), "{script}");
    line(&script, "--   problem", "\"nobody\" does not exist");
}

/// A publication made by hand that publishes inserts only, holding a table without a key:
/// the rules need updates and deletes, so the script publishes them in one statement (one
/// per operation undid each other), and gives that table an identity first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_made_by_hand_is_fixed_in_one_statement_after_the_identity() {
    let pg = PgCluster::start().await;
    let url = app_database(&pg, true).await;
    psql(
        &pg,
        "postgres",
        "ALTER ROLE walhook WITH REPLICATION;\nGRANT CREATE ON DATABASE shop TO walhook;\n",
    );
    psql(
        &pg,
        "medusa",
        "CREATE TABLE audit_log (entity text, action text);\n\
         INSERT INTO audit_log VALUES ('price_01', 'created');\n\
         CREATE PUBLICATION walhook FOR TABLE audit_log, price WITH (publish = 'insert');\n",
    );
    let rx = Receiver::start().await;
    let config = format!(
        "[source]\nurl = \"{url}\"\n\n\
         [[events]]\ntable = \"price\"\non = [\"update\", \"delete\"]\n\n\
         [[events]]\ntable = \"audit_log\"\nkey = [\"entity\"]\non = [\"insert\"]\n\n{}\n",
        subscriber("shop", &rx.url(), "\"*\"", "")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, &config).unwrap();
    let path = path.to_str().unwrap();

    let (code, out, err) = walhook_output(&["check", "--config", path]);
    assert_eq!(code, 3, "{out}\n{err}");
    for op in ["updates", "deletes"] {
        let missing = line(&out, "publication walhook", &format!("does not publish {op}"));
        assert!(missing.contains("the owner of publication walhook"), "{missing}");
    }
    line(
        &out,
        "public.audit_log has no replica identity",
        "would fail once it publishes updates or deletes",
    );
    let (_, script, _) = walhook_output(&["check", "--sql", "--config", path]);
    let set = "ALTER PUBLICATION \"walhook\" SET (publish = 'insert, update, delete');";
    assert_eq!(script.matches("SET (publish =").count(), 1, "{script}");
    let at = |s: &str| script.find(s).unwrap_or_else(|| panic!("no {s:?} in:\n{script}"));
    assert!(at("ALTER TABLE \"public\".\"audit_log\" REPLICA IDENTITY FULL;") < at(set));
    run_script(&pg, &script);

    let app = connect(&pg.url("shop").replace("postgres@", "medusa@")).await;
    app.batch_execute("UPDATE audit_log SET action = 'seen'; DELETE FROM audit_log")
        .await
        .expect("the application's writes, after the script");
    let (code, out, err) = walhook_output(&["check", "--config", path]);
    assert_eq!(code, 0, "after the script:\n{out}\n{err}");
}
