//! `deploy/docker-compose.yml` as docker would run it, without docker: the replicas'
//! environment, read from the file and interpolated as compose does, starts the real
//! binary with no flag at all, on PostgreSQL and the Redis bus at the addresses of the
//! test's servers, with the client keys and the hosts nginx passes on.

use crate::helpers::*;
use crate::postgres_server::fresh_database;
use crate::redis_server::RedisServer;
use crate::shutdown::Gateway;
use mockllm::MockLlm;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

const CLIENT_KEY: &str = "compose-client-key-0123456789";

/// The `environment:` of the compose file's replica template, `KEY: value` as written.
fn replica_environment(compose: &str) -> Vec<(String, String)> {
    let start = compose
        .find("x-replica:")
        .expect("the replica template in the compose file");
    let mut lines = compose[start..].lines().skip_while(|l| l.trim() != "environment:");
    let heading = lines.next().expect("an environment in the replica template");
    let indent = heading.len() - heading.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (key, value) = l.split_once(": ").unwrap_or_else(|| panic!("KEY: value, got {l:?}"));
            (key.to_owned(), value.trim_matches('"').to_owned())
        })
        .collect()
}

/// `${NAME:?message}` and `${NAME:-default}` as compose fills them from `given`.
fn interpolate(value: &str, given: &HashMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("a closed ${…}") + at;
        let inner = &rest[at + 2..end];
        let (name, fallback) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner.split_once(":?").map_or(inner, |(name, _)| name), None),
        };
        match (given.get(name), fallback) {
            (Some(v), _) => out.push_str(v),
            (None, Some(default)) => out.push_str(default),
            (None, None) => panic!("compose would refuse to start without {name}"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_compose_files_replica_environment_starts_a_replica_on_postgresql_and_the_bus() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = std::fs::read_to_string(manifest.join("deploy/docker-compose.yml")).unwrap();
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let redis = RedisServer::start().await;
    let database = fresh_database().await;
    // What an operator exports before `docker compose up` (the README's "Scaling out").
    let given = HashMap::from([
        ("OPENAI_API_KEY", KEY.to_owned()),
        ("OPENAI_BASE_URL", mock.base_url()),
        ("CHATGATE_API_KEYS", format!("alice:{CLIENT_KEY}")),
        ("POSTGRES_PASSWORD", "not-checked-by-the-test-server".to_owned()),
    ]);
    let (test_db_host, test_db) = database
        .strip_prefix("postgres://chatgate@")
        .and_then(|rest| rest.split_once('/'))
        .expect("the test database's URL");
    let mut env: Vec<(String, String)> = Vec::new();
    for (key, value) in replica_environment(&compose) {
        let mut value = interpolate(&value, &given);
        // The services' names, which docker's network resolves, become the test's servers.
        match key.as_str() {
            "CHATGATE_STORE" => {
                let service = "@postgres:5432/chatgate?";
                assert!(value.contains(service), "the store is the postgres service: {value}");
                value = value.replace(service, &format!("@{test_db_host}/{test_db}?"));
            }
            "CHATGATE_BUS" => {
                assert_eq!(value, "redis://redis:6379/0", "the bus is the redis service");
                value = redis.url();
            }
            _ => {}
        }
        env.push((key, value));
    }
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for needed in ["OPENAI_API_KEY", "CHATGATE_API_KEYS", "CHATGATE_STORE", "CHATGATE_BUS"] {
        assert!(
            names.contains(&needed),
            "{needed} in the replicas' environment: {names:?}"
        );
    }
    // The image's own (deploy/Dockerfile) listens on 0.0.0.0:8000; here on a free port.
    env.push(("CHATGATE_LISTEN".into(), "127.0.0.1:0".into()));
    env.push((
        "CHATGATE_PROMPTS_DIR".into(),
        manifest.join("prompts").display().to_string(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let replica = Gateway::start_on_env(dir.path(), &env).await;

    let log = replica.log();
    assert!(log.contains("conversations are stored in PostgreSQL"), "{log}");
    assert!(log.contains("joined the bus"), "{log}");
    assert!(
        !log.contains("not-checked-by-the-test-server"),
        "the password stays out of the log"
    );

    let refused = replica.post_conv(json!({"content": "no key"})).await;
    assert_eq!(refused.status(), 401);
    let answer = read_stream(
        replica
            .client
            .post(replica.url("/conv"))
            .bearer_auth(CLIENT_KEY)
            // as nginx passes on the name the client used (CHATGATE_ALLOWED_HOSTS)
            .header("Host", "localhost")
            .json(&json!({"content": "through the compose settings [mock:words=3]"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    answer.assert_finished();
    assert_eq!(answer.text(), echo("through the compose settings", 3));
    let stored = replica
        .client
        .get(replica.url(&format!("/conv/{}", answer.conversation_id())))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    let foreign = replica
        .client
        .get(replica.url("/healthz"))
        .header("Host", "chatgate.attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 421, "a name that is not in CHATGATE_ALLOWED_HOSTS");
}
