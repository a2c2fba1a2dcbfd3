// The page's state and everything that changes it: which conversation is open, its tree,
// the turn being streamed, the sidebar list. Components read `state` and call `actions`.
import { reactive } from 'vue'
import { api } from './api.js'
import { streamTurn } from './stream.js'
import * as tree from './tree.js'

const stored = (key, fallback = '') => {
  try {
    return localStorage.getItem(key) ?? fallback
  } catch {
    return fallback
  }
}
const store = (key, value) => {
  try {
    localStorage.setItem(key, value)
  } catch {
    // private mode: settings simply do not persist
  }
}

export const state = reactive({
  config: null,
  prompts: [],
  conversations: [],
  listError: null,
  conversationId: null,
  title: '',
  nodes: {},
  leafId: null,
  loading: false,
  notice: null, // a page-level message, e.g. a conversation that no longer exists
  streaming: null, // { stop } while a turn is being streamed
  draft: null, // { text } to put back into the composer
  preset: stored('chatgate.preset'),
  model: stored('chatgate.model'),
})

export const setPreset = (value) => store('chatgate.preset', (state.preset = value))
export const setModel = (value) => store('chatgate.model', (state.model = value))

const conversationFromHash = () => {
  const match = /^#\/c\/([^/?#]+)/.exec(location.hash)
  return match ? decodeURIComponent(match[1]) : null
}

let openToken = 0
let turnCounter = 0

async function load() {
  const [config, prompts] = await Promise.allSettled([api.config(), api.prompts()])
  if (config.status === 'fulfilled') state.config = config.value
  if (prompts.status === 'fulfilled') state.prompts = prompts.value?.items || []
  const known = state.prompts.some((p) => p.name === state.preset && p.name !== 'default')
  if (state.preset && !known) setPreset('')
}

async function refreshList() {
  try {
    const list = await api.conversations()
    state.conversations = list?.items || []
    state.listError = null
  } catch (error) {
    state.listError = error.message
  }
}

/** The one conversation that appeared in the list since `known` was taken, if any. */
async function newConversationSince(known) {
  await refreshList()
  const added = state.conversations.filter((c) => !known.has(c.conversation_id))
  return added.length === 1 ? added[0].conversation_id : null
}

function stopStreaming() {
  if (state.streaming) state.streaming.stop()
}

function reset() {
  state.conversationId = null
  state.title = ''
  state.nodes = {}
  state.leafId = null
}

async function open(id) {
  stopStreaming()
  const token = ++openToken
  state.notice = null
  state.loading = true
  if (state.conversationId !== id) {
    reset()
    state.conversationId = id
  }
  try {
    const conv = await api.conversation(id)
    if (token !== openToken) return
    if (conversationFromHash() !== id) history.replaceState(null, '', `#/c/${encodeURIComponent(id)}`)
    const nodes = tree.fromMapping(conv.mapping)
    state.nodes = nodes
    state.title = conv.title || ''
    state.leafId = nodes[conv.current_node]
      ? conv.current_node
      : tree.latestLeaf(nodes, tree.rootId(nodes))
  } catch (error) {
    if (token !== openToken) return
    reset()
    state.notice = error.status === 404 ? 'That conversation no longer exists.' : error.message
    history.replaceState(null, '', '#/')
  } finally {
    if (token === openToken) state.loading = false
  }
}

/** Re-reads the open conversation after a turn, keeping what only the page knows. */
async function refreshTree(id) {
  try {
    const conv = await api.conversation(id)
    if (state.conversationId !== id || state.streaming) return
    const merged = tree.merge(state.nodes, tree.fromMapping(conv.mapping))
    if (!merged[state.leafId]) return
    state.nodes = merged
    state.title = conv.title || state.title
  } catch {
    // the page keeps its own copy; the next open reads the server's again
  }
}

function newChat() {
  stopStreaming()
  openToken++
  reset()
  state.loading = false
  state.notice = null
  if (location.hash && location.hash !== '#/') history.pushState(null, '', '#/')
}

function onHashChange() {
  const id = conversationFromHash()
  if (id === state.conversationId) return
  if (id) open(id)
  else newChat()
}

/** Drops turns that never reached the gateway; sending again replaces them. */
function pruneFailed(nodes) {
  for (const node of Object.values(nodes)) {
    if (!node.failed || !nodes[node.id]) continue
    if (state.leafId === node.id) state.leafId = tree.role(nodes[node.parent]) ? node.parent : null
    tree.prune(nodes, node.id)
  }
}

const messageOf = (role, content, status) => ({
  id: null,
  author: { role },
  content: { content_type: 'text', parts: [content] },
  status,
  metadata: {},
})

/** Where a new message goes when no parent is named: the end of the shown branch. */
function defaultParent(nodes) {
  if (state.leafId && nodes[state.leafId]) return state.leafId
  const root = tree.rootId(nodes)
  if (root) return root
  const id = tree.tempId('root')
  nodes[id] = { id, parent: null, children: [], message: null }
  return id
}

/**
 * Sends `content` as a user message under `parentId` (default: the end of the shown
 * branch) and streams the answer into the tree.
 */
