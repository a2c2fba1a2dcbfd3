// What a person does on the chat page, and what they see, as small functions.
import { after, before } from 'node:test'
import { newPage, saveFailure, startStack } from './harness.js'

/**
 * One stack (mock, gateway, browser) for a test file. `withPage(fn)` makes a test body
 * that gets a fresh page on the chat (a new browser context, the mock's log reset), saves a
 * screenshot and the server logs under artifacts/ when it fails, and closes the page.
 */
export function useStack(options) {
  const ctx = { stack: null }
  before(async () => {
    ctx.stack = await startStack(options)
  })
  after(async () => {
    await ctx.stack?.stop()
  })
  ctx.withPage = (fn, pageOptions) => async (t) => {
    await ctx.stack.mock.reset()
    const page = await openChat(ctx.stack, pageOptions)
    try {
      await fn(page, t)
    } catch (error) {
      await saveFailure(ctx.stack, page, t.name)
      throw error
    } finally {
      await page.context().close()
    }
  }
  return ctx
}

/** Opens the chat page (optionally at a hash such as `#/c/<id>`). */
export async function openChat(stack, { hash = '', ...pageOptions } = {}) {
  const page = await newPage(stack, pageOptions)
  await page.goto(`${stack.gatewayUrl}/${hash}`)
  await page.getByTestId('composer').waitFor()
  return page
}

/** Types a message into the composer and presses Enter. */
export async function ask(page, text) {
  const composer = page.getByTestId('composer')
  await composer.fill(text)
  await composer.press('Enter')
}

/**
 * What `read(page)` shows, each time it changes (compared by `key`), while an answer
 * streams (as long as the Stop button is up).
 */
export async function seenWhileStreaming(page, read, key = (value) => value) {
  const seen = []
  while (await page.getByTestId('stop').isVisible()) {
    const value = await read(page)
    if (value && (seen.length === 0 || key(value) !== key(seen[seen.length - 1]))) seen.push(value)
    await page.waitForTimeout(15)
  }
  return seen
}

/** Waits until no answer is streaming (the Send button is back). */
export async function waitIdle(page, timeout = 20_000) {
  await page.getByTestId('send').waitFor({ timeout })
}

export const userMessages = (page) => page.getByTestId('message-user')
export const answers = (page) => page.getByTestId('message-assistant')

/** The text of the i-th shown answer (negative counts from the end). */
export async function answerText(page, index = -1) {
  const all = answers(page)
  const count = await all.count()
  if (!count) return ''
  const i = index < 0 ? count + index : index
  const text = all.nth(i).getByTestId('message-text')
  return (await text.count()) ? (await text.innerText()).trim() : ''
}

/** Asks and waits for the whole answer; returns its text. */
export async function askAndWait(page, text) {
  const before = await answers(page).count()
  await ask(page, text)
  await page.waitForFunction(
    (n) => document.querySelectorAll('[data-testid="message-assistant"]').length > n,
    before,
  )
  await waitIdle(page)
  return answerText(page)
}

/**
 * Reads the last answer as the person sees it, every few milliseconds, until it stops
 * streaming (the Send button is back). Returns the distinct texts seen, in order.
 */
export async function rendersUntilIdle(page, timeout = 20_000) {
  const seen = []
  const deadline = Date.now() + timeout
  while (await page.getByTestId('stop').isVisible()) {
    if (Date.now() > deadline) throw new Error(`the answer was still streaming after ${timeout} ms`)
    const text = await answerText(page)
    if (text && text !== seen[seen.length - 1]) seen.push(text)
    await page.waitForTimeout(15)
  }
  await waitIdle(page)
  return seen
}

/** The stored message `messageId` of conversation `conversationId` (`GET /conv/{id}`). */
export async function storedMessage(stack, conversationId, messageId) {
  const { status, body } = await gatewayJson(stack, `/conv/${conversationId}`)
  if (status !== 200) throw new Error(`GET /conv/${conversationId}: HTTP ${status}`)
  return body.mapping[messageId]?.message ?? null
}

/** What the mock answers to `text`: `Echo: <text without directives>` plus `w1 … wN`. */
export function echoOf(text) {
  const words = Number(/\[mock:words=(\d+)\]/.exec(text)?.[1] || 0)
  const clean = text.replace(/\[mock:[a-z-]+=?[^\]]*\]/g, ' ').split(/\s+/).filter(Boolean).join(' ')
  const extra = Array.from({ length: words }, (_, i) => ` w${i + 1}`).join('')
  return `Echo: ${clean}${extra}`
}

/** Polls `check` until it returns something truthy; throws with `what` after `timeout`. */
export async function eventually(check, what, { timeout = 10_000, interval = 50 } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    try {
      const value = await check()
      if (value) return value
      last = value
    } catch (error) {
      last = error
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`)
    await new Promise((r) => setTimeout(r, interval))
  }
}

/** The open conversation's id, from the page's URL (`#/c/<id>`). */
export function conversationIdOf(page) {
  const match = /#\/c\/([^/?#]+)/.exec(page.url())
  return match ? decodeURIComponent(match[1]) : null
}

/** GET a gateway path as JSON. */
export async function gatewayJson(stack, path, init) {
  const response = await fetch(stack.gatewayUrl + path, init)
  const text = await response.text()
  return { status: response.status, body: text ? JSON.parse(text) : null, headers: response.headers }
}

/** The user-visible text of the messages of the shown branch, in order. */
export function thread(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('[data-testid^="message-"][data-message-id]')].map((el) => {
      const text = el.querySelector('[data-testid="message-text"]')
      return `${el.dataset.testid.replace('message-', '')}: ${text ? text.innerText.trim() : ''}`
    }),
  )
}
