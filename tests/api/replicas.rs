//! Several replicas on one PostgreSQL database and one Redis bus (`--bus`), as the contract's
//! "Several replicas" section has them: a reader on replica B follows and resumes an answer
//! replica A generates, with A's frame ids; a stop sent to B ends it on A; readers on B keep
//! it from counting as unread on A; when A dies, B's readers get the last frame with
//! `gateway_stopped` within 5 s; when Redis restarts, B's readers end with `bus_failed` while
//! the answer finishes on A. Real PostgreSQL and Redis servers, started by the tests.

use crate::helpers::*;
use crate::nginx_server::Nginx;
use crate::postgres_server::fresh_database;
use crate::redis_server::RedisServer;
use crate::shutdown::Gateway;
use chatgate::config::{BusUrl, PostgresUrl, Settings, StoreKind, UpstreamKind};
use chatgate::startup::Application;
use mockllm::MockLlm;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A replica in this process, on `store` and `redis`, with its own mock upstream.
async fn replica(store: &str, redis: &RedisServer, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let mut settings = Settings::for_tests();
    settings.upstream = UpstreamKind::OpenAi {
        base_url: mock.base_url(),
        key: Some(KEY.to_owned()),
    };
    settings.model = "mock-model".into();
    settings.store = StoreKind::Postgres(PostgresUrl(store.to_owned()));
    settings.bus = Some(BusUrl(redis.url()));
    adjust(&mut settings);
    start(settings, mock).await
}

/// Two replicas on a fresh database and a fresh Redis.
async fn two_replicas() -> (TestApp, TestApp, RedisServer) {
    let redis = RedisServer::start().await;
    let store = fresh_database().await;
    let a = replica(&store, &redis, |_| {}).await;
    let b = replica(&store, &redis, |_| {}).await;
    (a, b, redis)
}

fn ids(stream: &Stream) -> Vec<u64> {
    stream
        .events
        .iter()
        .filter_map(|e| e.id.as_ref())
        .map(|id| id.parse().unwrap())
        .collect()
}

fn last_id(live: &Live) -> u64 {
    live.seen
        .iter()
        .filter_map(|e| e.id.as_ref())
        .map(|id| id.parse::<u64>().unwrap())
        .next_back()
        .expect("a frame id")
}

