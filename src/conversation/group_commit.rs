//! SQLite writes with group commit: one thread owns the writing connection and commits
//! every write queued while the previous commit was on disk in one transaction, so a
//! thousand turns starting together cost a few disk syncs, not a thousand. Each write runs
//! in its own savepoint, so one failing write does not undo the others in its batch.
//!
//! Writes differ in how soon they are needed and how they must reach the disk
//! ([`Durability`]):
//!
//! - The end of an answer (and a deletion) is committed at once and synced
//!   (`synchronous=FULL`): it survives a power loss before anyone is told it is stored.
//! - A new turn is synced too, but its commit waits up to [`DEFER`] for company. It is
//!   written while its answer's first token is on its way, and on a machine with few cores
//!   the commit's CPU and its sync would otherwise run at that very moment and delay the
//!   token (with two cores, the added time to first token was about twice that of the
//!   memory store at the 99th percentile). Nothing waits for it but the end of its own
//!   answer, which is not told it is stored before it is.
//! - A checkpoint of a running answer waits up to [`CHECKPOINT_DEFER`] for company, and a
//!   batch of checkpoints alone is committed without a sync (`synchronous=NORMAL`, which in WAL mode
//!   writes the commit to the log without waiting for the disk): once committed it
//!   survives the process being killed, and it survives a power loss once any later commit
//!   is synced (a sync covers the whole log), which the next turn or end anywhere does. A
//!   checkpoint lost with the power leaves the answer at its previous checkpoint, marked as
//!   interrupted on the next start, as a checkpoint never taken would. Thousands of running
//!   answers checkpoint every second; without this every batch of them paid a disk sync.

use super::StoreError;
use prometheus::{Histogram, HistogramOpts};
use rusqlite::Connection;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;

/// How long a new turn waits for company before it is committed without any.
pub const DEFER: Duration = Duration::from_millis(1);

/// How long a checkpoint waits for company: nobody waits for it, and a batch of a running
/// second's checkpoints costs one commit instead of dozens.
pub const CHECKPOINT_DEFER: Duration = Duration::from_millis(20);

/// How long each batch took to commit, from `BEGIN` to the end of `COMMIT` (its sync
/// included). One for the process, not per application: the writer thread is started deep
/// in the SQLite store, which knows nothing of the application and its metrics.
static COMMIT_SECONDS: OnceLock<Histogram> = OnceLock::new();

/// The commit-time histogram, made on first use, for a metrics registry to show.
pub fn commit_seconds() -> Result<Histogram, prometheus::Error> {
    if let Some(histogram) = COMMIT_SECONDS.get() {
        return Ok(histogram.clone());
    }
    let made = Histogram::with_opts(
        HistogramOpts::new(
            "chatgate_store_commit_seconds",
            "Time to commit one batch of writes to the store, its disk sync included.",
        )
        .const_label("store", "sqlite")
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
    )?;
    Ok(COMMIT_SECONDS.get_or_init(|| made).clone())
}

/// When a write is committed, and whether its commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Committed at once, and synced.
    Now,
    /// Synced, but the commit may wait up to [`DEFER`] for other writes.
    Deferred,
    /// May wait up to [`CHECKPOINT_DEFER`] for other writes; not synced itself (see the
    /// module). Such a write must be one statement: it runs without a savepoint of its own
    /// (thousands of checkpoints a second), and a statement that fails changes nothing.
    Unsynced,
}

/// How long writes wait for company: `defer` for new turns (shorter in tests).
#[derive(Debug, Clone, Copy)]
struct Waits {
    defer: Duration,
    checkpoint: Duration,
}

impl Waits {
    fn of(&self, durability: Durability) -> Duration {
        match durability {
            Durability::Now => Duration::ZERO,
            Durability::Deferred => self.defer,
            Durability::Unsynced => self.checkpoint,
        }
    }
}

type Job = Box<dyn FnOnce(&Connection) -> Result<(), StoreError> + Send>;
type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A write, who waits for it, and how it must be committed.
struct Queued {
    job: Job,
    reply: Reply,
    durability: Durability,
    /// When it should be committed at the latest.
    due: Instant,
}

