// An answer runs in the gateway, not in the page: a reload mid-answer picks it up where it
// was, and a second tab on the same conversation watches it grow.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  answerText,
  answers,
  ask,
  conversationIdOf,
  echoOf,
  eventually,
  rendersUntilIdle,
  storedMessage,
  thread,
  useStack,
  waitIdle,
} from './helpers.js'

/** Every render was a prefix of the final text, and several came before it. */
function assertGrew(seen, final, what) {
  const partial = seen.filter((t) => t !== final)
  assert.ok(partial.length >= 3, `${what}: expected several partial renders, saw ${JSON.stringify(seen)}`)
  for (const text of partial) assert.ok(final.startsWith(text), `${what}: "${text}" is not a prefix of the answer`)
}

describe('answers outlive the page', () => {
  const ctx = useStack()

  it(
    'a reload mid-answer picks the answer up where it was and ends with the whole text',
    ctx.withPage(async (page) => {
      const question = 'Tell me a long story [mock:words=60] [mock:delay=50]'
      await ask(page, question)
      await eventually(async () => (await answerText(page)).includes(' w5'), 'a few words of the answer')
      const id = conversationIdOf(page)
      assert.ok(id, 'the URL names the conversation as soon as the turn is accepted')

      await page.reload()
      await answers(page).first().waitFor()
      await page.getByTestId('stop').waitFor({ timeout: 2000 })
      const seen = await rendersUntilIdle(page)
      const final = await answerText(page)

      assert.equal(final, echoOf(question))
      assertGrew(seen, final, 'after the reload')
      assert.equal(conversationIdOf(page), id)
      assert.deepEqual(await thread(page), [`user: ${question}`, `assistant: ${final}`], 'one question, one answer')
      const answer = answers(page).last()
      assert.equal(await answer.getAttribute('data-status'), 'finished_successfully')

      // The gateway went on with the one upstream request it had; nothing was asked twice.
      const stats = await eventually(async () => {
        const s = await ctx.stack.mock.stats()
        return s.active === 0 && s
      }, 'the upstream stream to end')
      assert.equal(stats.requests, 1)
      assert.equal(stats.completed, 1)
      assert.equal(stats.cancelled, 0)
      const stored = await storedMessage(ctx.stack, id, await answer.getAttribute('data-message-id'))
      assert.equal(stored.status, 'finished_successfully')
      assert.equal(stored.content.parts[0], final)
      assert.deepEqual(page.consoleErrors, [])
    }),
  )

  it(
    'a second tab opening the conversation shows the answer growing and finishing',
    ctx.withPage(async (page) => {
      const question = 'Tell me in two tabs [mock:words=60] [mock:delay=50]'
      await ask(page, question)
      await eventually(async () => (await answerText(page)).includes(' w3'), 'the answer to begin')
      const id = conversationIdOf(page)

      const second = await page.context().newPage()
      second.consoleErrors = []
      second.on('pageerror', (error) => second.consoleErrors.push(String(error)))
      await second.goto(`${ctx.stack.gatewayUrl}/#/c/${encodeURIComponent(id)}`)
      await second.getByTestId('stop').waitFor({ timeout: 2000 })
      const seen = await rendersUntilIdle(second)
      const final = await answerText(second)

      assert.equal(final, echoOf(question))
      assertGrew(seen, final, 'in the second tab')
      assert.equal(await answers(second).last().getAttribute('data-status'), 'finished_successfully')
      assert.deepEqual(await thread(second), [`user: ${question}`, `assistant: ${final}`])

      // The tab that asked saw the same answer end. It was in the background, where the
      // page renders Markdown only on animation frames: bring it to the front to look.
      await page.bringToFront()
      await waitIdle(page)
      await eventually(async () => (await answerText(page)) === final, 'the first tab to show the whole answer')
      assert.equal(
        await answers(page).last().getAttribute('data-message-id'),
        await answers(second).last().getAttribute('data-message-id'),
      )
      assert.equal((await ctx.stack.mock.stats()).requests, 1, 'one upstream request for both tabs')
      assert.deepEqual([...page.consoleErrors, ...second.consoleErrors], [])
    }),
  )

  it(
    'leaving a conversation mid-answer stops reading it, not the answer',
    ctx.withPage(async (page) => {
      const question = 'Keep going without me [mock:words=40] [mock:delay=50]'
      await ask(page, question)
      await eventually(async () => (await answerText(page)).includes(' w3'), 'the answer to begin')
      const id = conversationIdOf(page)

      await page.getByTestId('new-chat').click()
      await waitIdle(page)
      assert.equal(await answers(page).count(), 0)
      await page.locator(`[data-testid="conversation-item"][data-conversation-id="${id}"] a`).click()
      await eventually(async () => (await answerText(page)) === echoOf(question), 'the whole answer when back')
      await waitIdle(page)
      const stats = await eventually(async () => {
        const s = await ctx.stack.mock.stats()
        return s.active === 0 && s
      }, 'the upstream stream to end')
      assert.deepEqual([stats.requests, stats.completed, stats.cancelled], [1, 1, 0])
    }),
  )
})
