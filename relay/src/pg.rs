//! The relay's store on PostgreSQL: what lets several relay instances share one org's data
//! (`jarvis-relay up --store postgres://…`; sled stays the embedded default).
//!
//! It holds exactly what the sled store holds, and as blindly: ciphertext, the (document,
//! actor, sequence) headers and sizes, one namespace per user (`ns`, the same string the sled
//! store prefixes its trees with). Layout (migration 1, below):
//!
//! ```text
//! relay_changes    (ns, doc, actor, seq) → body        a sealed change
//! relay_vectors    (ns, doc, actor)      → seq         the gap-free high-water mark
//! relay_keys       (ns, doc, epoch, id)  → body        a key record
//! relay_snapshots  (ns, doc)             → body        the document's snapshot
//! ```
//!
//! **Concurrency.** Several instances may write one user's data at once, so the database, not a
//! cache, decides: a change is stored by one statement that raises its actor's high-water mark
//! from `seq - 1` to `seq` and inserts the change only if that row was raised (the row lock
//! orders two instances offering the same change: the second finds the mark already moved and
//! reports a duplicate). Nothing is cached between calls.
//!
//! **Durability.** Outside a batch each write is its own transaction, committed before the call
//! returns (PostgreSQL's default `synchronous_commit`); a batch ([`Store::begin_batch`]) is one
//! transaction on one connection, committed by [`Store::end_batch`]: the group commit the relay
//! acknowledges after. A connection inside a transaction goes back to the pool only after its
//! COMMIT or ROLLBACK (`InTransaction`): one dropped any other way (a failed commit, a store
//! dropped mid-batch, a timeout) is closed, and the server rolls it back.
//!
//! **Sync over async.** [`Store`] is synchronous (the replica above it is sans-IO), the driver
//! (tokio-postgres, pooled by deadpool-postgres) is not: each call runs on the store's own small
//! runtime and blocks the calling thread until it is done (`block_in_place` when called from a
//! multi-threaded runtime's worker, as the relay's loop is). A database that does not answer
//! within [`TIMEOUT`] is an error, which the relay turns into a refusal: nothing is
//! acknowledged that is not stored.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Timeouts};
use jarvis_crdt::envelope::{KeyRecord, SealedChange, SealedSnapshot};

use crate::announce::Notice;
pub use crate::announce::Stored;
use jarvis_crdt::ids::{DocId, VersionVector};
use jarvis_crdt::store::{Put, Store, StoreError};
use jarvis_identity::PublicKey;
use tokio_postgres::NoTls;

/// How long a call waits for a connection, or for the database to answer, before failing.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The channel on which instances announce what they stored (`LISTEN`/`NOTIFY`).
pub const CHANNEL: &str = "jarvis_relay";
/// Every notification of a commit, in order, in one statement.
const NOTIFY_ALL: &str = "SELECT pg_notify($1, payload) FROM UNNEST($2::TEXT[]) WITH ORDINALITY AS n(payload, i) ORDER BY i";
const LISTEN: &str = "LISTEN jarvis_relay";
/// The listener connection's `application_name`.
const LISTENER_NAME: &str = "jarvis-relay/listen";
/// A notification saying revocations were added, followed by the instance's number.
const REVOCATIONS: &str = "revocations:";
/// Announcements waiting for the relay's loop, at most; past that they are dropped and the
/// loop is told it missed some ([`Heard::Missed`]).
const HEARD_QUEUE: usize = 1_024;
/// How long the listener waits before connecting again after losing its connection.
const RELISTEN: Duration = Duration::from_secs(1);

/// The schema version this build migrates to (the number of migrations it knows).
pub const SCHEMA_VERSION: i32 = 5;

/// The schema, one migration per entry, applied in order and recorded in `jarvis_schema`.
const MIGRATIONS: &[&str] = &[
    // 1: the store.
    "CREATE TABLE relay_changes (
         ns TEXT NOT NULL, doc BYTEA NOT NULL, actor BYTEA NOT NULL, seq BIGINT NOT NULL,
         body BYTEA NOT NULL,
         PRIMARY KEY (ns, doc, actor, seq));
     CREATE TABLE relay_vectors (
         ns TEXT NOT NULL, doc BYTEA NOT NULL, actor BYTEA NOT NULL, seq BIGINT NOT NULL,
         PRIMARY KEY (ns, doc, actor));
     CREATE TABLE relay_keys (
         ns TEXT NOT NULL, doc BYTEA NOT NULL, epoch BIGINT NOT NULL, id BYTEA NOT NULL,
         body BYTEA NOT NULL,
         PRIMARY KEY (ns, doc, epoch, id));
     CREATE TABLE relay_snapshots (
         ns TEXT NOT NULL, doc BYTEA NOT NULL, body BYTEA NOT NULL,
         PRIMARY KEY (ns, doc));",
    // 2: the roster (`crate::roster`): invite claims (one row per invite, so two instances
    // cannot both accept one) and the members seen, as the JSON records the sled roster keeps.
    "CREATE TABLE relay_claims (key TEXT PRIMARY KEY, record BYTEA NOT NULL);
     CREATE TABLE relay_members (key TEXT PRIMARY KEY, record BYTEA NOT NULL);",
    // 3: the org's revocations, one signed record per row (by its id), so a
    // revocation published to one instance reaches every instance and outlives them all.
    "CREATE TABLE relay_revocations (id BYTEA PRIMARY KEY, record BYTEA NOT NULL);",
    // 4: several orgs on one database: each revocation is its org's (the other
    // tables carry the org in their namespaces and keys).
    "ALTER TABLE relay_revocations ADD COLUMN org TEXT NOT NULL DEFAULT '';
     CREATE INDEX relay_revocations_org ON relay_revocations (org);",
    // 5 (SCHEMA_VERSION): the directory: who is online at which instance, with when it was
    // last heard (Unix milliseconds), so every instance lists the members of all of them.
    "CREATE TABLE relay_directory (
         org TEXT NOT NULL, peer TEXT NOT NULL, instance BIGINT NOT NULL,
         record BYTEA NOT NULL, seen_at BIGINT NOT NULL,
         PRIMARY KEY (org, peer));
     CREATE INDEX relay_directory_seen ON relay_directory (org, seen_at);",
];

// One version per migration: the constant cannot drift from the list.
const _: () = assert!(SCHEMA_VERSION as usize == MIGRATIONS.len());

