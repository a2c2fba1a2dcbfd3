// Plain JSON calls to the gateway. Paths are relative to the page, so the page works
// both at `/` and behind a reverse proxy that mounts the gateway under a sub-path.

export function apiUrl(path) {
  return new URL(path, document.baseURI).toString()
}

// The client key (when the gateway asks for one), kept in this browser so that a reload
// does not ask again. Memory stands in when storage is off (private mode).
const KEY_ITEM = 'chatgate.apiKey'
let keyInMemory = ''
let onUnauthorized = () => {}

export function clientKey() {
  try {
    return localStorage.getItem(KEY_ITEM) || keyInMemory
  } catch {
    return keyInMemory
  }
}

export function setClientKey(key) {
  keyInMemory = key
  try {
    if (key) localStorage.setItem(KEY_ITEM, key)
    else localStorage.removeItem(KEY_ITEM)
  } catch {
    // private mode: the key lasts until the tab closes
  }
}

/** `Authorization: Bearer KEY` when a key is set; sent on every call, streams included. */
export function authHeaders() {
  const key = clientKey()
  return key ? { Authorization: `Bearer ${key}` } : {}
}

/** `fn()` runs whenever the gateway answers 401: the key is missing or no longer valid. */
export function whenUnauthorized(fn) {
  onUnauthorized = fn
}

/** An error the gateway (or the network) reported, with what a person should read. */
export class ApiError extends Error {
  constructor(message, { status = 0, type = '', code = '', retryAfter = null } = {}) {
    super(message)
    this.status = status
    this.type = type
    this.code = code
    this.retryAfter = retryAfter
  }
}

/**
 * Turns a non-2xx answer into an ApiError. `body` is the raw text; the gateway sends
 * `{"error":{"message","type","code"}}`, anything else is shown as a generic failure.
 */
export function errorFromResponse(status, body, retryAfterHeader) {
  let detail = null
  try {
    detail = JSON.parse(body || '')?.error ?? null
  } catch {
    detail = null
  }
  if (status === 401) onUnauthorized()
  const retryAfter = parseRetryAfter(retryAfterHeader)
  let message = detail?.message || fallbackMessage(status)
  if (status === 429) {
    message += retryAfter != null ? ` Try again in ${retryAfter} s.` : ' Try again in a moment.'
  }
  return new ApiError(message, {
    status,
    type: detail?.type || '',
    code: detail?.code != null ? String(detail.code) : '',
    retryAfter,
  })
}

function parseRetryAfter(value) {
  if (!value) return null
  const seconds = Number(value)
  if (Number.isFinite(seconds)) return Math.max(0, Math.round(seconds))
  const at = Date.parse(value)
  return Number.isNaN(at) ? null : Math.max(0, Math.round((at - Date.now()) / 1000))
}

function fallbackMessage(status) {
  if (status === 0) return 'Could not reach the gateway. Is it running?'
  if (status === 401) return 'This gateway needs a client key.'
  if (status === 404) return 'Not found.'
  if (status === 413) return 'That message is too large.'
  if (status === 429) return 'The model is rate limited.'
  if (status >= 500) return `The gateway failed (HTTP ${status}).`
  return `The request failed (HTTP ${status}).`
}

async function request(method, path, body) {
  const init = { method, headers: { Accept: 'application/json', ...authHeaders() } }
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  let response
  try {
    response = await fetch(apiUrl(path), init)
  } catch {
    throw errorFromResponse(0, '', null)
  }
  const text = await response.text()
  if (!response.ok) {
    throw errorFromResponse(response.status, text, response.headers.get('Retry-After'))
  }
  return text ? JSON.parse(text) : null
}

const convPath = (id) => `conv/${encodeURIComponent(id)}`

export const api = {
  config: () => request('GET', 'config'),
  prompts: () => request('GET', 'prompts'),
  conversations: () => request('GET', 'conversations'),
  conversation: (id) => request('GET', convPath(id)),
  deleteConversation: (id) => request('DELETE', convPath(id)),
  /**
   * Sends a turn without reading its answer (`background: true`): resolves with
   * `{conversation_id, message_id, parent_message_id, stream_url}` once the upstream has
   * accepted it, so the page knows the ids before the first word; a refusal rejects with
   * the same statuses a streamed turn gets. `cancel_unread`: like a streamed turn, the
   * answer is cancelled when no tab has read it for the gateway's detached grace.
   */
  startTurn: (body) => request('POST', 'conv', { ...body, background: true, cancel_unread: true }),
  /** Ends the live answer `messageId`; resolves with `{stopped}`. */
  stopAnswer: (id, messageId) => request('POST', `${convPath(id)}/stop`, { message_id: messageId }),
}

/** Where answer `messageId` of conversation `id` can be followed (GET, text/event-stream). */
export const answerStreamPath = (id, messageId) =>
  `${convPath(id)}/stream?message_id=${encodeURIComponent(messageId)}`
