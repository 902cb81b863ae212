//! Test harness: a real PostgreSQL cluster, a real HTTP receiver, and the real walhook
//! binary run as a child process (so tests can SIGKILL it).

#![allow(dead_code)]

pub mod pg;
pub mod procnet;
pub mod proxy;
pub mod receiver;
pub mod scripted;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use pg::PgCluster;
#[allow(unused_imports)]
pub use receiver::{Received, Receiver};

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const PIM_SQL: &str = include_str!("../../sql/examples/pim.sql");

/// The walhook binary running with a config file.
pub struct Walhook {
    child: Option<Child>,
    dir: PathBuf,
    /// Where the current process's part of the log starts.
    log_start: usize,
    pub admin: String,
    env: Vec<(String, String)>,
}

impl Walhook {
    /// Starts `walhook run` with this config text (an `[admin]` section is added).
    pub fn start(config: &str) -> Walhook {
        Walhook::start_with_admin(config, "")
    }

    /// The config file walhook runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("walhook.toml")
    }

    /// As `start`, with these lines added to the `[admin]` section (e.g. a token).
    pub fn start_with_admin(config: &str, admin_extra: &str) -> Walhook {
        Walhook::launch(config, admin_extra, &[])
    }

    /// As `start_with_admin`, with these environment variables set (e.g. HOSTNAME, so
    /// that two instances on this host look like two hosts).
    pub fn start_with_env(config: &str, admin_extra: &str, env: &[(&str, &str)]) -> Walhook {
        Walhook::launch(config, admin_extra, env)
    }

    fn launch(config: &str, admin_extra: &str, env: &[(&str, &str)]) -> Walhook {
        let dir = tempfile::Builder::new()
            .prefix("walhook-run-")
            .tempdir()
            .unwrap()
            .keep();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let admin = format!("127.0.0.1:{port}");
        let text = format!("{config}\n[admin]\nlisten = \"{admin}\"\n{admin_extra}\n");
        std::fs::write(dir.join("walhook.toml"), text).unwrap();
        let mut w = Walhook {
            child: None,
            dir,
            log_start: 0,
            admin,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        self.log_start = self.log().len();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("walhook.log"))
            .unwrap();
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(self.dir.join("walhook.toml"))
            .env("RUST_LOG", "info,walhook=debug")
            // Receivers are on loopback: a proxy of the machine's environment must not
            // carry their requests (a test that wants one sets it).
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start walhook");
        self.child = Some(child);
    }

    /// Replaces the config file (the `[admin]` section stays) and sends SIGHUP.
    pub fn reload(&self, config: &str) {
        let text = format!("{config}\n[admin]\nlisten = \"{}\"\n", self.admin);
        std::fs::write(self.dir.join("walhook.toml"), text).unwrap();
        kill(self.pid(), Signal::SIGHUP).unwrap();
    }

    /// Waits until the log holds `needle` at least `n` times; returns the log.
    pub async fn wait_log(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            if Instant::now() > deadline {
                panic!("{needle:?} not logged {n} times; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts it again after a kill or stop, with the same config.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the process, e.g. to hold its replication
    /// connection while the server moves on.
    pub fn pause(&self, paused: bool) {
        kill(self.pid(), if paused { Signal::SIGSTOP } else { Signal::SIGCONT }).unwrap();
    }

    /// The exit code if the process has exited on its own (it is reaped then).
    pub fn exited(&mut self) -> Option<i32> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// Waits up to `timeout` for the process to exit on its own: its exit code, or None
    /// while it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exited() {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait for the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("walhook.log")).unwrap_or_default()
    }

    /// The log of the current (or last) process only, since its start.
    pub fn run_log(&self) -> String {
        self.log().get(self.log_start..).unwrap_or_default().to_string()
    }

    /// GETs an admin path and returns the body.
    pub async fn admin_get(&self, path: &str) -> Option<String> {
        let resp = reqwest::get(format!("http://{}{path}", self.admin)).await.ok()?;
        resp.text().await.ok()
    }

    /// Calls the admin API, with a bearer token and a JSON body when given: the status
    /// and the JSON answer (null when it is not JSON).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::new();
        let url = format!("http://{}{path}", self.admin);
        let mut req = if method == "POST" {
            client.post(url)
        } else {
            client.get(url)
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{}/readyz", self.admin)).await {
                if r.status().is_success() {
                    return;
                }
            }
            // An exit message of an earlier process (before a restart) does not count.
            let log = self.run_log();
            if Instant::now() > deadline || log.lines().any(|l| l.starts_with("walhook:")) {
                panic!("walhook did not become ready; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A metric value (first sample whose line starts with `prefix`).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self.admin_get("/metrics").await?;
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Walhook {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            eprintln!("---- walhook log ----\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The walhook binary under test: this build's, or the one `TEST_WALHOOK_BIN` names (to
/// show that a test fails on an older build, e.g. one made from the commit before a fix).
pub fn binary() -> std::path::PathBuf {
    match std::env::var_os("TEST_WALHOOK_BIN") {
        Some(path) => {
            eprintln!("testing the walhook binary at {path:?} (TEST_WALHOOK_BIN)");
            path.into()
        }
        None => env!("CARGO_BIN_EXE_walhook").into(),
    }
}

/// Runs `walhook` with arguments to completion: (exit code, stderr).
pub fn walhook_cmd(args: &[&str]) -> (i32, String) {
    let (code, _, stderr) = walhook_output(args);
    (code, stderr)
}

/// Runs `walhook` with arguments to completion: (exit code, stdout, stderr).
pub fn walhook_output(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run walhook");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `walhook run` with this config (admin server off) to completion: (exit code,
/// stderr). `walhook check` runs on it first and must give the same verdict: it refuses
/// nothing `run` accepts and accepts nothing `run` refuses.
pub fn run_config(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, format!("{config}\n[admin]\nlisten = \"\"\n")).unwrap();
    let path = path.to_str().unwrap();
    let (checked, out, check_err) = walhook_output(&["check", "--config", path]);
    let (code, err) = walhook_cmd(&["run", "--config", path]);
    assert_eq!(
        checked, code,
        "walhook check and walhook run disagree on this config:\n{config}\ncheck said:\n{out}{check_err}\nrun said:\n{err}"
    );
    (code, err)
}

/// A subscriber section for a receiver on loopback.
pub fn subscriber(name: &str, url: &str, events: &str, extra: &str) -> String {
    format!(
        "[[subscribers]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = [{events}]\nsecrets = [\"{SECRET}\"]\n\
         allow_private_targets = true\n{extra}\n"
    )
}

/// The slot's confirmed_flush_lsn as a number.
pub async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> u64 {
    let row = client
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

/// Waits until `cond` holds, polling every 50 ms, or panics after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For a table keyed by `product_id` with a `qty` column: per key, the qty values in
/// order of first receipt (duplicates after the first are ignored).
pub fn qty_sequences(got: &[Received]) -> std::collections::BTreeMap<i64, Vec<i64>> {
    let mut seen = std::collections::HashSet::new();
    let mut out: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for r in got {
        if seen.insert(r.id.clone()) {
            let b = r.json();
            let k = b["data"]["key"]["product_id"].as_i64().unwrap();
            out.entry(k)
                .or_default()
                .push(b["data"]["new"]["qty"].as_i64().unwrap());
        }
    }
    out
}

/// Panics when the log holds any of these secrets, or the key part of a `whsec_` one.
pub fn assert_no_secrets(log: &str, secrets: &[&str]) {
    for s in secrets {
        let key = s.strip_prefix("whsec_").unwrap_or(s);
        assert!(!log.contains(key), "a secret is in the log: {key}");
    }
    assert!(!log.is_empty(), "no log to check");
}

/// Runs `walhook` with arguments and these environment variables set, to completion:
/// (exit code, stdout, stderr).
pub fn walhook_output_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run walhook");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The program `name` on the PATH, or a failure that says how to install it (`install`).
pub fn tool(name: &str, install: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: {install}"))
}