/// Any number taken by `pg_advisory_xact_lock` while migrating, so two instances starting
/// together do not both migrate.
const MIGRATION_LOCK: i64 = 0x6a61_7276_6973; // "jarvis"

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// `host:port/database` of a config (hosts and ports as given), for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "{}:{}/{}",
        hosts.join(","),
        if ports.is_empty() {
            "5432".to_owned()
        } else {
            ports.join(",")
        },
        config.get_dbname().unwrap_or("(default)")
    )
}

/// A runtime that may be dropped anywhere (dropping a tokio runtime inside another panics).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A pool of connections to one database, and the runtime they run on. Cheap to clone.
#[derive(Clone)]
pub struct Pg {
    pool: Pool,
    /// For the listener's own connection (never printed: it may hold a password).
    config: Arc<tokio_postgres::Config>,
    runtime: Arc<Runtime>,
    /// Where the database is, for errors: hosts, ports and database, never the password.
    target: Arc<str>,
    /// The org whose data this handle reads and writes (a prefix of every namespace and
    /// roster key, and a column of the revocations): one database may serve several orgs, each
    /// seeing only its own. Empty for a handle of no org (tests, `migrate`, `status`).
    org: Arc<str>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("Pg").finish_non_exhaustive()
    }
}

impl Pg {
    /// Connects to `url` (`postgres://user@host:port/db`, or key=value pairs), with at most
    /// `connections` open at once, and applies the migrations this build knows.
    pub fn connect(url: &str, connections: usize) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| io(format!("the database URL does not parse: {e}")))?;
        config.connect_timeout(TIMEOUT);
        config.application_name("jarvis-relay");
        let target = describe(&config);
        let manager_config = ManagerConfig {
            // A connection whose server went away is noticed (`is_closed`) and replaced.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = Manager::from_config(config.clone(), NoTls, manager_config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("jarvis-pg")
            .enable_all()
            .build()
            .map_err(io)?;
        let pool = Pool::builder(manager)
            .max_size(connections.max(1))
            .timeouts(Timeouts {
                wait: Some(TIMEOUT),
                create: Some(TIMEOUT),
                recycle: Some(TIMEOUT),
            })
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(io)?;
        let pg = Self {
            pool,
            config: Arc::new(config),
            runtime: Arc::new(Runtime(Some(runtime))),
            target: target.into(),
            org: Arc::from(""),
        };
        pg.migrate()?;
        Ok(pg)
    }

    /// Runs `work` on the store's runtime and waits for it, within [`TIMEOUT`].
    fn block<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(runtime) = self.runtime.0.as_ref() else {
            return Err(io("the database connection is shut down"));
        };
        let timed = async {
            tokio::time::timeout(TIMEOUT, work)
                .await
                .map_err(|_| io("the database did not answer in time"))?
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| runtime.block_on(timed))
        } else {
            runtime.block_on(timed)
        }
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| {
                io(format!(
                    "cannot reach the database {} ({e}): is PostgreSQL running there and accepting connections from this host?",
                    self.target
                ))
            })
    }

    /// Applies the migrations not yet applied; returns how many it applied.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(io)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(io)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS jarvis_schema (
                     version INTEGER PRIMARY KEY,
                     applied TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .map_err(io)?;
            let have: i32 = tx
                .query_one("SELECT COALESCE(MAX(version), 0) FROM jarvis_schema", &[])
                .await
                .map_err(io)?
                .get(0);
            let known = SCHEMA_VERSION;
            if have > known {
                return Err(io(format!(
                    "the database's schema is version {have}, newer than this relay knows ({known}): run a newer jarvis-relay"
                )));
            }
            let mut applied = 0;
            for (version, sql) in (1..).zip(MIGRATIONS) {
                if version <= have {
                    continue;
                }
                tx.batch_execute(sql).await.map_err(io)?;
                tx.execute("INSERT INTO jarvis_schema (version) VALUES ($1)", &[&version])
                    .await
                    .map_err(io)?;
                applied += 1;
            }
            tx.commit().await.map_err(io)?;
            Ok(applied)
        })
    }

    /// This handle scoped to one org (by its root key): its namespaces, roster keys and
    /// revocations are that org's alone, and it hears only that org's announcements.
    pub fn for_org(&self, root: &PublicKey) -> Self {
        let hex = hex::encode(root.to_bytes());
        Self {
            org: Arc::from(format!("org/{}/", hex.get(..32).unwrap_or(&hex))),
            ..self.clone()
        }
    }

    /// Listens for what the fleet's instances store ([`CHANNEL`]), on a connection of its own
    /// kept open: lost, it connects again after `RELISTEN` (1 s) and says [`Heard::Missed`]. The
    /// queue is bounded (`HEARD_QUEUE`, 1,024); past it announcements are dropped and `Missed` said.
    /// Stops when the receiver is dropped.
    pub fn listen(&self) -> tokio::sync::mpsc::Receiver<Heard> {
        let (sender, receiver) = tokio::sync::mpsc::channel(HEARD_QUEUE);
        if let Some(runtime) = self.runtime.0.as_ref() {
            let mut config = (*self.config).clone();
            // How `fleet_status` counts the instances listening.
            config.application_name(LISTENER_NAME);
            runtime.spawn(listen(
                Arc::new(config),
                sender,
                self.target.clone(),
                self.org.clone(),
            ));
        }
        receiver
    }

    /// Adds signed revocation records (id, encoded record) that the table lacks, in one
    /// transaction that also tells the other instances, as `from`, when any was new. Returns
    /// how many were new. The records are the caller's, already verified.
    pub fn revocations_add(
        &self,
        records: &[([u8; 32], Vec<u8>)],
        from: u64,
    ) -> Result<usize, StoreError> {
        self.block(async {
            let tx = InTransaction::begin(self.client().await?).await?;
            let client = tx.client()?;
            // One statement, however many records: the relay's loop waits on it.
            let ids: Vec<&[u8]> = records.iter().map(|(id, _)| id.as_slice()).collect();
            let bodies: Vec<&[u8]> = records.iter().map(|(_, r)| r.as_slice()).collect();
            let added = client
                .execute(
                    "INSERT INTO relay_revocations (id, record, org)
                     SELECT id, record, $3 FROM UNNEST($1::BYTEA[], $2::BYTEA[]) AS r(id, record)
                     ON CONFLICT DO NOTHING",
                    &[&ids, &bodies, &&*self.org],
                )
                .await
                .map_err(io)?;
            if added > 0 {
                client
                    .execute(
                        "SELECT pg_notify($1, $2)",
                        &[&CHANNEL, &format!("{REVOCATIONS}{}|{from}", self.org)],
                    )
                    .await
                    .map_err(io)?;
            }
            tx.finish("COMMIT").await?;
            Ok(usize::try_from(added).unwrap_or(usize::MAX))
        })
    }

    /// What the fleet's database holds, for `jarvis-relay status --store …`: counts and sizes
    /// only, and the instances listening now.
    pub fn fleet_status(&self) -> Result<serde_json::Value, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT
                       (SELECT COALESCE(MAX(version), 0) FROM jarvis_schema)::BIGINT,
                       (SELECT count(DISTINCT ns) FROM relay_vectors)::BIGINT,
                       (SELECT count(*) FROM relay_changes)::BIGINT,
                       ((SELECT COALESCE(SUM(octet_length(body)), 0) FROM relay_changes)
                        + (SELECT COALESCE(SUM(octet_length(body)), 0) FROM relay_keys)
                        + (SELECT COALESCE(SUM(octet_length(body)), 0) FROM relay_snapshots))::BIGINT,
                       (SELECT count(*) FROM relay_revocations)::BIGINT,
                       (SELECT count(*) FROM relay_members)::BIGINT,
                       (SELECT count(*) FROM relay_claims)::BIGINT,
                       (SELECT count(*) FROM pg_stat_activity
                         WHERE application_name = $1)::BIGINT",
                    &[&LISTENER_NAME],
                )
                .await
                .map_err(io)?;
            let n = |i: usize| row.get::<_, i64>(i);
            Ok(serde_json::json!({
                "database": &*self.target,
                "schema_version": n(0),
                "users": n(1),
                "changes": n(2),
                "stored_bytes": n(3),
                "revocations": n(4),
                "members": n(5),
                "invite_claims": n(6),
                "instances_listening": n(7),
            }))
        })
    }

    /// Publishes this instance's part of the directory: `online` (peer id, record, last heard
    /// in Unix ms) written over whatever was there, `gone` removed if this instance wrote
    /// them, and rows silent for longer than `stale_ms` removed, whoever wrote them (an
    /// instance that died). One transaction.
    pub fn directory_publish(
        &self,
        instance: u64,
        online: &[(String, Vec<u8>, i64)],
        gone: &[String],
        stale_ms: i64,
    ) -> Result<(), StoreError> {
        let instance = i64::from_ne_bytes(instance.to_ne_bytes());
        let now = unix_ms();
        self.block(async {
            let tx = InTransaction::begin(self.client().await?).await?;
            let client = tx.client()?;
            // One statement each, whatever the number of members: the relay's loop waits on
            // these round trips.
            let peers: Vec<&str> = online.iter().map(|(p, _, _)| p.as_str()).collect();
            let records: Vec<&[u8]> = online.iter().map(|(_, r, _)| r.as_slice()).collect();
            let seen: Vec<i64> = online.iter().map(|(_, _, s)| *s).collect();
            let upsert = client
                .prepare_cached(
                    "INSERT INTO relay_directory (org, peer, instance, record, seen_at)
                     SELECT $1, peer, $2, record, seen_at
                     FROM UNNEST($3::TEXT[], $4::BYTEA[], $5::BIGINT[]) AS m(peer, record, seen_at)
                     ON CONFLICT (org, peer) DO UPDATE
                     SET instance = EXCLUDED.instance, record = EXCLUDED.record,
                         seen_at = EXCLUDED.seen_at",
                )
                .await
                .map_err(io)?;
            if !online.is_empty() {
                client
                    .execute(&upsert, &[&&*self.org, &instance, &peers, &records, &seen])
                    .await
                    .map_err(io)?;
            }
            if !gone.is_empty() {
                client
                    .execute(
                        "DELETE FROM relay_directory
                         WHERE org = $1 AND instance = $2 AND peer = ANY($3)",
                        &[&&*self.org, &instance, &gone],
                    )
                    .await
                    .map_err(io)?;
            }
            client
                .execute(
                    "DELETE FROM relay_directory WHERE org = $1 AND seen_at < $2",
                    &[&&*self.org, &(now - stale_ms)],
                )
                .await
                .map_err(io)?;
            tx.finish("COMMIT").await
        })
    }

    /// The directory rows other instances wrote and heard from within `within_ms`: (record,
    /// milliseconds since last heard).
    pub fn directory_others(
        &self,
        instance: u64,
        within_ms: i64,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let instance = i64::from_ne_bytes(instance.to_ne_bytes());
        let now = unix_ms();
        self.block(async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT record, seen_at FROM relay_directory
                     WHERE org = $1 AND instance <> $2 AND seen_at > $3",
                )
                .await
                .map_err(io)?;
            let rows = client
                .query(&statement, &[&&*self.org, &instance, &(now - within_ms)])
                .await
                .map_err(io)?;
            Ok(rows
                .iter()
                .map(|row| {
                    let seen_at: i64 = row.get(1);
                    (
                        row.get::<_, Vec<u8>>(0),
                        u64::try_from(now.saturating_sub(seen_at)).unwrap_or(0),
                    )
                })
                .collect())
        })
    }

    /// Every revocation record in the table (encoded; the caller verifies each).
    pub fn revocations_all(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT record FROM relay_revocations WHERE org = $1 ORDER BY id",
                    &[&&*self.org],
                )
                .await
                .map_err(io)?;
            Ok(rows.iter().map(|row| row.get::<_, Vec<u8>>(0)).collect())
        })
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        self.block(async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT COALESCE(MAX(version), 0) FROM jarvis_schema", &[])
                .await
                .map_err(io)?;
            Ok(row.get(0))
        })
    }

    /// Whether the database answers now.
    pub fn healthy(&self) -> bool {
        self.block(async {
            let client = self.client().await?;
            client.simple_query("SELECT 1").await.map_err(io)?;
            Ok(())
        })
        .is_ok()
    }

    /// One record of a roster table (`relay_claims`, `relay_members`).
    pub(crate) fn roster_get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = format!("{}{key}", self.org);
        let sql = match roster_table(table)? {
            RosterTable::Claims => "SELECT record FROM relay_claims WHERE key = $1",
            RosterTable::Members => "SELECT record FROM relay_members WHERE key = $1",
        };
        self.block(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(io)?;
            let row = client.query_opt(&statement, &[&key]).await.map_err(io)?;
            Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
        })
    }

    /// Adds a record only if the key has none; whether it did (the first claim of an invite).
    pub(crate) fn roster_insert(
        &self,
        table: &str,
        key: &str,
        record: &[u8],
    ) -> Result<bool, StoreError> {
        let key = format!("{}{key}", self.org);
        let sql = match roster_table(table)? {
            RosterTable::Claims => {
                "INSERT INTO relay_claims (key, record) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            }
            RosterTable::Members => {
                "INSERT INTO relay_members (key, record) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            }
        };
        self.block(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(io)?;
            Ok(client
                .execute(&statement, &[&key, &record])
                .await
                .map_err(io)?
                == 1)
        })
    }

    /// Writes a record, replacing the key's.
    pub(crate) fn roster_put(
        &self,
        table: &str,
        key: &str,
        record: &[u8],
    ) -> Result<(), StoreError> {
        let key = format!("{}{key}", self.org);
        let sql = match roster_table(table)? {
            RosterTable::Claims => {
                "INSERT INTO relay_claims (key, record) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record"
            }
            RosterTable::Members => {
                "INSERT INTO relay_members (key, record) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record"
            }
        };
        self.block(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(io)?;
            client
                .execute(&statement, &[&key, &record])
                .await
                .map_err(io)?;
            Ok(())
        })
    }

    /// Every record of a roster table.
    pub(crate) fn roster_all(&self, table: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let sql = match roster_table(table)? {
            RosterTable::Claims => {
                "SELECT record FROM relay_claims WHERE left(key, length($1)) = $1 ORDER BY key"
            }
            RosterTable::Members => {
                "SELECT record FROM relay_members WHERE left(key, length($1)) = $1 ORDER BY key"
            }
        };
        self.block(async {
            let client = self.client().await?;
            let rows = client.query(sql, &[&&*self.org]).await.map_err(io)?;
            Ok(rows.iter().map(|row| row.get::<_, Vec<u8>>(0)).collect())
        })
    }

    /// The store of one namespace (one user's data), whose batches are its own transactions.
    pub fn store(&self, ns: &str) -> PgStore {
        PgStore {
            pg: self.clone(),
            ns: format!("{}{ns}", self.org),
            group: Arc::default(),
            joined: false,
        }
    }

    /// A group of stores whose batches commit together (one transaction, one COMMIT), as a
    /// hub's group commit wants, and whose commits announce what they stored to the other
    /// instances ([`Pg::listen`]) as `instance`.
    pub fn group(&self, instance: u64) -> Grouped {
        Grouped {
            pg: self.clone(),
            group: Arc::new(Mutex::new(Group {
                instance: Some(instance),
                ..Group::default()
            })),
        }
    }
}

