//! Listing, reading and deleting conversations.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn conversations_are_listed_newest_first_with_their_titles() {
    let app = spawn_app().await;
    let a = app.ask("first conversation").await;
    let b = app.ask("second conversation").await;
    let (status, list) = app.get_json("/conversations").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["conversation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [b.conversation_id(), a.conversation_id()]);
    assert_eq!(list["items"][0]["title"], "second conversation");
    assert!(list["items"][0]["update_time"].as_f64().unwrap() > 1.7e9);

    // a follow-up moves the older conversation to the top
    app.turn(json!({"content": "more", "conversation_id": a.conversation_id()}))
        .await;
    let (_, list) = app.get_json("/conversations").await;
    assert_eq!(list["items"][0]["conversation_id"], a.conversation_id());
}

#[tokio::test]
async fn the_tree_links_parents_and_children() {
    let app = spawn_app().await;
    let first = app.ask("q1").await;
    let second = app
        .turn(json!({"content": "q2", "conversation_id": first.conversation_id()}))
        .await;
    let (_, conv) = app.get_json(&format!("/conv/{}", first.conversation_id())).await;
    let mapping = conv["mapping"].as_object().unwrap();
    assert_eq!(mapping.len(), 5, "root, two questions, two answers");
    for (id, node) in mapping {
        assert_eq!(node["id"], id.as_str());
        for child in node["children"].as_array().unwrap() {
            assert_eq!(mapping[child.as_str().unwrap()]["parent"], id.as_str());
        }
        if let Some(parent) = node["parent"].as_str() {
            assert!(
                mapping[parent]["children"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c == id.as_str())
            );
            assert_eq!(node["message"]["metadata"]["parent_id"], parent);
        }
    }
    let answer = &mapping[&second.message_id()]["message"];
    assert_eq!(answer["author"]["role"], "assistant");
    assert_eq!(answer["end_turn"], true);
    assert_eq!(conv["current_node"], second.message_id());
}

#[tokio::test]
async fn a_deleted_conversation_is_gone() {
    let app = spawn_app().await;
    let stream = app.ask("forget me").await;
    let response = app.delete_conversation(&stream.conversation_id()).await;
    assert_eq!(response.status(), 204);
    let (status, _) = app.get_json(&format!("/conv/{}", stream.conversation_id())).await;
    assert_eq!(status, 404);
    let (_, list) = app.get_json("/conversations").await;
    assert_eq!(list["items"], json!([]));
    assert_error(
        app.delete_conversation(&stream.conversation_id()).await,
        404,
        "conversation_not_found",
    )
    .await;
    let response = app
        .post_conv(json!({"content": "again", "conversation_id": stream.conversation_id()}))
        .await;
    assert_error(response, 404, "conversation_not_found").await;
}

#[tokio::test]
async fn health_and_prompts_answer() {
    let app = spawn_app().await;
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    let (_, prompts) = app.get_json("/prompts").await;
    let names: Vec<&str> = prompts["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["code-reviewer", "default", "translator"]);
    assert_eq!(prompts["items"][2]["title"], "Translator");
    let (_, config) = app.get_json("/config").await;
    assert_eq!(config["demo"], false);
    assert_eq!(config["default_model"], "mock-model");
    assert!(!config.to_string().contains(KEY));
}
