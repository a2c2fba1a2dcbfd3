//! What the upstream sees of a conversation: the preset's system message, the branch from
//! the root to the parent, and the new user turn, fitted into the model's context window.

use crate::conversation::{Message, Role};
use crate::upstream::ChatMessage;
use tiktoken_rs::{CoreBPE, tokenizer::Tokenizer};

/// Tokens the chat format adds around every message, and once to prime the reply
/// (OpenAI's published accounting for its chat models).
const PER_MESSAGE: usize = 4;
const REPLY_PRIMING: usize = 3;

/// The context window, and the part of it kept free for the answer.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub context_tokens: usize,
    pub answer_reserve_tokens: usize,
}

impl Budget {
    fn for_prompt(self) -> usize {
        self.context_tokens.saturating_sub(self.answer_reserve_tokens)
    }
}

/// Counts tokens with the model family's real tokenizer when it has a public one (OpenAI's
/// GPT and o-series models), and otherwise estimates one token per three bytes of UTF-8:
/// above the real count for English (about four bytes a token) and about right for CJK
/// text (three bytes a character, about a token each), so the estimate errs on the side
/// of dropping a turn rather than overflowing the window.
#[derive(Clone, Copy)]
pub enum TokenCounter {
    Bpe(&'static CoreBPE),
    Estimate,
}

impl TokenCounter {
    pub fn for_model(model: &str) -> Self {
        use tiktoken_rs::{cl100k_base_singleton, o200k_base_singleton};
        // Model names arrive with provider prefixes (`openai/gpt-4o`) from routers.
        let bare = model.rsplit('/').next().unwrap_or(model);
        match tiktoken_rs::tokenizer::get_tokenizer(bare) {
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => Self::Bpe(o200k_base_singleton()),
            Some(Tokenizer::Cl100kBase) => Self::Bpe(cl100k_base_singleton()),
            _ => Self::Estimate,
        }
    }

