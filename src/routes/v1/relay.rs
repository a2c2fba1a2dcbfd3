//! The upstream's answer as `/v1` relays it: only the pieces a client sees (content or a
//! finish), with the limits `/conv` answers have: the upstream's longest silence, and the
//! size of the answer's text and, separately, of its reasoning.
//!
//! The finish is passed on last, when the upstream's stream ends: text the hygiene gate
//! held back (it might have been the start of the key) is released only then, and a client
//! must not see content after the finish.
//!
//! Nothing here runs on its own: the relay is read by the response, and dropping it (the
//! client went away) drops the upstream stream, which cancels the upstream request.

use crate::conversation::FinishType;
use crate::upstream::metered::Tally;
use crate::upstream::{Chunk, ChunkStream, UpstreamError, Usage};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub struct Relay {
    stream: ChunkStream,
    /// The upstream's longest silence; any bytes from it count as life.
    idle: Duration,
    heard: Instant,
    /// Due at the end of the silence allowed (see [`poll_quiet`]).
    silence: Pin<Box<Sleep>>,
    max_answer_bytes: usize,
    text_bytes: usize,
    reasoning_bytes: usize,
    /// How the upstream said the answer ends, passed on when its stream ends.
    finish: Option<FinishType>,
    usage: Option<Usage>,
    /// The answer reached its size limit: this error follows the piece cut at the limit.
    cut: Option<UpstreamError>,
    /// Counts the errors raised here (silence, size) for the metrics.
    tally: Tally,
    over: bool,
}

impl Relay {
    pub fn new(stream: ChunkStream, idle: Duration, max_answer_bytes: usize, tally: Tally) -> Self {
        let heard = Instant::now();
        Self {
            stream,
            idle,
            heard,
            silence: Box::pin(tokio::time::sleep_until(heard + idle)),
            max_answer_bytes,
            text_bytes: 0,
            reasoning_bytes: 0,
            finish: None,
            usage: None,
            cut: None,
            tally,
            over: false,
        }
    }

    /// When the upstream last sent anything.
    pub fn heard(&self) -> Instant {
        self.heard
    }

    /// The answer's token counts, as the upstream last reported them.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The next piece with content or a finish; `None` once the answer has ended well.
    /// Cancel-safe, as [`Relay::poll_next`] is.
    pub async fn next(&mut self) -> Option<Result<Chunk, UpstreamError>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// The next piece with content or a finish; `None` once the answer has ended well. The
    /// silence is looked at only while the upstream has nothing to give.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, UpstreamError>>> {
        if let Some(error) = self.cut.take() {
            return Poll::Ready(Some(Err(error)));
        }
        while !self.over {
            let item = match self.stream.as_mut().poll_next(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => {
                    ready!(poll_quiet(&mut self.silence, self.heard, self.idle, cx));
                    // A silence after the finish only held back the usage or `[DONE]`.
                    return Poll::Ready(self.end(UpstreamError::IdleTimeout(self.idle)));
                }
            };
            self.heard = Instant::now();
            let mut chunk = match item {
                Some(Ok(chunk)) => chunk,
                Some(Err(error)) => {
                    self.over = true;
                    return Poll::Ready(Some(Err(error)));
                }
                None => return Poll::Ready(self.end(UpstreamError::Truncated)),
            };
            self.usage = chunk.usage.or(self.usage);
            let finishing = chunk.finish.take().or(self.finish);
            if self.cut_at_limit(&mut chunk, finishing.is_some()) {
                self.over = true;
                if !chunk.has_content() {
                    return Poll::Ready(self.cut.take().map(Err));
                }
                return Poll::Ready(Some(Ok(chunk)));
            }
            self.finish = finishing;
            if chunk.has_content() {
                return Poll::Ready(Some(Ok(chunk)));
            }
        }
        Poll::Ready(None)
    }

    /// The upstream stopped (`why`): the finish if it had come, else the error.
    fn end(&mut self, why: UpstreamError) -> Option<Result<Chunk, UpstreamError>> {
        self.over = true;
        Some(match self.finish.take() {
            Some(finish) => Ok(Chunk {
                finish: Some(finish),
                ..Chunk::default()
            }),
            None => Err(self.tally.raised(why)),
        })
    }

    /// Cuts the chunk's text and reasoning at their limits; true if either reached it (the
    /// answer ends there, with `TooLarge`), as `/conv` cuts an answer.
    fn cut_at_limit(&mut self, chunk: &mut Chunk, finishing: bool) -> bool {
        let limit = self.max_answer_bytes;
        let text = cut(&mut chunk.text, &mut self.text_bytes, limit, finishing);
        let reasoning = cut(&mut chunk.reasoning, &mut self.reasoning_bytes, limit, finishing);
        if text || reasoning {
            self.cut = Some(self.tally.raised(UpstreamError::TooLarge { limit }));
        }
        text || reasoning
    }
}

