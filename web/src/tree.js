// The conversation as the gateway stores it: a tree of nodes keyed by id, each
// `{id, parent, children: [ids], message}`, the root holding `message: null`.
// Regenerating or editing adds a sibling under an older node; the page shows one branch,
// the path from the root to a chosen leaf.

let tempCounter = 0
/** Ids of nodes that exist only in this page until the gateway names them. */
export const tempId = (kind) => `tmp-${kind}-${++tempCounter}`
export const isTemp = (id) => typeof id === 'string' && id.startsWith('tmp-')

/** Builds nodes from `GET /conv/{id}`'s mapping. */
export function fromMapping(mapping) {
  const nodes = {}
  for (const [id, raw] of Object.entries(mapping || {})) {
    nodes[id] = {
      id: raw.id || id,
      parent: raw.parent ?? null,
      children: Array.isArray(raw.children) ? [...raw.children] : [],
      message: raw.message ?? null,
    }
  }
  // Keep children consistent even if the server listed a child only through `parent`.
  for (const node of Object.values(nodes)) {
    const parent = node.parent && nodes[node.parent]
    if (parent && !parent.children.includes(node.id)) parent.children.push(node.id)
  }
  return nodes
}

export function rootId(nodes) {
  const root = Object.values(nodes).find((n) => !n.parent || !nodes[n.parent])
  return root ? root.id : null
}

/** Nodes from the root down to `leafId`, inclusive. */
export function pathTo(nodes, leafId) {
  const path = []
  const seen = new Set()
  let id = leafId
  while (id && nodes[id] && !seen.has(id)) {
    seen.add(id)
    path.push(nodes[id])
    id = nodes[id].parent
  }
  return path.reverse()
}

/** Descends from `id` through the newest child at each step. */
export function latestLeaf(nodes, id) {
  let node = nodes[id]
  const seen = new Set()
  while (node && node.children.length && !seen.has(node.id)) {
    seen.add(node.id)
    const next = nodes[node.children[node.children.length - 1]]
    if (!next) break
    node = next
  }
  return node ? node.id : id
}

export const role = (node) => node?.message?.author?.role || null
export const text = (node) => {
  const parts = node?.message?.content?.parts
  return Array.isArray(parts) && typeof parts[0] === 'string' ? parts[0] : ''
}

/** The chat as shown: user and assistant messages of the branch ending at `leafId`. */
export function visibleThread(nodes, leafId) {
  return pathTo(nodes, leafId).filter((n) => {
    const r = role(n)
    return r === 'user' || r === 'assistant'
  })
}

/**
 * Where to draw `< i/n >` switches along a thread. Siblings under one parent are
 * alternatives; when they are user messages with the same text (regenerations), the
 * switch belongs on the answer below them, otherwise on the messages themselves.
 * Returns a Map from the id of the message that shows the switch to
 * `{ index, count, siblings }`, `siblings` being the ids to switch between.
 */
export function branchPoints(nodes, thread) {
  const points = new Map()
  thread.forEach((node, i) => {
    const parent = nodes[node.parent]
    const siblings = parent ? parent.children.filter((id) => nodes[id]) : []
    if (siblings.length < 2) return
    const info = { index: siblings.indexOf(node.id), count: siblings.length, siblings }
    const sameText = siblings.every((id) => role(nodes[id]) === 'user' && text(nodes[id]) === text(node))
    const next = thread[i + 1]
    if (sameText && next && role(next) === 'assistant') points.set(next.id, info)
    else points.set(node.id, info)
  })
  return points
}

/** Adds `node` under its parent. */
export function attach(nodes, node) {
  nodes[node.id] = node
  const parent = nodes[node.parent]
  if (parent && !parent.children.includes(node.id)) parent.children.push(node.id)
}

/** Gives a page-local node the id the gateway chose, keeping its place in the tree. */
export function rename(nodes, oldId, newId) {
  if (oldId === newId || !nodes[oldId]) return
  const node = nodes[oldId]
  delete nodes[oldId]
  node.id = newId
  nodes[newId] = node
  const parent = nodes[node.parent]
  if (parent) parent.children = parent.children.map((c) => (c === oldId ? newId : c))
  for (const childId of node.children) if (nodes[childId]) nodes[childId].parent = newId
}

/** Removes a node and everything under it. */
export function prune(nodes, id) {
  const node = nodes[id]
  if (!node) return
  for (const child of [...node.children]) prune(nodes, child)
  const parent = nodes[node.parent]
  if (parent) parent.children = parent.children.filter((c) => c !== id)
  delete nodes[id]
}

/**
 * Merges a fresh server tree into the page's: the server wins for every node it knows,
 * page-only state (an error shown under an answer) survives, and nodes the server does not
 * have yet (an answer still being stored after Stop) stay where they are.
 */
export function merge(local, server) {
  const merged = { ...server }
  for (const [id, node] of Object.entries(local)) {
    if (merged[id]) {
      if (node.localError) merged[id].localError = node.localError
      const localStatus = node.message?.status
      if (localStatus && merged[id].message?.status === 'in_progress') {
        merged[id].message = node.message
      }
    } else if (!isTemp(id) && node.parent && merged[node.parent]) {
      merged[id] = { ...node, children: node.children.filter((c) => local[c] && !isTemp(c)) }
    }
  }
  for (const node of Object.values(merged)) {
    const parent = node.parent && merged[node.parent]
    if (parent && !parent.children.includes(node.id)) parent.children.push(node.id)
  }
  return merged
}
