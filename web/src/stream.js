// One chat turn over POST /conv, read with sse.js exactly as the seed client does:
// `new SSE(url, {headers, payload})`, 'message' events, `[DONE]` skipped, every JSON frame
// carrying the whole answer so far in `message.content.parts[0]`.
import { SSE } from 'sse.js'
import { apiUrl, ApiError, errorFromResponse } from './api.js'

/**
 * Starts a turn. `onFrame(frame)` is called for every JSON frame, in order.
 * Returns `{ stop, done }`: `stop()` closes the connection (the gateway then cancels the
 * upstream and stores the partial answer); `done` resolves once the stream is over with
 * `{ outcome: 'finished' | 'stopped' | 'failed', error?: ApiError, frames: number }`.
 */
export function streamTurn(body, onFrame) {
  const source = new SSE(apiUrl('conv'), {
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
    payload: JSON.stringify(body),
    start: false,
  })

  let frames = 0
  let stopped = false
  let failure = null // a Promise<ApiError> once something went wrong
  let resolveDone
  const done = new Promise((resolve) => (resolveDone = resolve))

  source.addEventListener('message', (e) => {
    if (!e.data || e.data === '[DONE]') return
    let frame
    try {
      frame = JSON.parse(e.data)
    } catch {
      return // not a frame of ours; the contract only sends JSON or [DONE]
    }
    if (frame && frame.message) {
      frames += 1
      onFrame(frame)
    }
  })

  source.addEventListener('error', (e) => {
    if (stopped || failure) return
    failure = describeFailure(e, xhr, frames)
  })

  let settled = false
  source.addEventListener('readystatechange', async (e) => {
    if (e.readyState !== SSE.CLOSED || settled) return
    settled = true
    if (stopped) return resolveDone({ outcome: 'stopped', frames })
    if (failure) return resolveDone({ outcome: 'failed', error: await failure, frames })
    resolveDone({ outcome: 'finished', frames })
  })

  source.stream()
  // sse.js forgets its XMLHttpRequest as soon as it reports a failure; keep our own
  // handle so the whole error body and the Retry-After header can still be read.
  const xhr = source.xhr

  return {
    done,
    stop() {
      if (settled) return
      stopped = true
      source.close()
    },
  }
}

/** Reads status, body and Retry-After of a failed request, waiting for the body if needed. */
async function describeFailure(e, xhr, frames) {
  // An SSE frame named `error` (not part of the contract, but tolerated) has no status.
  if (e.responseCode === undefined && typeof e.data === 'string') {
    return errorFromResponse(500, e.data, null)
  }
  if (xhr && xhr.readyState !== XMLHttpRequest.DONE) {
    await new Promise((resolve) => xhr.addEventListener('loadend', resolve, { once: true }))
  }
  const status = xhr ? xhr.status : e.responseCode || 0
  if (status >= 200 && status < 300) {
    return new ApiError(
      frames > 0 ? 'The connection was lost before the answer finished.' : 'The stream failed.',
      { status },
    )
  }
  const body = (xhr && xhr.responseText) || (typeof e.data === 'string' ? e.data : '')
  const retryAfter = xhr && status ? xhr.getResponseHeader('Retry-After') : null
  return errorFromResponse(status, body, retryAfter)
}
