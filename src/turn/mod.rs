//! A `POST /conv` body, checked once into a [`TurnRequest`], then resolved against the
//! stored conversation into everything the upstream call and the generation need.

pub mod history;

use crate::conversation::store::NewTurn;
use crate::conversation::{ConversationId, Message, MessageId, Role, Status, now, title_from, tree};
use crate::edge::auth::Client;
use crate::error::{ApiError, RequestError, parse_object};
use crate::state::AppState;
use crate::upstream::ChatRequest;
use crate::wire::chatgpt::AnswerIdentity;
use history::{Budget, TokenCounter};
use serde::Deserialize;

/// The body as clients send it. Unknown fields are ignored: ChatGPT-web clients send more.
#[derive(Deserialize)]
struct Wire {
    content: String,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    parent_message_id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    delta: Option<bool>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    cancel_unread: Option<bool>,
}

/// A valid turn request: non-empty content, ids that are UUIDs, empty strings as absent.
#[derive(Debug)]
pub struct TurnRequest {
    pub content: String,
    pub conversation: Option<ConversationId>,
    pub parent: Option<MessageId>,
    pub model: Option<String>,
    pub prompt: Option<String>,
    /// Frames carry only the text added since the previous frame.
    pub delta: bool,
    /// Answer `202` at once and let the answer run with no reader.
    pub background: bool,
    /// `false`: wait for the end and answer its last frame as JSON.
    pub stream: bool,
    /// With `background`: an answer nobody reads is still cancelled after the detached
    /// grace, as a streamed one is (the chat page sends its turns so).
    pub cancel_unread: bool,
}

fn present(field: Option<String>) -> Option<String> {
    field.filter(|v| !v.trim().is_empty())
}

impl TurnRequest {
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let wire: Wire = parse_object(body)?;
        if wire.content.trim().is_empty() {
            return Err(RequestError::invalid_field(
                "content",
                "content must not be empty".into(),
            ));
        }
        let conversation = present(wire.conversation_id)
            .map(|raw| {
                ConversationId::parse(&raw).map_err(|_| {
                    RequestError::invalid_field(
                        "conversation_id",
                        format!("conversation_id must be a UUID, got {raw:?}"),
                    )
                })
            })
            .transpose()?;
        let parent = present(wire.parent_message_id)
            .map(|raw| {
                MessageId::parse(&raw).map_err(|_| {
                    RequestError::invalid_field(
                        "parent_message_id",
                        format!("parent_message_id must be a UUID, got {raw:?}"),
                    )
                })
            })
            .transpose()?;
        if parent.is_some() && conversation.is_none() {
            return Err(RequestError::invalid_field(
                "parent_message_id",
                "parent_message_id needs the conversation_id it belongs to".into(),
            ));
        }
        Ok(Self {
            content: wire.content,
            conversation,
            parent,
            model: present(wire.model).map(|m| m.trim().to_owned()),
            prompt: present(wire.prompt),
            delta: wire.delta.unwrap_or(false),
            background: wire.background.unwrap_or(false),
            stream: wire.stream.unwrap_or(true),
            cancel_unread: wire.cancel_unread.unwrap_or(false),
        })
    }
}

/// Histories shorter than this are fitted to the budget on the calling thread.
const INLINE_HISTORY_BYTES: usize = 16 * 1024;

/// A turn ready to send: the upstream request, the rows to store, the answer's identity.
pub struct PreparedTurn {
    pub upstream: ChatRequest,
    pub new_turn: NewTurn,
    pub identity: AnswerIdentity,
}

