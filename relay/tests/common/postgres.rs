//! A throwaway PostgreSQL cluster for a test: `initdb` into a temporary directory, `pg_ctl
//! start` on a free loopback port, stopped (immediately) when dropped. PostgreSQL refuses to
//! run as root, so under root (as CI runs) the cluster belongs to the `postgres` user (or
//! `nobody`) and its commands run through `runuser`.
//!
//! The binaries come from `JARVIS_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` (Debian's
//! layout), else `PATH`. The test scripts install the system's `postgresql` package.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The unprivileged user it runs as, when we are root.
    owner: Option<String>,
    pub port: u16,
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("JARVIS_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_default()
}

fn uid_of(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&user))
            .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// A new cluster, started. Panics, saying what to install, when PostgreSQL is missing.
    pub fn start() -> Self {
        let bin = bin_dir();
        let initdb = if bin.as_os_str().is_empty() {
            PathBuf::from("initdb")
        } else {
            bin.join("initdb")
        };
        assert!(
            bin.as_os_str().is_empty() || initdb.exists(),
            "PostgreSQL is not installed (no {}): `apt-get install postgresql`, or set JARVIS_PG_BIN",
            initdb.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("jarvis-pg-")
            .tempdir()
            .unwrap();
        let owner = is_root().then(|| {
            ["postgres", "nobody"]
                .into_iter()
                .find(|u| uid_of(u).is_some())
                .expect("running as root, and no unprivileged user (postgres, nobody) to run PostgreSQL as")
                .to_owned()
        });
        if let Some(owner) = &owner {
            let (uid, gid) = uid_of(owner).unwrap();
            chown_tree(dir.path(), uid, gid);
        }
        let cluster = Self {
            port: free_port(),
            dir,
            bin,
            owner,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data().to_string_lossy(),
                "-U",
                "jarvis",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.resume();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str) -> PathBuf {
        if self.bin.as_os_str().is_empty() {
            PathBuf::from(name)
        } else {
            self.bin.join(name)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let mut command = match &self.owner {
            Some(owner) => {
                let mut c = Command::new("runuser");
                c.args(["-u", owner, "--"]).arg(self.tool(tool));
                c
            }
            None => Command::new(self.tool(tool)),
        };
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    /// Starts the server (again, after [`Cluster::stop`]) and waits until it accepts connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-o",
                &options,
                "-l",
                &self.dir.path().join("log").to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the server at once (as a crash would: no checkpoint).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// The URL of a database in it (`postgres`, or one made with [`Cluster::create_database`]).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://jarvis@127.0.0.1:{}/{database}?connect_timeout=5",
            self.port
        )
    }

    /// Makes an empty database called `name`.
    pub fn create_database(&self, name: &str) -> String {
        self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "jarvis",
                name,
            ],
        );
        self.url(name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut command = match &self.owner {
            Some(owner) => {
                let mut c = Command::new("runuser");
                c.args(["-u", owner, "--"]).arg(self.tool("pg_ctl"));
                c
            }
            None => Command::new(self.tool("pg_ctl")),
        };
        let _ = command
            .args([
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}