#[tokio::test]
async fn a_second_tab_on_another_replica_follows_the_answer_with_the_same_frames() {
    let (a, b, redis) = two_replicas().await;
    let (conversation, message) = long_answer(&a, 40, 20).await;
    let on_a = a.get_stream(&conversation, "", None).await;
    let on_b = b
        .get_stream(&conversation, &format!("?message_id={message}"), None)
        .await;
    assert_eq!(on_b.status(), 200);
    assert_eq!(on_b.headers()["content-type"], "text/event-stream");
    let (on_a, on_b) = tokio::join!(read_stream(on_a), read_stream(on_b));
    on_b.assert_finished();
    assert_eq!(on_b.events[0].retry.as_deref(), Some("1000"));
    assert_eq!(on_b.text(), echo("tell me", 40));
    assert_eq!(on_b.text(), on_a.text());
    assert_eq!(on_b.message_id(), message);
    assert_eq!(on_b.conversation_id(), conversation);
    assert_eq!(on_b.last(), on_a.last(), "the same last frame on both replicas");
    let (ids_a, ids_b) = (ids(&on_a), ids(&on_b));
    assert_eq!(ids_b.last(), ids_a.last(), "frame ids count the same chunks");
    assert!(ids_b.windows(2).all(|w| w[0] < w[1]), "{ids_b:?}");
    // A sent every chunk to the bus, and says in how many round trips.
    let chunks = ids_a.last().unwrap() - 1;
    assert_eq!(metric(&a, "chatgate_bus_chunks_total").await, chunks as f64);
    let round_trips = metric(&a, "chatgate_bus_round_trips_total").await;
    assert!((1.0..=(chunks + 1) as f64).contains(&round_trips), "{round_trips}");
    assert_eq!(metric(&a, "chatgate_bus_write_errors_total").await, 0.0);

    // Ended: kept on the bus for at least 5 minutes, and resumed from there on either
    // replica, with the frames after the resume point.
    let mut conn = redis.connect().await;
    for key in ["frames", "answer"] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("chatgate:{key}:{message}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((300..=600).contains(&ttl), "{key}: {ttl} s");
    }
    let up_to_5 = on_a
        .events
        .iter()
        .find(|e| e.id.as_deref() == Some("5"))
        .map(|e| text_of(&serde_json::from_str(&e.data).unwrap()).to_owned())
        .expect("frame 5");
    for app in [&b, &a] {
        let query = format!("?message_id={message}&delta=true");
        let replay = read_stream(app.get_stream(&conversation, &query, Some("5")).await).await;
        replay.assert_finished();
        let rest: String = replay.frames().iter().map(|f| text_of(f).to_owned()).collect();
        assert_eq!(format!("{up_to_5}{rest}"), echo("tell me", 40));
        assert!(ids(&replay)[0] > 5, "{:?}", ids(&replay));
    }
    // Once the bus has forgotten it, it is replayed from the store.
    let _: () = redis::cmd("DEL")
        .arg(format!("chatgate:frames:{message}"))
        .arg(format!("chatgate:answer:{message}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let replay = read_stream(b.get_stream(&conversation, "", Some("5")).await).await;
    replay.assert_finished();
    assert_eq!(replay.text(), echo("tell me", 40));
    assert_eq!(replay.frames().len(), 1, "only the last frame: {:?}", replay.events);
}

/// Clients connected to `redis` now.
async fn redis_clients(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let info: String = redis::cmd("INFO").arg("clients").query_async(conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients in INFO")
}

#[tokio::test]
async fn many_answers_followed_on_another_replica_are_each_whole_on_a_connection_to_redis_per_worker() {
    let (a, b, redis) = two_replicas().await;
    // actix-web's worker threads (one per core): each reads the answers first followed on
    // it through a connection of its own
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let count = workers + 4;
    let mut conn = redis.connect().await;
    let before = redis_clients(&mut conn).await;
    let mut answers = Vec::new();
    for i in 0..count {
        let accepted = a
            .background(json!({"content": format!("answer {i} [mock:words=30] [mock:delay=30]")}))
            .await;
        answers.push((
            i,
            accepted["conversation_id"].as_str().unwrap().to_owned(),
            accepted["message_id"].as_str().unwrap().to_owned(),
        ));
    }
    // Readers on B come one after another, while B already reads the answers before theirs.
    let mut readers = Vec::new();
    for (i, conversation, message) in &answers {
        let response = b
            .get_stream(conversation, &format!("?message_id={message}"), None)
            .await;
        assert_eq!(response.status(), 200);
        readers.push((*i, message.clone(), tokio::spawn(read_stream(response))));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let following = redis_clients(&mut conn).await;
    assert!(
        following <= before + workers,
        "B follows {count} answers on a connection to Redis per worker ({workers}), not one per answer: \
         {before} clients before, {following} while following"
    );
    for (i, message, reader) in readers {
        let seen = reader.await.unwrap();
        seen.assert_finished();
        assert_eq!(seen.message_id(), message);
        assert_eq!(seen.text(), echo(&format!("answer {i}"), 30), "answer {i}");
        let ids = ids(&seen);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "answer {i}: {ids:?}");
    }
}

#[tokio::test]
async fn the_newest_live_answer_of_a_conversation_is_found_on_another_replica() {
    let (a, b, _redis) = two_replicas().await;
    let (conversation, message) = long_answer(&a, 30, 20).await;
    let on_b = read_stream(b.get_stream(&conversation, "", None).await).await;
    on_b.assert_finished();
    assert_eq!(on_b.message_id(), message);
    assert_eq!(on_b.text(), echo("tell me", 30));
}

#[tokio::test]
async fn an_answer_announced_on_one_replica_is_read_continued_and_deleted_at_once_on_another() {
    let (a, b, _redis) = two_replicas().await;
    crate::lifecycle::announced_answers_are_read_continued_and_deleted_at_once(&a, &b).await;
}

#[tokio::test]
async fn last_event_id_resumes_on_another_replica_with_nothing_lost_or_repeated() {
    let (a, b, _redis) = two_replicas().await;
    let (conversation, message) = long_answer(&a, 60, 20).await;
    let mut first = Live::new(a.get_stream(&conversation, "", None).await);
    let seen = first.until_id(10).await;
    let seen_id = last_id(&first);
    drop(first);

    let resumed = b
        .get_stream(
            &conversation,
            &format!("?message_id={message}&delta=true"),
            Some(&seen_id.to_string()),
        )
        .await;
    let resumed = read_stream(resumed).await;
    resumed.assert_finished();
    let after: String = resumed.frames().iter().map(|f| text_of(f).to_owned()).collect();
    assert_eq!(
        format!("{}{after}", text_of(&seen)),
        echo("tell me", 60),
        "before + after is the whole answer"
    );
    assert!(ids(&resumed)[0] > seen_id, "{:?} after {seen_id}", ids(&resumed));
}

#[tokio::test]
async fn stop_sent_to_another_replica_ends_the_answer_where_it_runs() {
    let (a, b, _redis) = two_replicas().await;
    let (conversation, message) = long_answer(&a, 400, 20).await;
    let mut on_a = Live::new(a.get_stream(&conversation, "", None).await);
    let mut on_b = Live::new(b.get_stream(&conversation, "", None).await);
    on_a.until_id(3).await;
    on_b.until_id(3).await;

    let (status, body) = b.stop(&conversation, Some(json!({ "message_id": message }))).await;
    assert_eq!((status, &body), (200, &json!({"stopped": true})));
    upstream_cancelled(
        &a.mock,
        Duration::from_secs(5),
        "the upstream request on A is cancelled",
    )
    .await;
    for reader in [on_a, on_b] {
        let ended = reader.rest(Duration::from_secs(10)).await;
        ended.assert_closed_properly();
        let last = ended.last();
        assert_eq!(last["message"]["status"], "finished_partial_completion", "{last}");
        assert_eq!(last["message"]["metadata"]["finish_details"]["type"], "interrupted");
    }
    let stored = b.stored_message(&conversation, &message).await;
    assert_eq!(stored["status"], "finished_partial_completion");
    let (status, body) = b.stop(&conversation, Some(json!({ "message_id": message }))).await;
    assert_eq!((status, body), (200, json!({"stopped": false})), "an ended answer");
}

#[tokio::test]
async fn an_answer_read_only_on_another_replica_is_not_stopped_as_unread() {
    let redis = RedisServer::start().await;
    let store = fresh_database().await;
    // A short grace: an answer A thinks unread stops a second after its last reader left.
    let a = replica(&store, &redis, |s| s.detached_grace = Duration::from_secs(1)).await;
    let b = replica(&store, &redis, |_| {}).await;
    let posted = a
        .post_conv(json!({"content": "tell me [mock:words=150] [mock:delay=20]"}))
        .await;
    let mut on_a = Live::new(posted);
    let first = on_a.next_frame().await;
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let mut on_b = Live::new(b.get_stream(&conversation, "", None).await);
    on_b.until_id(2).await;
    // A's own reader goes: only B's is left.
    drop(on_a);
    let ended = on_b.rest(Duration::from_secs(30)).await;
    ended.assert_finished();
    assert_eq!(ended.text(), echo("tell me", 150));
}

#[tokio::test]
async fn readers_elsewhere_get_gateway_stopped_within_5_s_when_the_generating_replica_dies() {
    let redis = RedisServer::start().await;
    let store = fresh_database().await;
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Gateway::start_replica(&store, &redis.url(), &mock, dir.path(), &[]).await;
    let b = replica(&store, &redis, |_| {}).await;
    let (conversation, message) = a
        .background("tell me a long story [mock:words=400] [mock:delay=20]")
        .await;
    let mut on_b = Live::new(b.get_stream(&conversation, "", None).await);
    on_b.until_id(20).await;

    a.sigkill();
    let killed = Instant::now();
    let ended = on_b.rest(Duration::from_secs(5)).await;
    let within = killed.elapsed();
    ended.assert_closed_properly();
    let last = ended.last();
    assert_eq!(last["message"]["status"], "error", "{last}");
    assert_eq!(last["error"]["code"], "gateway_stopped", "{last}");
    let text = text_of(&last).to_owned();
    assert!(text.starts_with("Echo: tell me a long story w1"), "{text:?}");
    assert!(!text.contains("w400"), "cut short: {text:?}");
    assert!(within <= Duration::from_secs(5), "{within:?}");

    // The store says what the readers were told.
    let stored = b.stored_message(&conversation, &message).await;
    assert_eq!(stored["status"], "error", "{stored}");
    assert_eq!(stored["metadata"]["error"]["code"], "gateway_stopped", "{stored}");
    assert_eq!(stored["content"]["parts"][0], text);
    // A stream request now replays that end and ends.
    let replay = read_stream(b.get_stream(&conversation, "", None).await).await;
    replay.assert_closed_properly();
    assert_eq!(text_of(&replay.last()), text);
}

#[tokio::test]
async fn when_redis_restarts_readers_elsewhere_end_with_bus_failed_and_the_answer_finishes_where_it_runs() {
    let (a, b, mut redis) = two_replicas().await;
    let (conversation, message) = long_answer(&a, 150, 20).await;
    let mut on_a = Live::new(a.get_stream(&conversation, "", None).await);
    let mut on_b = Live::new(b.get_stream(&conversation, "", None).await);
    on_a.until_id(5).await;
    on_b.until_id(5).await;

    redis.restart().await;
    let ended_b = on_b.rest(Duration::from_secs(20)).await;
    ended_b.assert_closed_properly();
    let last = ended_b.last();
    assert_eq!(last["message"]["status"], "error", "{last}");
    assert_eq!(last["error"]["code"], "bus_failed", "{last}");
    let ended_a = on_a.rest(Duration::from_secs(20)).await;
    ended_a.assert_finished();
    assert_eq!(ended_a.text(), echo("tell me", 150));
    let stored = b.stored_message(&conversation, &message).await;
    assert_eq!(stored["status"], "finished_successfully");
    assert_eq!(stored["content"]["parts"][0], echo("tell me", 150));

    // The bus is back for the next answer: followed, and stopped, from B.
    let (conversation, message) = long_answer(&a, 400, 20).await;
    let mut on_b = Live::new(b.get_stream(&conversation, "", None).await);
    on_b.until_id(3).await;
    let (status, body) = b.stop(&conversation, Some(json!({ "message_id": message }))).await;
    assert_eq!((status, body), (200, json!({"stopped": true})));
    let ended = on_b.rest(Duration::from_secs(10)).await;
    ended.assert_closed_properly();
    assert_eq!(ended.last()["message"]["status"], "finished_partial_completion");
}

#[tokio::test]
async fn an_answer_announced_while_its_replicas_lease_is_lost_renews_it_and_is_followed_whole() {
    let (a, b, redis) = two_replicas().await;
    let mut conn = redis.connect().await;
    // As a Redis restart loses them: the replicas renew their leases only every 750 ms, and
    // until then a silent answer of A's would look like a dead replica's to B.
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("chatgate:replica:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(leases.len(), 2, "{leases:?}");
    let _: () = redis::cmd("DEL").arg(&leases).query_async(&mut conn).await.unwrap();
    let accepted = a
        .background(json!({"content": "silent at first [mock:first-delay=1200] [mock:words=5] [mock:delay=10]"}))
        .await;
    let (conversation, message) = (
        accepted["conversation_id"].as_str().unwrap(),
        accepted["message_id"].as_str().unwrap(),
    );
    let replica: String = redis::cmd("HGET")
        .arg(format!("chatgate:answer:{message}"))
        .arg("replica")
        .query_async(&mut conn)
        .await
        .unwrap();
    let alive: bool = redis::cmd("EXISTS")
        .arg(format!("chatgate:replica:{replica}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(alive, "announcing an answer renews its replica's lease");
    let on_b = read_stream(b.get_stream(conversation, "", None).await).await;
    on_b.assert_finished();
    assert_eq!(on_b.text(), echo("silent at first", 5));
}

#[tokio::test]
async fn after_redis_restarts_a_replica_that_followed_before_follows_the_next_answer_whole() {
    let (a, b, mut redis) = two_replicas().await;
    // B reads an answer of A's through the bus, and keeps its connection for the next.
    let (conversation, _) = long_answer(&a, 30, 20).await;
    let first = read_stream(b.get_stream(&conversation, "", None).await).await;
    first.assert_finished();
    assert_eq!(first.text(), echo("tell me", 30));

    redis.restart().await;
    // the replicas' leases are renewed every 750 ms
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (conversation, _) = long_answer(&a, 30, 20).await;
    let next = read_stream(b.get_stream(&conversation, "", None).await).await;
    next.assert_finished();
    assert_eq!(next.text(), echo("tell me", 30));
}

#[tokio::test]
async fn an_unreachable_bus_stops_the_start_naming_where_without_the_password() {
    let store = fresh_database().await;
    let port = crate::watched::free_port();
    let mut settings = Settings::for_tests();
    settings.store = StoreKind::Postgres(PostgresUrl(store));
    settings.bus = Some(BusUrl(format!("redis://:hunter2-secret@127.0.0.1:{port}/0")));
    let refused = Application::build(settings).await.err().expect("the start fails");
    let message = refused.to_string();
    assert!(
        message.contains(&format!("cannot join the bus at redis://127.0.0.1:{port}/0")),
        "{message}"
    );
    assert!(
        message.to_lowercase().contains("refused"),
        "the reason is given: {message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn a_conversation_of_another_client_key_is_not_found_on_another_replica_while_it_is_live() {
    let redis = RedisServer::start().await;
    let store = fresh_database().await;
    let keys =
        |s: &mut Settings| s.api_keys = Some("alice:sk-alice-0123456789abcdef,bob:sk-bob-0123456789abcdef0".into());
    let a = replica(&store, &redis, keys).await;
    let b = replica(&store, &redis, keys).await;
    let accepted: Value = a
        .client
        .post(a.url("/conv"))
        .bearer_auth("sk-alice-0123456789abcdef")
        .json(&json!({"content": "tell me [mock:words=200] [mock:delay=20]", "background": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conversation = accepted["conversation_id"].as_str().unwrap();
    let stream_on_b = |key: &'static str| {
        b.client
            .get(b.url(&format!("/conv/{conversation}/stream")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(stream_on_b("sk-bob-0123456789abcdef0").await.unwrap().status(), 404);
    assert_eq!(stream_on_b("sk-alice-0123456789abcdef").await.unwrap().status(), 200);
    let (status, _) = b.stop(conversation, None).await;
    assert_eq!(status, 401, "no key, no stop");
    let stopped = b
        .client
        .post(b.url(&format!("/conv/{conversation}/stop")))
        .bearer_auth("sk-alice-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), 200);
}

#[tokio::test]
async fn a_client_counts_once_across_replicas_for_turns_per_minute() {
    let redis = RedisServer::start().await;
    let store = fresh_database().await;
    let limits = |s: &mut Settings| s.limits.turns_per_minute = Some(2);
    let a = replica(&store, &redis, limits).await;
    let b = replica(&store, &redis, limits).await;
    a.ask("one").await.assert_finished();
    b.ask("two").await.assert_finished();
    let refused = a.post_conv(json!({"content": "three"})).await;
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_error(refused, 429, "rate_limit_exceeded").await;
    assert_error(
        b.post_conv(json!({"content": "three"})).await,
        429,
        "rate_limit_exceeded",
    )
    .await;
}

#[tokio::test]
async fn a_client_counts_once_across_replicas_for_live_answers() {
    let redis = RedisServer::start().await;
    let store = fresh_database().await;
    let limits = |s: &mut Settings| s.limits.streams = Some(1);
    let a = replica(&store, &redis, limits).await;
    let b = replica(&store, &redis, limits).await;
    let (conversation, message) = long_answer(&a, 400, 20).await;
    assert_error(
        b.post_conv(json!({"content": "another"})).await,
        429,
        "too_many_streams",
    )
    .await;
    let (status, _) = b.stop(&conversation, Some(json!({ "message_id": message }))).await;
    assert_eq!(status, 200);
    // The place is given back as the answer ends.
    let asked = Instant::now();
    loop {
        let response = b.post_conv(json!({"content": "another"})).await;
        if response.status() == 200 {
            read_stream(response).await.assert_finished();
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(asked.elapsed() < Duration::from_secs(5), "the place was not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the unlabelled metric `name` on `app`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    app.metrics().await.exactly(name, &[])
}

fn port_of(app: &TestApp) -> u16 {
    app.address.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// How many stream requests `app` answered with 200, by its `/metrics`.
async fn streams_served(app: &TestApp) -> f64 {
    app.metrics().await.sum(
        "chatgate_http_requests_total",
        &[("route", "/conv/{id}/stream"), ("status", "200")],
    )
}

#[tokio::test]
async fn behind_the_shipped_nginx_config_frames_stream_unbuffered_and_either_replica_resumes() {
    let (a, b, _redis) = two_replicas().await;
    let nginx = Nginx::start([port_of(&a), port_of(&b)]).await;
    let client = reqwest::Client::new();
    let posted = client
        .post(nginx.url("/conv"))
        .header("Accept", "text/event-stream")
        .json(&json!({"content": "tell me [mock:words=120] [mock:delay=30]"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.headers()["content-type"], "text/event-stream");
    let mut live = Live::new(posted);
    let first = live.next_frame().await;
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let message = first["message"]["id"].as_str().unwrap().to_owned();
    // Unbuffered: the first frame came through while the answer is still being written.
    // (The turn is stored while the answer streams: it may take a moment to be readable.)
    let stored = loop {
        let response = client
            .get(nginx.url(&format!("/conv/{conversation}")))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap();
        }
        assert_eq!(response.status(), 404);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        stored["mapping"][&message]["message"]["status"], "in_progress",
        "{stored}"
    );
    let seen = live.until_id(10).await;
    let seen_id = last_id(&live);
    drop(live);

    // Round robin: the two resumes reach both replicas, one of which did not start it.
    let before = streams_served(&a).await + streams_served(&b).await;
    let (served_a, served_b) = (streams_served(&a).await, streams_served(&b).await);
    for _ in 0..2 {
        let resumed = client
            .get(nginx.url(&format!("/conv/{conversation}/stream?message_id={message}&delta=true")))
            .header("Last-Event-ID", seen_id.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resumed.status(), 200);
        let resumed = read_stream(resumed).await;
        resumed.assert_finished();
        let after: String = resumed.frames().iter().map(|f| text_of(f).to_owned()).collect();
        assert_eq!(format!("{}{after}", text_of(&seen)), echo("tell me", 120));
    }
    assert_eq!(streams_served(&a).await + streams_served(&b).await, before + 2.0);
    assert_eq!(
        streams_served(&a).await,
        served_a + 1.0,
        "each replica served one resume"
    );
    assert_eq!(
        streams_served(&b).await,
        served_b + 1.0,
        "each replica served one resume"
    );

    // Stop through nginx, whichever replica it reaches.
    let accepted: Value = client
        .post(nginx.url("/conv"))
        .json(&json!({"content": "tell me [mock:words=400] [mock:delay=20]", "background": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let conversation = accepted["conversation_id"].as_str().unwrap();
    let mut following = Live::new(
        client
            .get(nginx.url(&format!("/conv/{conversation}/stream")))
            .send()
            .await
            .unwrap(),
    );
    following.until_id(3).await;
    for _ in 0..2 {
        let stopped: Value = client
            .post(nginx.url(&format!("/conv/{conversation}/stop")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stopped == json!({"stopped": true}) {
            break;
        }
    }
    let ended = following.rest(Duration::from_secs(10)).await;
    ended.assert_closed_properly();
    assert_eq!(ended.last()["message"]["status"], "finished_partial_completion");
}

#[tokio::test]
async fn sigterm_on_a_replica_ends_its_answers_with_gateway_stopping_for_readers_everywhere_and_stores_them() {
    let redis = RedisServer::start().await;
    let store = fresh_database().await;
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let long = "tell me a long story [mock:words=400] [mock:delay=20]";
    let mut a = Gateway::start_replica(&store, &redis.url(), &mock, dir.path(), &["--shutdown-grace", "1"]).await;
    let b = replica(&store, &redis, |_| {}).await;
    let mut on_a = a.stream(long).await;
    let first = on_a.next_frame().await;
    let streamed = (
        first["conversation_id"].as_str().unwrap().to_owned(),
        first["message"]["id"].as_str().unwrap().to_owned(),
    );
    let background = a.background(long).await;
    let mut on_b = Live::new(b.get_stream(&background.0, "", None).await);
    on_b.until_id(3).await;

    a.signal("TERM");
    let ended_a = on_a.rest(Duration::from_secs(15)).await;
    let ended_b = on_b.rest(Duration::from_secs(15)).await;
    for ended in [&ended_a, &ended_b] {
        ended.assert_closed_properly();
        let last = ended.last();
        assert_eq!(last["message"]["status"], "error", "{last}");
        assert_eq!(last["error"]["code"], "gateway_stopping", "{last}");
        assert!(text_of(&last).starts_with("Echo: tell me a long story w1"), "{last}");
    }
    let status = a.exits_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");

    for ((conversation, message), ended) in [(&streamed, &ended_a), (&background, &ended_b)] {
        let stored = b.stored_message(conversation, message).await;
        assert_eq!(stored["status"], "error", "{stored}");
        assert_eq!(stored["metadata"]["error"]["code"], "gateway_stopping", "{stored}");
        assert_eq!(
            stored["content"]["parts"][0],
            text_of(&ended.last()),
            "the stored text is the last frame's"
        );
    }
}