    pub fn count(&self, text: &str) -> usize {
        match self {
            Self::Bpe(bpe) => bpe.encode_ordinary(text).len(),
            Self::Estimate => text.len().div_ceil(3),
        }
    }
}

/// The upstream `messages`, and how many older messages were left out to fit.
#[derive(Debug)]
pub struct Assembled {
    pub messages: Vec<ChatMessage>,
    pub dropped: usize,
    /// The prompt's tokens, or an upper bound on them when they were not counted.
    pub prompt_tokens: usize,
}

/// Builds the upstream messages. The system message and the new turn are always kept;
/// the oldest history goes first, a user turn and its answer together, so what remains
/// still starts with a user message.
///
/// A token is at least one byte, so a history whose bytes fit the budget fits without
/// counting: `counter` (which may load a tokenizer of tens of MiB) is only called for a
/// history that nears the budget.
pub fn assemble(
    system: Option<&str>,
    branch: &[&Message],
    new_turn: &str,
    counter: impl FnOnce() -> TokenCounter,
    budget: Budget,
) -> Assembled {
    let history: Vec<ChatMessage> = branch
        .iter()
        .filter(|m| m.role != Role::Root && !m.content.is_empty())
        .map(|m| ChatMessage::new(m.role.as_str(), &m.content))
        .collect();
    let most = |text: &str| PER_MESSAGE + text.len();
    let bound = REPLY_PRIMING
        + system.map_or(0, most)
        + most(new_turn)
        + history.iter().map(|m| most(&m.text())).sum::<usize>();
    if bound <= budget.for_prompt() {
        let mut messages = Vec::with_capacity(history.len() + 2);
        messages.extend(system.map(|s| ChatMessage::new("system", s)));
        messages.extend(history);
        messages.push(ChatMessage::new("user", new_turn));
        return Assembled {
            messages,
            dropped: 0,
            prompt_tokens: bound,
        };
    }
    let counter = counter();
    let cost = |text: &str| PER_MESSAGE + counter.count(text);
    let fixed = REPLY_PRIMING + system.map_or(0, cost) + cost(new_turn);
    let costs: Vec<usize> = history.iter().map(|m| cost(&m.text())).collect();
    let mut total = fixed + costs.iter().sum::<usize>();

    let mut start = 0;
    while total > budget.for_prompt() && start < history.len() {
        total -= costs[start];
        start += 1;
        while start < history.len() && history[start].role == "assistant" {
            total -= costs[start];
            start += 1;
        }
    }

    let mut messages = Vec::with_capacity(history.len() - start + 2);
    if let Some(system) = system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.extend(history.into_iter().skip(start));
    messages.push(ChatMessage::new("user", new_turn));
    Assembled {
        messages,
        dropped: start,
        prompt_tokens: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::{Message, Status};
    use std::cell::Cell;

    fn chain(texts: &[(&str, Role)]) -> Vec<Message> {
        let root = Message::root(0.0);
        let mut parent = Some(root.id);
        let mut out = vec![root];
        for (text, role) in texts {
            let m = Message::new(parent, *role, (*text).to_owned(), Status::FinishedSuccessfully, 0.0);
            parent = Some(m.id);
            out.push(m);
        }
        out
    }

    fn roles(a: &Assembled) -> Vec<&str> {
        a.messages.iter().map(|m| m.role.as_str()).collect()
    }

    #[test]
    fn everything_fits_in_a_large_window() {
        let msgs = chain(&[("q1", Role::User), ("a1", Role::Assistant)]);
        let branch: Vec<&Message> = msgs.iter().collect();
        let budget = Budget {
            context_tokens: 1000,
            answer_reserve_tokens: 100,
        };
        let a = assemble(Some("be brief"), &branch, "q2", || TokenCounter::Estimate, budget);
        assert_eq!(roles(&a), ["system", "user", "assistant", "user"]);
        assert_eq!(a.dropped, 0);
    }

    #[test]
    fn oldest_turns_go_first_and_the_system_message_and_new_turn_stay() {
        let long = "x".repeat(300); // 100 estimated tokens each
        let msgs = chain(&[
            (&long, Role::User),
            (&long, Role::Assistant),
            (&long, Role::User),
            (&long, Role::Assistant),
        ]);
        let branch: Vec<&Message> = msgs.iter().collect();
        // room for the system message, the new turn and one old pair
        let budget = Budget {
            context_tokens: 350,
            answer_reserve_tokens: 100,
        };
        let a = assemble(Some("sys"), &branch, "new", || TokenCounter::Estimate, budget);
        assert_eq!(roles(&a), ["system", "user", "assistant", "user"]);
        assert_eq!(a.dropped, 2);
        assert_eq!(a.messages.last().unwrap().content, "new");
        assert!(a.prompt_tokens <= 250);
    }

    #[test]
    fn a_turn_too_large_for_the_window_is_still_sent_alone() {
        let msgs = chain(&[("q1", Role::User), ("a1", Role::Assistant)]);
        let branch: Vec<&Message> = msgs.iter().collect();
        let budget = Budget {
            context_tokens: 20,
            answer_reserve_tokens: 10,
        };
        let a = assemble(
            Some("sys"),
            &branch,
            &"y".repeat(3000),
            || TokenCounter::Estimate,
            budget,
        );
        assert_eq!(roles(&a), ["system", "user"]);
    }

    #[test]
    fn the_tokenizer_is_only_loaded_for_a_history_that_nears_the_budget() {
        let msgs = chain(&[("q1", Role::User), ("a1", Role::Assistant)]);
        let branch: Vec<&Message> = msgs.iter().collect();
        let loaded = Cell::new(0);
        let counter = || {
            loaded.set(loaded.get() + 1);
            TokenCounter::Estimate
        };
        let roomy = Budget {
            context_tokens: 1000,
            answer_reserve_tokens: 100,
        };
        let a = assemble(Some("sys"), &branch, "q2", counter, roomy);
        assert_eq!((a.messages.len(), loaded.get()), (4, 0));
        let tight = Budget {
            context_tokens: 25,
            answer_reserve_tokens: 10,
        };
        let counter = || {
            loaded.set(loaded.get() + 1);
            TokenCounter::Estimate
        };
        assemble(Some("sys"), &branch, "q2", counter, tight);
        assert_eq!(loaded.get(), 1);
    }

    #[test]
    fn openai_models_are_counted_with_their_tokenizer() {
        let counter = TokenCounter::for_model("gpt-4o-mini");
        assert!(matches!(counter, TokenCounter::Bpe(_)));
        assert_eq!(counter.count("hello world"), 2);
        assert!(matches!(TokenCounter::for_model("llama3.1:8b"), TokenCounter::Estimate));
    }
}
