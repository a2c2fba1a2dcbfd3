//! One test suite for the conversation store, run against both of its backends: a SQLite
//! file and a PostgreSQL database on a real server (`postgres_server`). Each test is
//! written once, in `suite!`, and becomes a test of each backend's module.

use crate::postgres_server::fresh_database;
use chatgate::conversation::postgres::{Lease, PostgresStore};
use chatgate::conversation::sqlite::SqliteStore;
use chatgate::conversation::store::{AnswerUpdate, NewTurn};
use chatgate::conversation::{ConversationId, FinishType, Message, MessageId, Role, Status, Store, StoreError, Usage};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store of one backend, and what keeps its files alive.
struct Opened {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("suite.db")).unwrap();
    Opened {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

async fn postgres() -> Opened {
    let store = PostgresStore::open(&fresh_database().await).await.unwrap();
    Opened {
        store: Arc::new(store),
        _dir: None,
    }
}

/// A turn starting a conversation titled `title`, owned by `owner`, at `time`.
fn first_turn(title: &str, owner: Option<&str>, time: f64) -> NewTurn {
    let root = Message::root(time);
    let user = Message::new(
        Some(root.id),
        Role::User,
        title.into(),
        Status::FinishedSuccessfully,
        time,
    );
    let mut assistant = Message::new(Some(user.id), Role::Assistant, String::new(), Status::InProgress, time);
    assistant.model = Some("mock-model".into());
    NewTurn {
        conversation_id: ConversationId::new(),
        new_conversation: Some((title.into(), root)),
        owner: owner.map(str::to_owned),
        user,
        assistant,
    }
}

/// A turn continuing `conversation` from `parent`.
fn follow_up(conversation: ConversationId, parent: MessageId, content: &str, time: f64) -> NewTurn {
    let user = Message::new(
        Some(parent),
        Role::User,
        content.into(),
        Status::FinishedSuccessfully,
        time,
    );
    let assistant = Message::new(Some(user.id), Role::Assistant, String::new(), Status::InProgress, time);
    NewTurn {
        conversation_id: conversation,
        new_conversation: None,
        owner: None,
        user,
        assistant,
    }
}

fn end_of(turn: &NewTurn, content: &str, chunk_ends: Vec<u32>) -> AnswerUpdate {
    AnswerUpdate {
        conversation_id: turn.conversation_id,
        id: turn.assistant.id,
        content: content.into(),
        chunk_ends,
        reasoning: String::new(),
        reasoning_ends: Vec::new(),
        usage: None,
        status: Status::FinishedSuccessfully,
        finish: Some(FinishType::Stop),
        error: None,
    }
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn a_new_turn_is_read_back_as_a_tree_with_the_answer_current() {
                let opened = super::$backend().await;
                let turn = first_turn("hello tree", Some("alice"), 10.0);
                opened.store.begin_turn(turn.clone()).await.unwrap();

                let stored = opened.store.conversation(turn.conversation_id).await.unwrap().unwrap();
                assert_eq!(stored.title, "hello tree");
                assert_eq!(stored.owner.as_deref(), Some("alice"));
                assert_eq!(stored.current_node, turn.assistant.id);
                let (_, root) = turn.new_conversation.as_ref().unwrap();
                assert_eq!(stored.messages, vec![root.clone(), turn.user.clone(), turn.assistant.clone()]);
            }

            #[tokio::test]
            async fn a_follow_up_grows_the_same_tree_and_an_unknown_conversation_is_refused() {
                let opened = super::$backend().await;
                let first = first_turn("q1", None, 10.0);
                opened.store.begin_turn(first.clone()).await.unwrap();
                opened.store.update_answer(end_of(&first, "a1", vec![2])).await.unwrap();
                let second = follow_up(first.conversation_id, first.assistant.id, "q2", 11.0);
                opened.store.begin_turn(second.clone()).await.unwrap();
                // A branch: another question on the same answer.
                let branch = follow_up(first.conversation_id, first.assistant.id, "q2 again", 12.0);
                opened.store.begin_turn(branch.clone()).await.unwrap();

                let stored = opened.store.conversation(first.conversation_id).await.unwrap().unwrap();
                assert_eq!(stored.messages.len(), 7);
                assert_eq!(stored.current_node, branch.assistant.id);
                let parents: Vec<_> = [&second.user, &branch.user]
                    .iter()
                    .map(|m| stored.message(m.id).unwrap().parent)
                    .collect();
                assert_eq!(parents, [Some(first.assistant.id), Some(first.assistant.id)]);

                let orphan = follow_up(ConversationId::new(), MessageId::new(), "nobody's", 13.0);
                let refused = opened.store.begin_turn(orphan).await.unwrap_err();
                assert!(matches!(refused, StoreError::UnknownConversation(_)), "{refused}");
            }

            #[tokio::test]
            async fn a_checkpoint_and_the_end_keep_every_byte_and_field_of_an_answer() {
                let opened = super::$backend().await;
                let title = "nul \u{0} quote \" emoji 🦀";
                let turn = first_turn(title, None, 10.0);
                opened.store.begin_turn(turn.clone()).await.unwrap();
                let text = "a\u{0}b \"c\" ✓ 🦀\n";
                let ends = vec![2, 5, text.len() as u32];
                let checkpoint = AnswerUpdate {
                    status: Status::InProgress,
                    finish: None,
                    reasoning: "think\u{0}ing".into(),
                    reasoning_ends: vec![0, 5, 9],
                    usage: Some(Usage {
                        prompt_tokens: 12,
                        completion_tokens: 3,
                    }),
                    ..end_of(&turn, text, ends.clone())
                };
                opened.store.update_answer(checkpoint).await.unwrap();
                let stored = opened.store.conversation(turn.conversation_id).await.unwrap().unwrap();
                assert_eq!(stored.title, title);
                let answer = stored.message(turn.assistant.id).unwrap();
                assert_eq!((answer.content.as_str(), &answer.chunk_ends), (text, &ends));
                assert_eq!((answer.reasoning.as_str(), &answer.reasoning_ends[..]), ("think\u{0}ing", &[0, 5, 9][..]));
                assert_eq!(answer.status, Status::InProgress);
                assert_eq!(answer.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((12, 3)));

                // An end in error keeps its error object as it was, key order included.
                let error = json!({"message": "upstream went away", "type": "upstream_error", "code": "upstream_failed"});
                let end = AnswerUpdate {
                    status: Status::Error,
                    finish: Some(FinishType::Interrupted),
                    error: Some(error.clone()),
                    ..end_of(&turn, "a\u{0}b", vec![2, 3])
                };
                opened.store.update_answer(end).await.unwrap();
                let stored = opened.store.conversation(turn.conversation_id).await.unwrap().unwrap();
                let answer = stored.message(turn.assistant.id).unwrap();
                assert_eq!((answer.content.as_str(), &answer.chunk_ends[..]), ("a\u{0}b", &[2, 3][..]));
                assert_eq!((answer.status, answer.finish), (Status::Error, Some(FinishType::Interrupted)));
                assert_eq!(answer.error.as_ref().unwrap().to_string(), error.to_string());
                assert!(answer.reasoning.is_empty() && answer.reasoning_ends.is_empty() && answer.usage.is_none());
            }

            #[tokio::test]
            async fn lists_are_newest_first_and_each_owner_sees_only_theirs() {
                let opened = super::$backend().await;
                let older = first_turn("older", Some("alice"), 10.0);
                let newer = first_turn("newer", Some("alice"), 20.0);
                let bobs = first_turn("bob's", Some("bob"), 15.0);
                for turn in [&older, &newer, &bobs] {
                    opened.store.begin_turn(turn.clone()).await.unwrap();
                }
                let titles = |list: Vec<chatgate::conversation::Summary>| -> Vec<String> {
                    list.into_iter().map(|s| s.title).collect()
                };
                assert_eq!(titles(opened.store.list(Some("alice")).await.unwrap()), ["newer", "older"]);
                assert_eq!(titles(opened.store.list(Some("bob")).await.unwrap()), ["bob's"]);
                assert!(opened.store.list(Some("carol")).await.unwrap().is_empty());
                assert_eq!(titles(opened.store.list(None).await.unwrap()), ["newer", "bob's", "older"]);

                // An answer's end moves its conversation to the top; a checkpoint does not.
                let mut checkpoint = end_of(&older, "so far", vec![6]);
                checkpoint.status = Status::InProgress;
                checkpoint.finish = None;
                opened.store.update_answer(checkpoint).await.unwrap();
                assert_eq!(titles(opened.store.list(None).await.unwrap())[0], "newer");
                opened.store.update_answer(end_of(&older, "done", vec![4])).await.unwrap();
                assert_eq!(titles(opened.store.list(None).await.unwrap())[0], "older");
            }

            #[tokio::test]
            async fn a_deleted_conversation_is_gone_with_its_messages_and_deleting_again_says_so() {
                let opened = super::$backend().await;
                let turn = first_turn("to delete", None, 10.0);
                let kept = first_turn("to keep", None, 11.0);
                opened.store.begin_turn(turn.clone()).await.unwrap();
                opened.store.begin_turn(kept.clone()).await.unwrap();

                assert!(opened.store.delete(turn.conversation_id).await.unwrap());
                assert!(opened.store.conversation(turn.conversation_id).await.unwrap().is_none());
                assert!(!opened.store.delete(turn.conversation_id).await.unwrap());
                // Its messages went with it: its answer can no longer be updated into being.
                opened.store.update_answer(end_of(&turn, "late", vec![4])).await.unwrap();
                assert!(opened.store.conversation(turn.conversation_id).await.unwrap().is_none());
                let left = opened.store.list(None).await.unwrap();
                assert_eq!(left.iter().map(|s| s.id).collect::<Vec<_>>(), [kept.conversation_id]);
            }

            #[tokio::test]
            async fn a_conversation_that_never_was_is_none() {
                let opened = super::$backend().await;
                assert!(opened.store.conversation(ConversationId::new()).await.unwrap().is_none());
            }
        }
    };
}