async function send(content, parentId) {
  if (state.streaming || !content.trim()) return false
  const nodes = state.nodes
  pruneFailed(nodes)
  const parent = parentId ?? defaultParent(nodes)
  const ids = { user: tree.tempId('user'), assistant: tree.tempId('assistant') }
  tree.attach(nodes, { id: ids.user, parent, children: [], message: messageOf('user', content, 'finished_successfully') })
  tree.attach(nodes, { id: ids.assistant, parent: ids.user, children: [], message: messageOf('assistant', '', 'in_progress') })
  state.leafId = ids.assistant
  state.notice = null

  const body = {
    content,
    conversation_id: state.conversationId || '',
    parent_message_id: tree.isTemp(parent) ? '' : parent,
  }
  if (state.model.trim()) body.model = state.model.trim()
  if (state.preset) body.prompt = state.preset

  const known = new Set(state.conversations.map((c) => c.conversation_id))
  const turn = { nodes, ids, content, parent, known, conversationId: state.conversationId }
  const stream = streamTurn(body, (frame) => applyFrame(turn, frame))
  const turnId = ++turnCounter
  state.streaming = { stop: stream.stop, turnId }
  const result = await stream.done
  if (state.streaming?.turnId === turnId) state.streaming = null
  await settle(turn, result)
  return true
}

/** One frame of the answer: learn the ids the gateway chose, show the text so far. */
function applyFrame(turn, frame) {
  const { nodes, ids } = turn
  const visible = nodes === state.nodes
  if (!turn.conversationId && frame.conversation_id) {
    turn.conversationId = frame.conversation_id
    if (visible) {
      state.conversationId = turn.conversationId
      history.replaceState(null, '', `#/c/${encodeURIComponent(turn.conversationId)}`)
      const title = turn.content.slice(0, 60)
      state.conversations.unshift({ conversation_id: turn.conversationId, title, update_time: Date.now() / 1000 })
    }
  }
  const userId = frame.message.metadata?.parent_id
  if (userId && userId !== ids.user) {
    tree.rename(nodes, ids.user, userId)
    ids.user = userId
  }
  if (frame.message.id && frame.message.id !== ids.assistant) {
    tree.rename(nodes, ids.assistant, frame.message.id)
    if (visible && state.leafId === ids.assistant) state.leafId = frame.message.id
    ids.assistant = frame.message.id
  }
  const node = nodes[ids.assistant]
  if (!node) return
  node.message = frame.message
  if (frame.error) node.localError = { message: frame.error.message || 'The model failed mid-answer.' }
}

/** After the stream: mark how the turn ended, then re-read what the gateway stored. */
async function settle(turn, result) {
  const { nodes, ids, parent, conversationId } = turn
  const visible = nodes === state.nodes
  if (result.frames === 0 && result.outcome === 'stopped') {
    // Stopped before the first word. The gateway stores the question with an empty,
    // stopped answer once the upstream has it, but no frame told us the ids: read them back.
    await new Promise((r) => setTimeout(r, 400))
    const stored = conversationId || (await newConversationSince(turn.known))
    if (stored && visible && nodes === state.nodes) return open(stored)
    // Nothing was stored: take the message back into the composer.
    tree.prune(nodes, ids.user)
    if (visible) {
      state.leafId = tree.role(nodes[parent]) ? parent : null
      state.draft = { text: turn.content }
    }
  } else if (result.frames === 0 && result.outcome === 'failed') {
    // Refused before the answer began: the question stays, with the reason and Retry.
    tree.prune(nodes, ids.assistant)
    if (nodes[ids.user]) nodes[ids.user].failed = { message: result.error.message, status: result.error.status }
    if (visible) state.leafId = ids.user
    return
  } else {
    const answer = nodes[ids.assistant]
    if (answer && answer.message.status === 'in_progress') {
      if (result.outcome === 'stopped') answer.message.status = 'finished_partial_completion'
      else if (result.outcome === 'failed') answer.localError = { message: result.error.message }
      else answer.localError = { message: 'The answer ended before it was complete.' }
    }
    // After Stop the gateway is still storing the partial answer; give it a moment.
    if (result.outcome === 'stopped') await new Promise((r) => setTimeout(r, 400))
  }
  if (conversationId && nodes === state.nodes) await refreshTree(conversationId)
  refreshList()
}

/** A new answer to the same question: the same user text again, as a sibling branch. */
async function regenerate(assistantId) {
  const user = state.nodes[state.nodes[assistantId]?.parent]
  if (!user) return
  if (tree.isTemp(user.parent) && state.conversationId) await refreshTree(state.conversationId)
  return send(tree.text(user), state.nodes[user.id]?.parent)
}

/** The edited text as a new user message beside the old one. */
function editAndResend(userId, content) {
  const user = state.nodes[userId]
  if (!user) return
  return send(content, user.parent)
}

/** Sends a turn that never reached the gateway once more. */
function retry(userId) {
  const user = state.nodes[userId]
  if (!user) return
  const { parent } = user
  tree.prune(state.nodes, userId)
  state.leafId = state.nodes[parent]?.message ? parent : null
  return send(tree.text(user), tree.isTemp(parent) ? undefined : parent)
}

function switchBranch(siblingId) {
  if (state.streaming || !state.nodes[siblingId]) return
  state.leafId = tree.latestLeaf(state.nodes, siblingId)
}

async function remove(id) {
  try {
    await api.deleteConversation(id)
  } catch (error) {
    if (error.status !== 404) {
      state.notice = `Could not delete: ${error.message}`
      return
    }
  }
  state.conversations = state.conversations.filter((c) => c.conversation_id !== id)
  if (state.conversationId === id) newChat()
  refreshList()
}

function start() {
  window.addEventListener('hashchange', onHashChange)
  window.addEventListener('popstate', onHashChange)
  load()
  refreshList()
  const id = conversationFromHash()
  if (id) open(id)
}

export const actions = { start, newChat, send, regenerate, editAndResend, retry, switchBranch, remove, refreshList, stop: stopStreaming }