/// Ready once `allowed` has passed since `since`. `timer` is due at the end of a quiet
/// that began earlier: one timer for a whole answer, moved on only when it fires (an event
/// just notes when it came), so that an event costs no timer of its own.
pub fn poll_quiet(timer: &mut Pin<Box<Sleep>>, since: Instant, allowed: Duration, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        ready!(timer.as_mut().poll(cx));
        let due = since + allowed;
        if due <= Instant::now() {
            return Poll::Ready(());
        }
        timer.as_mut().reset(due);
    }
}

/// Adds `piece` to a text of `so_far` bytes, cut at `limit`; true if the text reached it
/// (exactly reaching it on the finishing piece is no overflow).
fn cut(piece: &mut String, so_far: &mut usize, limit: usize, finishing: bool) -> bool {
    let room = limit.saturating_sub(*so_far);
    let len = piece.len();
    let too_large = len > room || (len == room && len > 0 && !finishing);
    if too_large {
        let mut at = room.min(len);
        while !piece.is_char_boundary(at) {
            at -= 1;
        }
        piece.truncate(at);
    }
    *so_far += piece.len();
    too_large
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(items: Vec<Result<Chunk, UpstreamError>>, limit: usize) -> Relay {
        let metrics = std::sync::Arc::new(crate::upstream::metered::UpstreamMetrics::new().unwrap());
        let tally = Tally::new(metrics, "test".into());
        Relay::new(
            Box::pin(futures::stream::iter(items)),
            Duration::from_secs(5),
            limit,
            tally,
        )
    }

    async fn all(mut relay: Relay) -> Vec<Result<Chunk, UpstreamError>> {
        let mut out = Vec::new();
        while let Some(item) = relay.next().await {
            out.push(item);
        }
        out
    }

    #[tokio::test]
    async fn empty_pieces_are_skipped_the_usage_is_kept_and_the_finish_comes_last() {
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
        };
        let finish = Chunk {
            finish: Some(FinishType::Stop),
            ..Chunk::default()
        };
        let usage_chunk = Chunk {
            usage: Some(usage),
            ..Chunk::default()
        };
        let late = Chunk::text("b");
        let items = vec![
            Ok(Chunk::default()),
            Ok(Chunk::text("a")),
            Ok(finish),
            Ok(usage_chunk),
            Ok(late),
        ];
        let mut relay = relay(items, 100);
        assert_eq!(relay.next().await.unwrap().unwrap().text, "a");
        assert_eq!(
            relay.next().await.unwrap().unwrap().text,
            "b",
            "text released late comes first"
        );
        assert_eq!(relay.next().await.unwrap().unwrap().finish, Some(FinishType::Stop));
        assert!(relay.next().await.is_none());
        assert_eq!(relay.usage(), Some(usage));
    }

    #[tokio::test]
    async fn an_answer_without_a_finish_is_truncated() {
        let out = all(relay(vec![Ok(Chunk::text("a"))], 100)).await;
        assert!(matches!(out.last(), Some(Err(UpstreamError::Truncated))));
    }

    #[tokio::test]
    async fn text_is_cut_at_the_limit_on_a_char_boundary_and_the_answer_ends() {
        let out = all(relay(
            vec![Ok(Chunk::text("ab")), Ok(Chunk::text("cé")), Ok(Chunk::text("z"))],
            3,
        ))
        .await;
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[1].as_ref().unwrap().text, "c");
        assert!(matches!(out[2], Err(UpstreamError::TooLarge { limit: 3 })));
    }
}
