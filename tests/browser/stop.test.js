import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  answerText,
  answers,
  ask,
  askAndWait,
  conversationIdOf,
  echoOf,
  eventually,
  storedMessage,
  userMessages,
  useStack,
  waitIdle,
} from './helpers.js'

/** The next `POST /conv/{id}/stop` the page sends. */
const stopRequest = (page) =>
  page.waitForRequest((r) => r.method() === 'POST' && /\/conv\/[^/]+\/stop$/.test(new URL(r.url()).pathname))

describe('stopping an answer', () => {
  const ctx = useStack()

  it(
    'ends the stream, cancels the upstream and keeps the partial answer, also after a reload',
    ctx.withPage(async (page) => {
      await ask(page, 'Write a long essay [mock:words=300] [mock:delay=50]')
      await eventually(async () => (await answerText(page)).includes(' w5'), 'a few words of the answer')
      const id = conversationIdOf(page)
      const answerId = await answers(page).last().getAttribute('data-message-id')
      const sent = stopRequest(page)
      await page.getByTestId('stop').click()
      const request = await sent
      assert.equal(new URL(request.url()).pathname, `/conv/${id}/stop`)
      assert.deepEqual(request.postDataJSON(), { message_id: answerId }, 'Stop names the answer')
      await waitIdle(page, 5000)

      const partial = await answerText(page)
      assert.match(partial, /^Echo: Write a long essay w1 w2 w3 w4 w5/)
      assert.ok(!partial.includes('w300'), 'the answer was cut short')
      await page.waitForTimeout(300)
      assert.equal(await answerText(page), partial, 'nothing more arrives after Stop')
      await page.getByTestId('stopped-note').waitFor()
      assert.equal(await answers(page).last().getAttribute('data-status'), 'finished_partial_completion')

      const stats = await eventually(async () => {
        const s = await ctx.stack.mock.stats()
        return s.cancelled >= 1 && s.active === 0 && s
      }, 'the mock to see its stream cancelled')
      assert.equal(stats.completed, 0)

      // Stored as interrupted, with exactly the text the page shows.
      const stored = await eventually(async () => {
        const message = await storedMessage(ctx.stack, id, answerId)
        return message?.status !== 'in_progress' && message
      }, 'the stopped answer to be stored')
      assert.equal(stored.status, 'finished_partial_completion')
      assert.deepEqual(stored.metadata.finish_details, { type: 'interrupted' })
      assert.equal(stored.content.parts[0], partial)

      // A reload shows it, stopped, and does not try to follow it.
      await page.reload()
      await page.getByTestId('stopped-note').waitFor()
      assert.equal(await answerText(page), partial)
      assert.equal(await page.getByTestId('stop').count(), 0)

      // The conversation goes on from the partial answer.
      const next = 'Go on'
      assert.equal(await askAndWait(page, next), echoOf(next))
      const requests = await ctx.stack.mock.requests()
      const history = requests.at(-1).messages.filter((m) => m.role !== 'system')
      assert.equal(history.length, 3)
      assert.equal(history[1].role, 'assistant')
      assert.equal(history[1].content, partial)
    }),
  )

  it(
    'can stop before the first word arrives, and the question is kept',
    ctx.withPage(async (page) => {
      const question = 'Slow start [mock:first-delay=3000]'
      await ask(page, question)
      await eventually(async () => (await ctx.stack.mock.stats()).requests >= 1, 'the upstream to have the question')
      const sent = stopRequest(page)
      await page.getByTestId('stop').click()
      await sent
      await waitIdle(page, 5000)
      await eventually(async () => (await ctx.stack.mock.stats()).cancelled >= 1, 'the upstream cancelled')

      // The gateway stored the question and an empty, stopped answer; the page shows that.
      await page.getByTestId('stopped-note').waitFor()
      assert.equal(await userMessages(page).first().getByTestId('message-text').innerText(), question)
      assert.equal(await answerText(page), '')
      const id = await eventually(() => conversationIdOf(page), 'the URL to name the conversation')
      const stored = await storedMessage(ctx.stack, id, await answers(page).last().getAttribute('data-message-id'))
      assert.equal(stored.status, 'finished_partial_completion')
      await page.reload()
      await page.getByTestId('stopped-note').waitFor()
      assert.equal(conversationIdOf(page), id)

      const answer = await askAndWait(page, 'Hello again')
      assert.equal(answer, echoOf('Hello again'))
      assert.equal(conversationIdOf(page), id, 'the conversation goes on')
    }),
  )

  it(
    'Stop in a second tab ends the answer in both',
    ctx.withPage(async (page) => {
      await ask(page, 'Watched twice [mock:words=300] [mock:delay=50]')
      await eventually(async () => (await answerText(page)).includes(' w3'), 'the answer to begin')
      const second = await page.context().newPage()
      await second.goto(`${ctx.stack.gatewayUrl}/#/c/${encodeURIComponent(conversationIdOf(page))}`)
      await eventually(async () => (await answerText(second)).includes(' w8'), 'the second tab to follow the answer')

      await second.getByTestId('stop').click()
      await waitIdle(second, 5000)
      await second.getByTestId('stopped-note').waitFor()
      const partial = await answerText(second)
      assert.ok(!partial.includes('w300'), 'the answer was cut short')

      // The first tab was in the background, where Markdown renders on animation frames.
      await page.bringToFront()
      await waitIdle(page, 5000)
      await page.getByTestId('stopped-note').waitFor()
      await eventually(async () => (await answerText(page)) === partial, 'the first tab to show the same partial answer')
      await eventually(async () => (await ctx.stack.mock.stats()).cancelled === 1, 'the upstream cancelled')
    }),
  )

  it(
    'Stop pressed before the turn is accepted stops the answer as soon as it is',
    ctx.withPage(async (page) => {
      // Hold the 202 back until Stop has been pressed.
      let release
      const held = new Promise((resolve) => (release = resolve))
      await page.route('**/conv', async (route) => {
        const response = await route.fetch()
        await held
        await route.fulfill({ response })
      })
      await ask(page, 'Not accepted yet [mock:words=300] [mock:delay=50]')
      await page.getByTestId('stop').click()
      const sent = stopRequest(page)
      release()
      await sent
      await waitIdle(page, 5000)
      await page.getByTestId('stopped-note').waitFor()
      assert.ok(!(await answerText(page)).includes('w300'), 'the answer was cut short')
      await eventually(async () => (await ctx.stack.mock.stats()).cancelled === 1, 'the upstream cancelled')
    }),
  )
})