suite!(sqlite);
suite!(postgres);

/// A short lease, so that a lapse shows within a test.
const SHORT: Lease = Lease {
    renew_every: Duration::from_millis(100),
    lasts: Duration::from_millis(600),
};

/// What `store` holds of `turn`'s answer, once `done` says yes (within 10 s).
async fn answer_once(store: &PostgresStore, turn: &NewTurn, done: impl Fn(&Message) -> bool) -> Message {
    let started = Instant::now();
    loop {
        let stored = store.conversation(turn.conversation_id).await.unwrap().unwrap();
        let answer = stored.message(turn.assistant.id).unwrap().clone();
        if done(&answer) || started.elapsed() > Duration::from_secs(10) {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn postgres_ends_the_answers_of_a_replica_that_stopped_renewing_its_lease_and_no_others() {
    let url = fresh_database().await;
    let gone = PostgresStore::open_with(&url, SHORT).await.unwrap();
    let orphaned = first_turn("cut off", None, 10.0);
    gone.begin_turn(orphaned.clone()).await.unwrap();
    let mut checkpoint = end_of(&orphaned, "half an ans", vec![4, 11]);
    checkpoint.status = Status::InProgress;
    checkpoint.finish = None;
    gone.update_answer(checkpoint).await.unwrap();
    // The replica is killed: its lease is no longer renewed.
    drop(gone);

    let alive = PostgresStore::open_with(&url, SHORT).await.unwrap();
    let running = first_turn("still running", None, 11.0);
    alive.begin_turn(running.clone()).await.unwrap();

    let cut = answer_once(&alive, &orphaned, |m| m.status != Status::InProgress).await;
    assert_eq!((cut.status, cut.finish), (Status::Error, Some(FinishType::Interrupted)));
    assert_eq!(cut.error.as_ref().unwrap()["code"], "gateway_stopped");
    assert_eq!(
        (cut.content.as_str(), &cut.chunk_ends[..]),
        ("half an ans", &[4, 11][..])
    );

    // Three leases later, the live replica's own answer is still running.
    tokio::time::sleep(SHORT.lasts * 3).await;
    let own = answer_once(&alive, &running, |_| true).await;
    assert_eq!(own.status, Status::InProgress);
}

#[tokio::test]
async fn postgres_replicas_starting_together_migrate_the_schema_once() {
    let url = fresh_database().await;
    let (a, b, c) = tokio::join!(
        PostgresStore::open(&url),
        PostgresStore::open(&url),
        PostgresStore::open(&url)
    );
    let (a, b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let turn = first_turn("written on a", None, 10.0);
    a.begin_turn(turn.clone()).await.unwrap();
    // Written on one replica, read on another.
    let read = b.conversation(turn.conversation_id).await.unwrap().unwrap();
    assert_eq!(read.title, "written on a");
}

#[tokio::test]
async fn postgres_refuses_a_database_whose_schema_is_newer_than_it_knows() {
    let url = fresh_database().await;
    drop(PostgresStore::open(&url).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .execute("INSERT INTO chatgate_schema (version) VALUES (99)", &[])
        .await
        .unwrap();
    let refused = PostgresStore::open(&url)
        .await
        .err()
        .expect("a newer schema is refused");
    assert!(refused.to_string().contains("schema version 99"), "{refused}");
}

#[tokio::test]
async fn postgres_stops_the_start_when_another_process_holds_the_migration_lock_too_long() {
    let url = fresh_database().await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // A process stuck while migrating holds the lock every chatgate takes to migrate.
    let lock: i64 = 0x6368_6174_6761_7465;
    client.execute("SELECT pg_advisory_lock($1)", &[&lock]).await.unwrap();
    // The URL's own lock_timeout is kept (the default, 60 s, is too long for a test).
    let impatient = format!("{url}?options=-c%20lock_timeout%3D1s");
    let refused = tokio::time::timeout(Duration::from_secs(30), PostgresStore::open(&impatient))
        .await
        .expect("the start does not hang")
        .err()
        .expect("the start fails");
    let message = refused.to_string();
    assert!(message.contains("migration lock"), "{message}");
    assert!(message.contains("1s"), "{message}");
    // Once it is released, the start goes on.
    client.execute("SELECT pg_advisory_unlock($1)", &[&lock]).await.unwrap();
    PostgresStore::open(&impatient).await.expect("the start goes on");
}