/// Stores that share one group commit ([`Pg::group`]). Every member that began a batch must
/// end it before any of them is durable: the last `end_batch` commits, and says whether it did.
#[derive(Clone)]
pub struct Grouped {
    pg: Pg,
    group: Arc<Mutex<Group>>,
}

impl Grouped {
    /// Forgets what the group's stores read of `docs` in `ns` (another instance wrote there).
    pub fn forget(&self, ns: &str, docs: impl IntoIterator<Item = DocId>) {
        let ns = format!("{}{ns}", self.pg.org);
        let mut group = lock(&self.group);
        if let Some(cached) = group.cache.get_mut(&ns) {
            cached.docs = None;
            for doc in docs {
                cached.vectors.remove(&doc);
                cached.keys.remove(&doc);
            }
        }
    }

    /// Forgets everything read (announcements may have been missed).
    pub fn forget_all(&self) {
        lock(&self.group).cache.clear();
    }

    /// The store of one namespace, in this group.
    pub fn store(&self, ns: &str) -> PgStore {
        PgStore {
            pg: self.pg.clone(),
            ns: format!("{}{ns}", self.pg.org),
            group: Arc::clone(&self.group),
            joined: false,
        }
    }
}

/// What the listener hears.
#[derive(Debug)]
pub enum Heard {
    /// Another instance (or this one: compare `from`) stored this.
    Stored(Stored),
    /// An instance (`from`) added revocations to the shared table: read them.
    Revocations { from: u64 },
    /// Announcements may have been missed (said when the listener starts listening, again
    /// after its connection was lost, and when the loop fell behind): resync everyone now
    /// rather than on the next timer.
    Missed,
}