/// The writes waiting for the writer thread. Only what changes its plan wakes it: a write
/// while it waits for work, and a write due before the time it waits for.
/// Writes queued while it commits are found when the commit is done, with no wake-up of
/// their own (on a virtual machine a wake-up costs tens of microseconds of CPU, and
/// thousands of answers checkpoint every second).
#[derive(Default)]
struct Queue {
    writes: VecDeque<Queued>,
    /// The earliest `due` in `writes`.
    due: Option<Instant>,
    /// The writer thread waits for work.
    idle: bool,
    /// The writer thread waits for company until then.
    waiting_until: Option<Instant>,
    /// The [`Writer`] is gone: commit what is queued, then stop.
    closed: bool,
    /// The writer thread is gone (it panicked): nothing queued will be committed.
    stopped: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every update is a few assignments and a push or drain: whole even after a panic.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Writer {
    shared: Arc<Shared>,
    waits: Waits,
}

impl Writer {
    /// Moves `conn` to a writer thread; the thread ends when the Writer is dropped.
    pub fn start(conn: Connection) -> std::io::Result<Self> {
        Self::start_deferring(conn, DEFER)
    }

    /// [`Writer::start`] with new turns waiting up to `defer` for company (and checkpoints
    /// the longer of that and [`CHECKPOINT_DEFER`]).
    fn start_deferring(conn: Connection, defer: Duration) -> std::io::Result<Self> {
        let waits = Waits {
            defer,
            checkpoint: CHECKPOINT_DEFER.max(defer),
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("chatgate-sqlite-writer".into())
            .spawn(move || run(conn, &thread))?;
        Ok(Self { shared, waits })
    }

    /// Runs `job` in the next batch, committed at once and synced; resolves once its batch
    /// is committed.
    pub async fn write(
        &self,
        job: impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.write_as(Durability::Now, job).await
    }

    /// Runs `job` in a batch committed as `durability` allows; resolves once its batch is
    /// committed.
    pub async fn write_as(
        &self,
        durability: Durability,
        job: impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let stopped = || StoreError::Commit("the writer thread has stopped".into());
        let (reply, done) = oneshot::channel();
        let due = Instant::now() + self.waits.of(durability);
        let wake = {
            let mut queue = self.shared.lock();
            if queue.stopped {
                return Err(stopped());
            }
            queue.writes.push_back(Queued {
                job: Box::new(job),
                reply,
                durability,
                due,
            });
            queue.due = Some(queue.due.map_or(due, |d| d.min(due)));
            queue.idle || queue.waiting_until.is_some_and(|until| due < until)
        };
        if wake {
            self.shared.wake.notify_one();
        }
        done.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// Marks the queue stopped when the writer thread ends, by returning or by a panic: the
/// replies of what is left are dropped, so that nobody waits for them.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.stopped = true;
        queue.writes.clear();
    }
}

fn run(conn: Connection, shared: &Shared) {
    let _stopped = Stopped(shared);
    // what the connection was opened with (see `sqlite::connect`)
    let mut synced = true;
    loop {
        let mut queue = shared.lock();
        while queue.writes.is_empty() {
            if queue.closed {
                return;
            }
            queue.idle = true;
            queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
        queue.idle = false;
        // Wait for company until the first write is due (a write that may not wait is due
        // at once).
        while !queue.closed {
            let until = queue.due.unwrap_or_else(Instant::now);
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue.waiting_until = Some(until);
            queue = shared
                .wake
                .wait_timeout(queue, left)
                .map(|(queue, _)| queue)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        queue.waiting_until = None;
        let n = queue.writes.len().min(MAX_BATCH);
        let taken: Vec<Queued> = queue.writes.drain(..n).collect();
        queue.due = queue.writes.iter().map(|w| w.due).min();
        drop(queue);

        let sync = taken.iter().any(|w| w.durability != Durability::Unsynced);
        let batch: Vec<Batched> = taken
            .into_iter()
            .map(|w| Batched {
                job: w.job,
                reply: w.reply,
                savepoint: w.durability != Durability::Unsynced,
            })
            .collect();
        if sync != synced {
            // Outside a transaction, so that it applies to this batch's commit.
            let mode = if sync { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => synced = sync,
                // Still synced: the batch is committed more safely than it asked.
                Err(e) if !sync => log::warn!("could not set synchronous=NORMAL: {e}"),
                Err(e) => {
                    let message = format!("could not set synchronous=FULL: {e}");
                    for w in batch {
                        let _ = w.reply.send(Err(StoreError::Commit(message.clone())));
                    }
                    continue;
                }
            }
        }
        let started = Instant::now();
        commit(&conn, batch);
        if let Some(histogram) = COMMIT_SECONDS.get() {
            histogram.observe(started.elapsed().as_secs_f64());
        }
    }
}

/// A write in a batch.
struct Batched {
    job: Job,
    reply: Reply,
    /// Whether the job runs in a savepoint of its own, so that its failure undoes only it.
    savepoint: bool,
}

/// Runs `sql` as a statement prepared once per connection (each write of a batch runs two
/// or three of them).
fn run_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

fn commit(conn: &Connection, batch: Vec<Batched>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let message = e.to_string();
        for w in batch {
            let _ = w.reply.send(Err(StoreError::Commit(message.clone())));
        }
        return;
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for Batched { job, reply, savepoint } in batch {
        if !savepoint {
            outcomes.push((job(conn), reply));
            continue;
        }
        let outcome = run_cached(conn, "SAVEPOINT job").and_then(|()| job(conn));
        let outcome = match outcome {
            Ok(()) => run_cached(conn, "RELEASE job"),
            Err(e) => run_cached(conn, "ROLLBACK TO job")
                .and_then(|()| run_cached(conn, "RELEASE job"))
                .and(Err(e)),
        };
        outcomes.push((outcome, reply));
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for (outcome, reply) in outcomes {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let message = e.to_string();
            for (_, reply) in outcomes {
                let _ = reply.send(Err(StoreError::Commit(message.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dir: &tempfile::TempDir) -> (std::path::PathBuf, Connection) {
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)").unwrap();
        (path, conn)
    }

    fn insert(k: i64) -> impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static {
        move |c| {
            c.execute("INSERT INTO t VALUES (?1)", [k])
                .map(|_| ())
                .map_err(Into::into)
        }
    }

    #[tokio::test]
    async fn a_deferred_write_is_committed_alone_once_its_wait_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = table(&dir);
        let writer = Writer::start_deferring(conn, Duration::from_millis(20)).unwrap();
        let started = Instant::now();
        writer.write_as(Durability::Deferred, insert(1)).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(20));
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[tokio::test]
    async fn a_write_that_cannot_wait_takes_the_deferred_ones_along() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, conn) = table(&dir);
        // a wait far longer than the test may take
        let writer = Writer::start_deferring(conn, Duration::from_secs(600)).unwrap();
        let deferred = writer.write_as(Durability::Unsynced, insert(1));
        let at_once = async {
            // queued once the deferred write waits in the writer thread
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.write(insert(2)).await
        };
        let both = async { tokio::join!(deferred, at_once) };
        let (a, b) = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("the deferred write was not taken along");
        assert!(a.is_ok() && b.is_ok());
    }

    /// `PRAGMA synchronous` as a write of that durability sees it: 1 NORMAL, 2 FULL.
    async fn synchronous_seen_by(writer: &Writer, durability: Durability) -> i64 {
        let (seen, mode) = oneshot::channel();
        writer
            .write_as(durability, move |c| {
                let _ = seen.send(c.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))?);
                Ok(())
            })
            .await
            .unwrap();
        mode.await.unwrap()
    }

    #[tokio::test]
    async fn checkpoints_alone_are_committed_without_a_sync_and_everything_else_with_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, conn) = table(&dir);
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        // long enough that the two writes queued together below share a batch
        let writer = Writer::start_deferring(conn, Duration::from_millis(200)).unwrap();
        assert_eq!(synchronous_seen_by(&writer, Durability::Unsynced).await, 1);
        assert_eq!(synchronous_seen_by(&writer, Durability::Now).await, 2);
        assert_eq!(synchronous_seen_by(&writer, Durability::Unsynced).await, 1);
        assert_eq!(synchronous_seen_by(&writer, Durability::Deferred).await, 2);
        // an unsynced write in a batch with a synced one is synced with it
        let (a, b) = tokio::join!(
            synchronous_seen_by(&writer, Durability::Unsynced),
            synchronous_seen_by(&writer, Durability::Now)
        );
        assert_eq!((a, b), (2, 2));
    }

    #[tokio::test]
    async fn a_failing_write_does_not_undo_the_others_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)").unwrap();
        let writer = Writer::start(conn).unwrap();
        let insert = |k: i64| {
            writer.write(move |c| {
                c.execute("INSERT INTO t VALUES (?1)", [k])
                    .map(|_| ())
                    .map_err(Into::into)
            })
        };
        // queued together, so most likely one batch; the duplicate fails alone either way
        let (a, b, dup, c) = tokio::join!(insert(1), insert(2), insert(1), insert(3));
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert!(dup.is_err());
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 3);
    }
}
