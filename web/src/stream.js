// Following an answer over `GET /conv/{id}/stream`, read with sse.js (the client the seed
// uses) as a GET. An answer runs in the gateway, not in a connection: when a connection
// drops, the page connects again with the id of the last frame it saw and the gateway goes
// on from there. Every JSON frame carries the whole answer so far in
// `message.content.parts[0]`, so a resumed stream simply replaces the text.
import { SSE } from 'sse.js'
import { apiUrl, ApiError, authHeaders, errorFromResponse } from './api.js'

/** Until a stream's own `retry:` says otherwise (the gateway sends 1000). */
const DEFAULT_RETRY_MS = 1000
/** Connections in a row that bring no new frame before the page gives up. */
const MAX_EMPTY_TRIES = 5
/** A dropped connection (0) or a proxy in front of a restarting gateway: worth another try. */
const TRANSIENT = new Set([0, 502, 503, 504])

/**
 * Follows the answer at `path` (see `answerStreamPath`). `onFrame(frame)` is called for
 * every JSON frame, in order. Returns `{ close, done }`: `close()` stops reading (the answer
 * goes on in the gateway); `done` resolves once the answer has ended or reading stopped,
 * with `{ outcome: 'finished' | 'failed' | 'closed', error?: ApiError, frames: number }`.
 */
export function followAnswer(path, onFrame) {
  const cursor = { lastEventId: '', frames: 0, retryMs: DEFAULT_RETRY_MS }
  let closed = false
  let connection = null
  let wake = null

  const run = async () => {
    let emptyTries = 0
    for (;;) {
      const before = cursor.frames
      connection = connect(path, cursor, onFrame)
      const end = await connection.over
      if (closed) return { outcome: 'closed', frames: cursor.frames }
      if (end.ended) return { outcome: 'finished', frames: cursor.frames }
      const status = end.xhr.status
      if (!TRANSIENT.has(status) && !(status >= 200 && status < 300)) {
        return { outcome: 'failed', error: await refusalOf(end.xhr), frames: cursor.frames }
      }
      emptyTries = cursor.frames > before ? 0 : emptyTries + 1
      if (emptyTries > MAX_EMPTY_TRIES) {
        const error = new ApiError(
          cursor.frames > 0 ? 'The connection was lost before the answer finished.' : 'Could not reach the gateway. Is it running?',
          { status },
        )
        return { outcome: 'failed', error, frames: cursor.frames }
      }
      await new Promise((resolve) => {
        wake = resolve
        setTimeout(resolve, cursor.retryMs)
      })
      if (closed) return { outcome: 'closed', frames: cursor.frames }
    }
  }

  return {
    done: run(),
    close() {
      closed = true
      connection?.source.close()
      wake?.()
    },
  }
}

/**
 * One connection: resolves `over` with `{ ended, xhr }` when it closes, `ended` meaning the
 * answer's `[DONE]` (or the `close` event after it) arrived. A `retry:` block carries no
 * data, so sse.js dispatches nothing for it and only keeps its delay, which we read back.
 */
function connect(path, cursor, onFrame) {
  const url = new URL(apiUrl(path))
  if (cursor.lastEventId) url.searchParams.set('last_event_id', cursor.lastEventId)
  const source = new SSE(url.toString(), {
    method: 'GET',
    // sse.js reads with XMLHttpRequest, which can send the key as a header: it never needs
    // `?api_key=` (that is for EventSource), so the key stays out of URLs.
    headers: { Accept: 'text/event-stream', ...authHeaders() },
    reconnectDelay: cursor.retryMs,
    start: false,
  })

  let ended = false
  source.addEventListener('message', (e) => {
    if (e.data === '[DONE]') {
      ended = true
      return
    }
    const frame = parseFrame(e.data)
    if (!frame) return
    if (e.lastEventId) cursor.lastEventId = e.lastEventId
    cursor.frames += 1
    onFrame(frame)
  })
  source.addEventListener('close', () => (ended = true))

  // sse.js forgets its XMLHttpRequest as soon as it reports a failure; keep our own
  // handle so the status, the whole error body and Retry-After can still be read.
  let xhr = null
  const over = new Promise((resolve) => {
    source.addEventListener('readystatechange', (e) => {
      if (e.readyState !== SSE.CLOSED) return
      cursor.retryMs = source.reconnectDelay
      resolve({ ended, xhr })
    })
  })
  source.stream()
  xhr = source.xhr
  return { source, over }
}

function parseFrame(data) {
  if (!data) return null
  try {
    const frame = JSON.parse(data)
    return frame && frame.message ? frame : null
  } catch {
    return null // not a frame of ours; the contract only sends JSON, [DONE] and close
  }
}

/** Reads status, body and Retry-After of a refused stream, waiting for the body if needed. */
async function refusalOf(xhr) {
  if (xhr.readyState !== XMLHttpRequest.DONE) {
    await new Promise((resolve) => xhr.addEventListener('loadend', resolve, { once: true }))
  }
  return errorFromResponse(xhr.status, xhr.responseText, xhr.getResponseHeader('Retry-After'))
}