/// The listener's loop: one connection, `LISTEN`, notifications forwarded until it is lost.
async fn listen(
    config: Arc<tokio_postgres::Config>,
    heard: tokio::sync::mpsc::Sender<Heard>,
    target: Arc<str>,
    org: Arc<str>,
) {
    use futures::StreamExt;
    // Whether announcements may have been missed and the loop not told yet.
    let mut missed = false;
    let mut first = true;
    // Says `Missed` first when owed (nothing after it until it is taken), then `item`.
    let forward = |item: Option<Heard>, missed: &mut bool| {
        if *missed {
            if heard.try_send(Heard::Missed).is_err() {
                return;
            }
            *missed = false;
        }
        if let Some(item) = item
            && heard.try_send(item).is_err()
        {
            *missed = true;
        }
    };
    while !heard.is_closed() {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let subscribe = client.batch_execute(LISTEN);
                tokio::pin!(subscribe);
                let mut subscribed = false;
                loop {
                    tokio::select! {
                        done = &mut subscribe, if !subscribed => {
                            if let Err(e) = done {
                                tracing::warn!(error = %e, "cannot listen for the other instances' writes");
                                break;
                            }
                            subscribed = true;
                            if !first {
                                tracing::info!(database = %target, "listening again for the other instances' writes");
                            }
                            first = false;
                            // Whatever was stored before this moment was not heard.
                            missed = true;
                            forward(None, &mut missed);
                        }
                        message = messages.next() => match message {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                                match of_org(n.payload(), &org) {
                                    Ok(Some(item)) => forward(Some(item), &mut missed),
                                    // Another org's, on the same database.
                                    Ok(None) => {}
                                    Err(e) => tracing::warn!(error = %e, "an unreadable notification"),
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(database = %target, error = %e, "lost the listening connection");
                                break;
                            }
                            None => break,
                        },
                        () = heard.closed() => return,
                    }
                }
            }
            Err(e) => tracing::debug!(database = %target, error = %e, "cannot connect to listen"),
        }
        missed = true;
        tokio::time::sleep(RELISTEN).await;
    }
}

/// A notification's payload, if it is `org`'s: what was stored (its namespace without the org's
/// prefix, as the shell names users) or that revocations were added.
fn of_org(payload: &str, org: &str) -> Result<Option<Heard>, String> {
    if let Some(rest) = payload.strip_prefix(REVOCATIONS) {
        let (theirs, from) = rest
            .rsplit_once('|')
            .ok_or("a revocations notice without its instance")?;
        if theirs != org {
            return Ok(None);
        }
        let from = from.parse().map_err(|e| format!("{e}"))?;
        return Ok(Some(Heard::Revocations { from }));
    }
    let mut stored = Stored::decode(payload)?;
    let Some(ns) = stored.ns.strip_prefix(org) else {
        return Ok(None);
    };
    stored.ns = ns.to_owned();
    Ok(Some(Heard::Stored(stored)))
}