/// `client`: who sends it; it may continue only a conversation it may see, and owns one
/// it starts.
pub async fn prepare(state: &AppState, request: TurnRequest, client: &Client) -> Result<PreparedTurn, ApiError> {
    let TurnRequest {
        content,
        conversation,
        parent,
        model,
        prompt,
        ..
    } = request;
    let preset = match &prompt {
        Some(name) => Some(
            state
                .presets
                .get(name)
                .ok_or_else(|| RequestError::UnknownPrompt(name.clone()))?,
        ),
        None => state.presets.get(crate::prompts::DEFAULT),
    };
    let model = model.unwrap_or_else(|| state.settings.model.clone());
    let time = now();

    let (conversation_id, new_conversation, parent, branch) = match conversation {
        Some(id) => {
            let conversation = state.owned_conversation_having(id, parent, client).await?;
            let parent = parent.unwrap_or(conversation.current_node);
            if conversation.message(parent).is_none() {
                return Err(RequestError::UnknownMessage(parent).into());
            }
            let branch: Vec<Message> = tree::branch(&conversation, parent).into_iter().cloned().collect();
            (id, None, parent, branch)
        }
        None => {
            let root = Message::root(time);
            let parent = root.id;
            (
                ConversationId::new(),
                Some((title_from(&content), root)),
                parent,
                Vec::new(),
            )
        }
    };

    let history_bytes = content.len() + branch.iter().map(|m| m.content.len()).sum::<usize>();
    let user = Message::new(Some(parent), Role::User, content, Status::FinishedSuccessfully, time);
    let mut assistant = Message::new(Some(user.id), Role::Assistant, String::new(), Status::InProgress, time);
    assistant.model = Some(model.clone());

    let budget = Budget {
        context_tokens: state.settings.context_tokens,
        answer_reserve_tokens: state.settings.answer_reserve_tokens,
    };
    let system = preset.map(|p| p.text.clone());
    let new_text = user.content.clone();
    let counted_model = model.clone();
    let assemble = move || {
        let branch: Vec<&Message> = branch.iter().collect();
        let counter = || TokenCounter::for_model(&counted_model);
        history::assemble(system.as_deref(), &branch, &new_text, counter, budget)
    };
    // Tokenizing a long history is CPU work: keep it off the threads that relay tokens.
    // A short one costs less than the hop to the blocking pool.
    let assembled = if history_bytes < INLINE_HISTORY_BYTES {
        assemble()
    } else {
        tokio::task::spawn_blocking(assemble)
            .await
            .map_err(|_| ApiError::Internal("fitting the history into the context window failed"))?
    };
    if assembled.dropped > 0 {
        log::info!(
            "conversation {conversation_id}: left out the {} oldest message(s) to fit {} prompt tokens",
            assembled.dropped,
            assembled.prompt_tokens
        );
    }

    Ok(PreparedTurn {
        identity: AnswerIdentity {
            conversation_id,
            message_id: assistant.id,
            parent_id: user.id,
            model: model.clone(),
            create_time: time,
        },
        upstream: ChatRequest {
            model,
            messages: assembled.messages,
            params: Default::default(),
        },
        new_turn: NewTurn {
            conversation_id,
            new_conversation,
            owner: client.owner().map(str::to_owned),
            user,
            assistant,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(body: &str) -> Result<TurnRequest, RequestError> {
        TurnRequest::parse(body.as_bytes())
    }

    #[test]
    fn the_seed_clients_first_turn_has_empty_ids() {
        let t = parse(r#"{"content":"hi","parent_message_id":"","conversation_id":""}"#).unwrap();
        assert!(t.conversation.is_none() && t.parent.is_none());
        let t = parse(r#"{"content":"hi","parent_message_id":null,"conversation_id":null,"model":""}"#).unwrap();
        assert!(t.conversation.is_none() && t.model.is_none());
    }

    #[test]
    fn syntax_errors_and_field_errors_are_told_apart() {
        assert!(matches!(parse("{"), Err(RequestError::MalformedJson(_))));
        assert!(matches!(parse(r#"{"content":"x"#), Err(RequestError::MalformedJson(_))));
        assert!(matches!(
            parse(r#"{"content":"x"} tail"#),
            Err(RequestError::MalformedJson(_))
        ));
        assert!(matches!(
            parse(r#"{"content": 5}"#),
            Err(RequestError::InvalidField { .. })
        ));
        assert!(matches!(parse(r#"{}"#), Err(RequestError::InvalidField { .. })));
        assert!(matches!(
            parse(r#"{"content":"  "}"#),
            Err(RequestError::InvalidField { .. })
        ));
        assert!(matches!(
            parse(r#"{"content":"x","conversation_id":"nope"}"#),
            Err(RequestError::InvalidField { .. })
        ));
    }

    #[test]
    fn a_wrong_shape_does_not_hide_a_body_that_is_not_json() {
        // The typed parse fails at `[` ("expected a string") long before the end.
        assert!(matches!(parse("[[1, 2"), Err(RequestError::MalformedJson(_))));
        assert!(matches!(
            parse(r#"{"content": 5, "#),
            Err(RequestError::MalformedJson(_))
        ));
        let deep = "[".repeat(100_000);
        assert!(matches!(parse(&deep), Err(RequestError::MalformedJson(_))));
        // Deep but well-formed: the wrong shape, or an unknown field skipped.
        let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse(&closed), Err(RequestError::InvalidField { .. })));
        let nested = format!(r#"{{"content":"x","extra":{}{}}}"#, "[".repeat(1000), "]".repeat(1000));
        assert!(parse(&nested).is_ok());
        assert!(matches!(parse("[1, 2]"), Err(RequestError::InvalidField { .. })));
    }

    #[test]
    fn only_an_object_is_a_turn_and_a_wrong_field_is_named() {
        let shape = |body: &str| match parse(body) {
            Err(RequestError::InvalidField { param, message }) => (param, message),
            other => panic!("{other:?} for {body}"),
        };
        // serde's derived structs also read a struct from an array of its fields.
        for body in [r#"["hello"]"#, r#""hello""#, "null", "5", " true"] {
            let (param, message) = shape(body);
            assert_eq!(param, None, "{body}");
            assert!(
                message.starts_with("the request body must be a JSON object, not "),
                "{message}"
            );
            assert!(!message.contains("Wire"), "{message}");
        }
        let (param, message) = shape(r#"{"content":"hi","model":5}"#);
        assert_eq!(param.as_deref(), Some("model"));
        assert!(
            message.starts_with("model: invalid type: integer `5`, expected a string"),
            "{message}"
        );
        let (param, message) = shape(r#"{"content":"hi","delta":"yes"}"#);
        assert_eq!(param.as_deref(), Some("delta"));
        assert!(message.contains("expected a boolean"), "{message}");
        let (param, message) = shape(r#"{"model":"m"}"#);
        assert_eq!(param, None);
        assert!(message.contains("missing field `content`"), "{message}");
    }

    /// Any JSON value, nested up to a few levels, with the request's own field names
    /// among the keys so that the interesting paths are reached.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let key = prop_oneof![
            Just("content".to_owned()),
            Just("conversation_id".to_owned()),
            Just("parent_message_id".to_owned()),
            Just("model".to_owned()),
            Just("delta".to_owned()),
            Just("background".to_owned()),
            ".{0,8}",
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,40}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic_and_are_a_400_or_422(body in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = TurnRequest::parse(&body) {
                prop_assert!(
                    matches!(e, RequestError::MalformedJson(_) | RequestError::InvalidField { .. }),
                    "{e:?}"
                );
            }
        }

        #[test]
        fn well_formed_json_is_never_a_syntax_error(value in json_value()) {
            let body = value.to_string();
            match TurnRequest::parse(body.as_bytes()) {
                Ok(turn) => prop_assert!(!turn.content.trim().is_empty()),
                Err(e) => prop_assert!(
                    matches!(e, RequestError::InvalidField { .. }),
                    "{e:?} for {body}"
                ),
            }
        }
    }
}
