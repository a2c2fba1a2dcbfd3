//! SQLite writes with group commit: one thread owns the writing connection and commits
//! every write queued while the previous commit was on disk in one transaction, so a
//! thousand turns starting together cost a few disk syncs, not a thousand. Each write runs
//! in its own savepoint, so one failing write does not undo the others in its batch.

use super::StoreError;
use rusqlite::Connection;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;

type Job = Box<dyn FnOnce(&Connection) -> Result<(), StoreError> + Send>;
type Reply = oneshot::Sender<Result<(), StoreError>>;

pub struct Writer {
    queue: mpsc::Sender<(Job, Reply)>,
}

impl Writer {
    /// Moves `conn` to a writer thread; the thread ends when the Writer is dropped.
    pub fn start(conn: Connection) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("chatgate-sqlite-writer".into())
            .spawn(move || run(conn, jobs))?;
        Ok(Self { queue })
    }

    /// Runs `job` in the next batch; resolves once its batch is committed.
    pub async fn write(
        &self,
        job: impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (reply, done) = oneshot::channel();
        self.queue
            .send((Box::new(job), reply))
            .map_err(|_| StoreError::Commit("the writer thread has stopped".into()))?;
        done.await
            .map_err(|_| StoreError::Commit("the writer thread has stopped".into()))?
    }
}

fn run(conn: Connection, jobs: mpsc::Receiver<(Job, Reply)>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit(&conn, batch);
    }
}

fn commit(conn: &Connection, batch: Vec<(Job, Reply)>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let message = e.to_string();
        for (_, reply) in batch {
            let _ = reply.send(Err(StoreError::Commit(message.clone())));
        }
        return;
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (job, reply) in batch {
        let outcome = conn
            .execute_batch("SAVEPOINT job")
            .map_err(StoreError::from)
            .and_then(|()| job(conn));
        let undo = if outcome.is_ok() {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        let outcome = outcome.and(conn.execute_batch(undo).map_err(StoreError::from));
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