/// The roster's tables (named by the caller, checked here: no other name reaches SQL).
enum RosterTable {
    Claims,
    Members,
}

fn roster_table(name: &str) -> Result<RosterTable, StoreError> {
    match name {
        "relay_claims" => Ok(RosterTable::Claims),
        "relay_members" => Ok(RosterTable::Members),
        other => Err(io(format!("no roster table {other}"))),
    }
}

/// A pooled connection inside a transaction. It goes back to the pool only through
/// [`InTransaction::finish`] (after COMMIT or ROLLBACK); dropped any other way (a store dropped
/// mid-batch, a timeout dropping the work) it is detached and closed, so the server rolls the
/// transaction back and no later user of the pool writes inside it.
struct InTransaction(Option<Object>);

impl InTransaction {
    async fn begin(client: Object) -> Result<Self, StoreError> {
        let guard = Self(Some(client));
        guard.client()?.batch_execute("BEGIN").await.map_err(io)?;
        Ok(guard)
    }

    fn client(&self) -> Result<&Object, StoreError> {
        self.0
            .as_ref()
            .ok_or_else(|| io("the transaction's connection is gone"))
    }

    /// Ends the transaction (`COMMIT` or `ROLLBACK`) and, if that worked, returns the
    /// connection to the pool.
    async fn finish(mut self, end: &str) -> Result<(), StoreError> {
        self.client()?.batch_execute(end).await.map_err(io)?;
        drop(self.0.take());
        Ok(())
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// One namespace's data in the database: a [`Store`].
pub struct PgStore {
    pg: Pg,
    ns: String,
    /// The group commit this store's batches join: its own, or its hub's ([`Pg::group`]).
    group: Arc<Mutex<Group>>,
    /// Whether this store is inside the group's batch (between `begin_batch` and `end_batch`).
    joined: bool,
}

/// A group commit: the batches of every store of one group are one transaction on one
/// connection, committed when the last of them ends. A relay round that touches a thousand
/// users then costs one connection and one COMMIT, not a connection per user (which a small
/// pool could not give and a large one would turn into a thousand fsyncs).
#[derive(Default)]
struct Group {
    /// The open transaction, while any member is in a batch.
    tx: Option<InTransaction>,
    /// Why the transaction cannot commit (a statement in it failed, or it never began).
    failed: Option<String>,
    /// Stores inside the batch now.
    members: usize,
    /// Who announces the group's commits ([`Notice`]), when anyone does.
    instance: Option<u64>,
    /// What this transaction stored, per namespace, announced with its commit.
    stored: std::collections::BTreeMap<String, Notice>,
    /// What the group's stores read, per namespace, kept until a write, an announcement of
    /// another instance's write, or a missed announcement says it may have changed.
    cache: std::collections::HashMap<String, Cached>,
    /// The same, as the open transaction sees it: what was read inside it, and the cached
    /// values its writes moved on (a vector with the change just stored, the key records with
    /// the one just added). Joins the cache when the transaction commits; dropped otherwise.
    overlay: std::collections::HashMap<String, Cached>,
}

/// What a write changes of a document's cached holdings.
#[derive(Clone, Copy)]
enum Aspect {
    /// Changes and snapshots.
    Vector,
    /// Key records.
    Keys,
}

/// One namespace's holdings as read: the relay's sessions announce them to every device every
/// few seconds, which would otherwise cost a round trip per query. The cache is only ever
/// behind the database (a lag heals by resync), never ahead of it: every write takes what it
/// changes out of the cache before it writes, and what a transaction read or moved on waits in
/// its overlay until it commits (dropped if it does not).
#[derive(Default)]
struct Cached {
    docs: Option<Vec<DocId>>,
    vectors: std::collections::HashMap<DocId, VersionVector>,
    keys: std::collections::HashMap<DocId, Vec<KeyRecord>>,
}

fn lock(group: &Mutex<Group>) -> std::sync::MutexGuard<'_, Group> {
    // A panic while holding it leaves plain data behind: carry on with it.
    group
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for PgStore {
    /// A store dropped inside a batch leaves the group; the last one out ends the transaction
    /// (rolled back: its `InTransaction` is dropped, not finished).
    fn drop(&mut self) {
        if self.joined {
            let mut group = lock(&self.group);
            group.members = group.members.saturating_sub(1);
            if group.members == 0 {
                group.tx = None;
                group.stored.clear();
                group.overlay.clear();
            }
        }
    }
}

/// Now, in Unix milliseconds (the directory's clock: the instances' clocks are assumed close,
/// as NTP keeps servers; a skew shows as an entry seen that much earlier or later).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn seq_param(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| io(format!("sequence number {seq} is out of range")))
}

fn seq_value(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| io(format!("a stored sequence number is negative: {seq}")))
}

fn actor_of(bytes: &[u8]) -> Result<PublicKey, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| io("a stored actor is not 32 bytes"))?;
    Ok(PublicKey::from_bytes(bytes)?)
}

const PUT_NEXT: &str = "WITH raised AS (
        UPDATE relay_vectors SET seq = $4::BIGINT
        WHERE ns = $1 AND doc = $2 AND actor = $3 AND seq = $4::BIGINT - 1
        RETURNING 1)
    INSERT INTO relay_changes (ns, doc, actor, seq, body)
    SELECT $1, $2, $3, $4::BIGINT, $5::BYTEA FROM raised";

const PUT_FIRST: &str = "WITH raised AS (
        INSERT INTO relay_vectors (ns, doc, actor, seq) VALUES ($1, $2, $3, 1)
        ON CONFLICT DO NOTHING
        RETURNING 1)
    INSERT INTO relay_changes (ns, doc, actor, seq, body)
    SELECT $1, $2, $3, 1, $4::BYTEA FROM raised";

const HAVE: &str = "SELECT seq FROM relay_vectors WHERE ns = $1 AND doc = $2 AND actor = $3";

