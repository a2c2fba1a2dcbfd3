// The page's state and everything that changes it: which conversation is open, its tree,
// the turn being streamed, the sidebar list. Components read `state` and call `actions`.
import { reactive } from 'vue'
import { answerStreamPath, api, setClientKey, whenUnauthorized } from './api.js'
import { followAnswer } from './stream.js'
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
  streaming: null, // { stop, detach } while an answer is being followed
  preset: stored('chatgate.preset'),
  model: stored('chatgate.model'),
  needKey: false, // the gateway answered 401: the page asks for a client key
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

function stopStreaming() {
  if (state.streaming) state.streaming.stop()
}

/**
 * Stops reading the answer shown, without stopping the answer: it goes on in the gateway,
 * and opening its conversation again picks it up.
 */
function detachStreaming() {
  const streaming = state.streaming
  state.streaming = null
  streaming?.detach()
}

function reset() {
  state.conversationId = null
  state.title = ''
  state.nodes = {}
  state.leafId = null
}

async function open(id) {
  detachStreaming()
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
    resumeLiveAnswer(id)
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

/**
 * An answer still being written when the conversation is opened (a reload mid-answer, a
 * second tab): follow it, so it grows here just as in the tab that asked.
 */
function resumeLiveAnswer(conversationId) {
  const answer = state.nodes[state.leafId]
  if (tree.role(answer) !== 'assistant' || answer.message.status !== 'in_progress') return
  const ids = { user: answer.parent, assistant: answer.id }
  const turn = { nodes: state.nodes, ids, content: null, conversationId }
  follow(turn, watch(turn))
}

function newChat() {
  detachStreaming()
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
 * branch) and follows the answer into the tree.
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

  const turn = { nodes, ids, content, conversationId: state.conversationId }
  const turnId = watch(turn)
  // The turn is sent in the background and its answer read separately: the 202 names the
  // conversation and the answer before the first word, so Stop can always name them.
  let accepted
  try {
    accepted = await api.startTurn(body)
  } catch (error) {
    if (state.streaming?.turnId === turnId) state.streaming = null
    refuse(turn, error)
    return true
  }
  learnConversation(turn, accepted.conversation_id)
  learnIds(turn, accepted.parent_message_id, accepted.message_id)
  if (turn.stopRequested) askToStop(turn)
  if (turn.detached) {
    // The page moved on while the turn was being sent; the answer runs without it.
    refreshList()
    return true
  }
  await follow(turn, turnId)
  return true
}

/** Makes `turn` the one the page is showing live: Stop and leaving the page act on it. */
function watch(turn) {
  const turnId = ++turnCounter
  state.streaming = {
    turnId,
    stop: () => {
      turn.stopRequested = true
      // Before the 202 the answer has no id yet; `send` asks as soon as it has one.
      if (!tree.isTemp(turn.ids.assistant)) askToStop(turn)
    },
    detach: () => {
      turn.detached = true
      turn.stream?.close()
    },
  }
  return turnId
}

/** Reads the answer's frames into the tree until it ends, then re-reads what was stored. */
async function follow(turn, turnId) {
  const path = answerStreamPath(turn.conversationId, turn.ids.assistant)
  turn.stream = followAnswer(path, (frame) => applyFrame(turn, frame))
  const result = await turn.stream.done
  if (state.streaming?.turnId === turnId) state.streaming = null
  await settle(turn, result)
}

/** Stop: the gateway ends the answer and every reader, this one too, gets its last frame. */
async function askToStop(turn) {
  try {
    await api.stopAnswer(turn.conversationId, turn.ids.assistant)
  } catch (error) {
    if (turn.nodes === state.nodes) state.notice = `Could not stop the answer: ${error.message}`
  }
}

/** The conversation a new turn started: into the URL and the sidebar at once. */
function learnConversation(turn, conversationId) {
  if (turn.conversationId || !conversationId) return
  turn.conversationId = conversationId
  if (turn.nodes !== state.nodes) return
  state.conversationId = conversationId
  history.replaceState(null, '', `#/c/${encodeURIComponent(conversationId)}`)
  const title = turn.content.slice(0, 60)
  state.conversations.unshift({ conversation_id: conversationId, title, update_time: Date.now() / 1000 })
}

/** Gives the page-local question and answer the ids the gateway chose. */
function learnIds(turn, userId, assistantId) {
  const { nodes, ids } = turn
  if (userId && userId !== ids.user) {
    tree.rename(nodes, ids.user, userId)
    ids.user = userId
  }
  if (assistantId && assistantId !== ids.assistant) {
    tree.rename(nodes, ids.assistant, assistantId)
    if (nodes === state.nodes && state.leafId === ids.assistant) state.leafId = assistantId
    ids.assistant = assistantId
  }
}

/** One frame of the answer: learn the ids the gateway chose, show the text so far. */
function applyFrame(turn, frame) {
  learnConversation(turn, frame.conversation_id)
  learnIds(turn, frame.message.metadata?.parent_id, frame.message.id)
  const node = turn.nodes[turn.ids.assistant]
  if (!node) return
  node.message = frame.message
  if (frame.error) node.localError = { message: frame.error.message || 'The model failed mid-answer.' }
}

/** Refused before the answer began: the question stays, with the reason and Retry. */
function refuse(turn, error) {
  const { nodes, ids } = turn
  tree.prune(nodes, ids.assistant)
  if (nodes[ids.user]) nodes[ids.user].failed = { message: error.message, status: error.status }
  if (nodes === state.nodes) state.leafId = ids.user
}

/** After the stream: say so if the answer was cut off, then re-read what the gateway stored. */
async function settle(turn, result) {
  const { nodes, ids, conversationId } = turn
  const answer = nodes[ids.assistant]
  if (result.outcome !== 'closed' && answer?.message?.status === 'in_progress') {
    answer.localError = { message: result.error?.message || 'The answer ended before it was complete.' }
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

/** Keeps `key` in this browser and loads again what the missing key kept out. */
function useKey(key) {
  setClientKey(key.trim())
  state.needKey = false
  state.notice = null
  load()
  refreshList()
  const id = conversationFromHash()
  if (id) open(id)
}

function start() {
  window.addEventListener('hashchange', onHashChange)
  window.addEventListener('popstate', onHashChange)
  whenUnauthorized(() => (state.needKey = true))
  load()
  refreshList()
  const id = conversationFromHash()
  if (id) open(id)
}

export const actions = { start, useKey, newChat, send, regenerate, editAndResend, retry, switchBranch, remove, refreshList, stop: stopStreaming }