impl PgStore {
    /// Runs `work` with this store's connection: the batch's, or one from the pool.
    fn read<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Client, &str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let group = lock(&self.group);
        match (&group.tx, self.joined) {
            (Some(batch), true) => self
                .pg
                .block(async { work(batch.client()?, &self.ns).await }),
            _ => {
                drop(group);
                self.pg.block(async {
                    let client = self.pg.client().await?;
                    work(&client, &self.ns).await
                })
            }
        }
    }

    /// [`PgStore::read`] for a write: a failure inside a batch poisons it (its transaction is
    /// aborted), and `end_batch` then reports it.
    fn with<T>(
        &mut self,
        work: impl AsyncFnOnce(&deadpool_postgres::Client, &str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.joined
            && let Some(why) = &lock(&self.group).failed
        {
            return Err(io(format!("an earlier write of this batch failed: {why}")));
        }
        let result = self.read(work);
        if let (Err(e), true) = (&result, self.joined) {
            lock(&self.group)
                .failed
                .get_or_insert_with(|| e.to_string());
        }
        result
    }

    /// What the cache holds for this namespace. Inside a batch, the transaction's overlay
    /// first, then the cache: every write takes what it changes out of the cache before it
    /// writes, so whatever is cached is committed state this transaction has not touched.
    fn cached<T>(&self, get: impl Fn(&Cached) -> Option<T>) -> Option<T> {
        let group = lock(&self.group);
        if self.joined
            && let Some(found) = group.overlay.get(&self.ns).and_then(&get)
        {
            return Some(found);
        }
        group.cache.get(&self.ns).and_then(get)
    }

    /// Keeps what was just read: in the cache outside a batch, in the transaction's overlay
    /// inside one.
    fn keep(&self, put: impl FnOnce(&mut Cached)) {
        let mut group = lock(&self.group);
        let place = if self.joined {
            &mut group.overlay
        } else {
            &mut group.cache
        };
        put(place.entry(self.ns.clone()).or_default());
    }

    /// After a write inside a batch: the transaction's view of `doc` moved on as `update`
    /// says, from the overlay's or (taken out of the cache before the write) `prior`.
    fn moved_on<T>(
        &self,
        prior: Option<T>,
        view: impl FnOnce(&mut Cached) -> &mut std::collections::HashMap<DocId, T>,
        doc: DocId,
        update: impl FnOnce(&mut T),
    ) {
        if !self.joined {
            return;
        }
        let mut group = lock(&self.group);
        let map = view(group.overlay.entry(self.ns.clone()).or_default());
        if let Some(value) = map.get_mut(&doc) {
            update(value);
        } else if let Some(mut value) = prior {
            update(&mut value);
            map.insert(doc, value);
        }
    }

    /// Takes what was cached of `doc` that a write changes (its vector, or its keys), and the
    /// list of documents if `doc` is not on it, out of the cache before it is written; returns
    /// what was there.
    fn forget(&self, doc: DocId, what: Aspect) -> Cached {
        let mut taken = Cached::default();
        let mut group = lock(&self.group);
        // The list of documents changes only if this one is new to it: a list that has it
        // already stays (a write to a listed document cannot take it off), so a user's resync
        // reads nothing from the database while its documents merely grow.
        let unlisted =
            |docs: &Option<Vec<DocId>>| docs.as_ref().is_none_or(|docs| !docs.contains(&doc));
        if let Some(overlay) = group.overlay.get_mut(&self.ns)
            && unlisted(&overlay.docs)
        {
            overlay.docs = None;
        }
        if let Some(cached) = group.cache.get_mut(&self.ns) {
            if unlisted(&cached.docs) {
                cached.docs = None;
            }
            match what {
                Aspect::Vector => {
                    if let Some(v) = cached.vectors.remove(&doc) {
                        taken.vectors.insert(doc, v);
                    }
                }
                Aspect::Keys => {
                    if let Some(k) = cached.keys.remove(&doc) {
                        taken.keys.insert(doc, k);
                    }
                }
            }
        }
        taken
    }

    /// Forgets the transaction's view of `doc` (a snapshot or a compaction changes more than
    /// a vector entry).
    fn drop_overlay(&self, doc: DocId) {
        if let Some(overlay) = lock(&self.group).overlay.get_mut(&self.ns) {
            overlay.vectors.remove(&doc);
            overlay.keys.remove(&doc);
        }
    }

    /// Notes what a batch stored, for the notice its commit sends.
    fn announce(&self, note: impl FnOnce(&mut Notice)) {
        if !self.joined {
            return;
        }
        let mut group = lock(&self.group);
        if group.instance.is_some() {
            let notice = group.stored.entry(self.ns.clone()).or_default();
            note(notice);
        }
    }

    /// Runs `work` in a transaction of its own, or inside the batch's.
    fn transaction<T>(
        &mut self,
        work: impl AsyncFnOnce(&deadpool_postgres::Client, &str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.joined {
            return self.with(work);
        }
        self.pg.block(async {
            let tx = InTransaction::begin(self.pg.client().await?).await?;
            match work(tx.client()?, &self.ns).await {
                Ok(value) => tx.finish("COMMIT").await.map(|()| value),
                Err(e) => {
                    let _ = tx.finish("ROLLBACK").await;
                    Err(e)
                }
            }
        })
    }
}

impl Store for PgStore {
    fn put_change(&mut self, change: &SealedChange) -> Result<Put, StoreError> {
        let h = *change.header();
        let doc = h.doc.0.to_vec();
        let actor = h.actor.to_bytes().to_vec();
        let seq = seq_param(h.seq)?;
        let body = change.encode();
        let grew = i64::try_from(body.len()).unwrap_or(i64::MAX);
        let mut prior = self.forget(h.doc, Aspect::Vector);
        let put = self.with(async |client, ns| {
            // Two tries: the mark may move between the write that did not apply and the read
            // that says why (another instance stored the change just before).
            for _ in 0..2 {
                let stored = if seq == 1 {
                    let statement = client.prepare_cached(PUT_FIRST).await.map_err(io)?;
                    client
                        .execute(&statement, &[&ns, &doc, &actor, &body])
                        .await
                        .map_err(io)?
                } else {
                    let statement = client.prepare_cached(PUT_NEXT).await.map_err(io)?;
                    client
                        .execute(&statement, &[&ns, &doc, &actor, &seq, &body])
                        .await
                        .map_err(io)?
                };
                if stored == 1 {
                    return Ok(Put::Stored);
                }
                let statement = client.prepare_cached(HAVE).await.map_err(io)?;
                let have = match client
                    .query_opt(&statement, &[&ns, &doc, &actor])
                    .await
                    .map_err(io)?
                {
                    Some(row) => seq_value(row.get(0))?,
                    None => 0,
                };
                if h.seq <= have {
                    return Ok(Put::Duplicate);
                }
                if h.seq > have + 1 {
                    return Ok(Put::Gap { have });
                }
            }
            Err(io("the change's actor kept moving; try again"))
        })?;
        let stored = put == Put::Stored;
        self.moved_on(
            prior.vectors.remove(&h.doc),
            |c| &mut c.vectors,
            h.doc,
            |v| {
                if stored {
                    v.set(h.actor, h.seq);
                }
            },
        );
        if stored {
            self.announce(|n| {
                n.change(h.doc, h.actor, h.seq);
                n.grew = n.grew.saturating_add(grew);
            });
        }
        Ok(put)
    }

    fn change(
        &self,
        doc: DocId,
        actor: &PublicKey,
        seq: u64,
    ) -> Result<Option<SealedChange>, StoreError> {
        let doc = doc.0.to_vec();
        let actor = actor.to_bytes().to_vec();
        let seq = seq_param(seq)?;
        self.read(async |client, ns| {
            let statement = client
                .prepare_cached(
                    "SELECT body FROM relay_changes
                     WHERE ns = $1 AND doc = $2 AND actor = $3 AND seq = $4",
                )
                .await
                .map_err(io)?;
            let row = client
                .query_opt(&statement, &[&ns, &doc, &actor, &seq])
                .await
                .map_err(io)?;
            row.map(|row| SealedChange::decode(row.get(0)).map_err(StoreError::from))
                .transpose()
        })
    }

    fn vector(&self, doc: DocId) -> Result<VersionVector, StoreError> {
        if let Some(vector) = self.cached(|c| c.vectors.get(&doc).cloned()) {
            return Ok(vector);
        }
        let doc_bytes = doc.0.to_vec();
        let vector = self.read(async |client, ns| {
            let statement = client
                .prepare_cached(
                    "SELECT actor, seq FROM relay_vectors WHERE ns = $1 AND doc = $2 AND seq > 0",
                )
                .await
                .map_err(io)?;
            let mut vector = VersionVector::new();
            for row in client
                .query(&statement, &[&ns, &doc_bytes])
                .await
                .map_err(io)?
            {
                vector.set(actor_of(row.get(0))?, seq_value(row.get(1))?);
            }
            Ok(vector)
        })?;
        // What a snapshot covers is in `relay_vectors` already (`put_snapshot` raises it), so
        // the snapshot itself (its whole body) is not read here.
        self.keep(|c| {
            c.vectors.insert(doc, vector.clone());
        });
        Ok(vector)
    }

    fn put_key(&mut self, record: &KeyRecord) -> Result<bool, StoreError> {
        let doc = record.doc.0.to_vec();
        let epoch = i64::from(record.epoch);
        let id = record.id().to_vec();
        let body = record.encode();
        let grew = i64::try_from(body.len()).unwrap_or(i64::MAX);
        let key = (record.doc, record.id());
        let mut prior = self.forget(record.doc, Aspect::Keys);
        let added = self.with(async |client, ns| {
            let statement = client
                .prepare_cached(
                    "INSERT INTO relay_keys (ns, doc, epoch, id, body) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT DO NOTHING",
                )
                .await
                .map_err(io)?;
            let added = client
                .execute(&statement, &[&ns, &doc, &epoch, &id, &body])
                .await
                .map_err(io)?;
            Ok(added == 1)
        })?;
        self.moved_on(
            prior.keys.remove(&record.doc),
            |c| &mut c.keys,
            record.doc,
            |keys| {
                if added {
                    keys.push(record.clone());
                    keys.sort_by_key(|k| (k.epoch, k.id()));
                }
            },
        );
        if added {
            self.announce(|n| {
                n.keys.push(key);
                n.grew = n.grew.saturating_add(grew);
            });
        }
        Ok(added)
    }

    fn keys(&self, doc: DocId) -> Result<Vec<KeyRecord>, StoreError> {
        if let Some(keys) = self.cached(|c| c.keys.get(&doc).cloned()) {
            return Ok(keys);
        }
        let id = doc;
        let doc = doc.0.to_vec();
        let keys: Vec<KeyRecord> = self.read(async |client, ns| {
            let statement = client
                .prepare_cached(
                    "SELECT body FROM relay_keys WHERE ns = $1 AND doc = $2 ORDER BY epoch, id",
                )
                .await
                .map_err(io)?;
            client
                .query(&statement, &[&ns, &doc])
                .await
                .map_err(io)?
                .iter()
                .map(|row| KeyRecord::decode(row.get(0)).map_err(StoreError::from))
                .collect()
        })?;
        self.keep(|c| {
            c.keys.insert(id, keys.clone());
        });
        Ok(keys)
    }

    fn put_snapshot(&mut self, snapshot: &SealedSnapshot) -> Result<bool, StoreError> {
        self.drop_overlay(snapshot.doc);
        self.forget(snapshot.doc, Aspect::Vector);
        let doc = snapshot.doc.0.to_vec();
        let body = snapshot.encode();
        let covered: Vec<(Vec<u8>, i64)> = snapshot
            .vector
            .iter()
            .map(|(actor, seq)| Ok((actor.to_bytes().to_vec(), seq_param(*seq)?)))
            .collect::<Result<_, StoreError>>()?;
        let vector = snapshot.vector.clone();
        let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
        let replaced = self.transaction(async |client, ns| {
            // Locks the document's snapshot row (when there is one) until the commit.
            let old = client
                .query_opt(
                    "SELECT body FROM relay_snapshots WHERE ns = $1 AND doc = $2 FOR UPDATE",
                    &[&ns, &doc],
                )
                .await
                .map_err(io)?;
            let mut grew = size;
            if let Some(old) = old {
                let old_body: &[u8] = old.get(0);
                grew -= i64::try_from(old_body.len()).unwrap_or(0);
                let old = SealedSnapshot::decode(old_body)?;
                if old.vector.dominates(&vector) {
                    return Ok(None);
                }
            }
            client
                .execute(
                    "INSERT INTO relay_snapshots (ns, doc, body) VALUES ($1, $2, $3)
                     ON CONFLICT (ns, doc) DO UPDATE SET body = EXCLUDED.body",
                    &[&ns, &doc, &body],
                )
                .await
                .map_err(io)?;
            // What the snapshot covers counts as held: later changes follow on from it.
            let raise = client
                .prepare_cached(
                    "INSERT INTO relay_vectors (ns, doc, actor, seq) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (ns, doc, actor)
                     DO UPDATE SET seq = GREATEST(relay_vectors.seq, EXCLUDED.seq)",
                )
                .await
                .map_err(io)?;
            for (actor, seq) in &covered {
                client
                    .execute(&raise, &[&ns, &doc, actor, seq])
                    .await
                    .map_err(io)?;
            }
            Ok(Some(grew))
        })?;
        let Some(grew) = replaced else {
            return Ok(false);
        };
        let doc = snapshot.doc;
        self.announce(|n| {
            n.grew = n.grew.saturating_add(grew);
            n.snapshots.push(doc);
        });
        Ok(true)
    }

    fn snapshot(&self, doc: DocId) -> Result<Option<SealedSnapshot>, StoreError> {
        let doc = doc.0.to_vec();
        self.read(async |client, ns| {
            let statement = client
                .prepare_cached("SELECT body FROM relay_snapshots WHERE ns = $1 AND doc = $2")
                .await
                .map_err(io)?;
            let row = client
                .query_opt(&statement, &[&ns, &doc])
                .await
                .map_err(io)?;
            row.map(|row| SealedSnapshot::decode(row.get(0)).map_err(StoreError::from))
                .transpose()
        })
    }

    fn compact(&mut self, doc: DocId) -> Result<u64, StoreError> {
        self.drop_overlay(doc);
        self.forget(doc, Aspect::Vector);
        let Some(snapshot) = self.snapshot(doc)? else {
            return Ok(0);
        };
        let doc = doc.0.to_vec();
        let covered: Vec<(Vec<u8>, i64)> = snapshot
            .vector
            .iter()
            .map(|(actor, seq)| Ok((actor.to_bytes().to_vec(), seq_param(*seq)?)))
            .collect::<Result<_, StoreError>>()?;
        let freed = self.transaction(async |client, ns| {
            let statement = client
                .prepare_cached(
                    "WITH gone AS (
                         DELETE FROM relay_changes
                         WHERE ns = $1 AND doc = $2 AND actor = $3 AND seq <= $4
                         RETURNING octet_length(body) AS bytes)
                     SELECT COALESCE(SUM(bytes), 0)::BIGINT FROM gone",
                )
                .await
                .map_err(io)?;
            let mut freed = 0u64;
            for (actor, top) in &covered {
                let bytes: i64 = client
                    .query_one(&statement, &[&ns, &doc, actor, top])
                    .await
                    .map_err(io)?
                    .get(0);
                freed += seq_value(bytes)?;
            }
            Ok(freed)
        });
        let freed = freed?;
        let shrunk = i64::try_from(freed).unwrap_or(i64::MAX);
        self.announce(|n| n.grew = n.grew.saturating_sub(shrunk));
        Ok(freed)
    }

    fn docs(&self) -> Result<Vec<DocId>, StoreError> {
        if let Some(docs) = self.cached(|c| c.docs.clone()) {
            return Ok(docs);
        }
        let docs: Vec<DocId> = self.read(async |client, ns| {
            let statement = client
                .prepare_cached(
                    "SELECT doc FROM relay_vectors WHERE ns = $1 AND seq > 0
                     UNION SELECT doc FROM relay_keys WHERE ns = $1
                     UNION SELECT doc FROM relay_snapshots WHERE ns = $1
                     ORDER BY 1",
                )
                .await
                .map_err(io)?;
            client
                .query(&statement, &[&ns])
                .await
                .map_err(io)?
                .iter()
                .map(|row| {
                    let bytes: &[u8] = row.get(0);
                    <[u8; 16]>::try_from(bytes)
                        .map(DocId)
                        .map_err(|_| io("a stored document id is not 16 bytes"))
                })
                .collect()
        })?;
        self.keep(|c| c.docs = Some(docs.clone()));
        Ok(docs)
    }

    fn stored_bytes(&self) -> Result<u64, StoreError> {
        self.read(async |client, ns| {
            let statement = client
                .prepare_cached(
                    "SELECT ((SELECT COALESCE(SUM(octet_length(body)), 0) FROM relay_changes WHERE ns = $1)
                          + (SELECT COALESCE(SUM(octet_length(body)), 0) FROM relay_keys WHERE ns = $1)
                          + (SELECT COALESCE(SUM(octet_length(body)), 0) FROM relay_snapshots WHERE ns = $1))::BIGINT",
                )
                .await
                .map_err(io)?;
            let total: i64 = client
                .query_one(&statement, &[&ns])
                .await
                .map_err(io)?
                .get(0);
            seq_value(total)
        })
    }

    fn begin_batch(&mut self) {
        if self.joined {
            return;
        }
        self.joined = true;
        let mut group = lock(&self.group);
        group.members += 1;
        if group.members > 1 {
            return;
        }
        group.failed = None;
        group.stored.clear();
        group.overlay.clear();
        let began = self
            .pg
            .block(async { InTransaction::begin(self.pg.client().await?).await });
        match began {
            Ok(tx) => group.tx = Some(tx),
            // Every write of the batch fails, and so does its end: nothing is acknowledged.
            Err(e) => group.failed = Some(e.to_string()),
        }
    }

    fn end_batch(&mut self) -> Result<(), StoreError> {
        if !std::mem::replace(&mut self.joined, false) {
            return Ok(());
        }
        let mut group = lock(&self.group);
        group.members = group.members.saturating_sub(1);
        if group.members > 0 {
            // The last member commits; until then nothing of the group is durable.
            return match &group.failed {
                Some(why) => Err(io(format!("the batch was not stored: {why}"))),
                None => Ok(()),
            };
        }
        let failed = group.failed.take();
        let notices = match group.instance {
            Some(from) => std::mem::take(&mut group.stored)
                .into_iter()
                .flat_map(|(ns, notice)| notice.payloads(from, &ns))
                .collect(),
            None => Vec::new(),
        };
        let overlay = std::mem::take(&mut group.overlay);
        let Some(tx) = group.tx.take() else {
            return Err(io(format!(
                "the batch was not stored: {}",
                failed.unwrap_or_else(|| "it never began".to_owned())
            )));
        };
        drop(group);
        let committed = self.pg.block(async move {
            if let Some(why) = failed {
                let _ = tx.finish("ROLLBACK").await;
                return Err(io(format!("the batch was not stored: {why}")));
            }
            // Delivered to the listeners only if, and when, the transaction commits: all of
            // the round's notifications in one statement (one round trip, however many users).
            if !notices.is_empty() {
                let client = tx.client()?;
                let sent = match client.prepare_cached(NOTIFY_ALL).await {
                    Ok(statement) => client.execute(&statement, &[&CHANNEL, &notices]).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    let _ = tx.finish("ROLLBACK").await;
                    return Err(io(format!("the batch was not stored: {e}")));
                }
            }
            tx.finish("COMMIT")
                .await
                .map_err(|e| io(format!("the batch was not stored: {e}")))
        });
        if committed.is_ok() {
            // What the transaction saw is now what the database holds.
            let mut group = lock(&self.group);
            for (ns, seen) in overlay {
                let cached = group.cache.entry(ns).or_default();
                cached.vectors.extend(seen.vectors);
                cached.keys.extend(seen.keys);
            }
        }
        committed
    }
}
