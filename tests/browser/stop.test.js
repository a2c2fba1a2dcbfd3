import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { answerText, answers, ask, askAndWait, conversationIdOf, echoOf, eventually, userMessages, useStack, waitIdle } from './helpers.js'

describe('stopping an answer', () => {
  const ctx = useStack()

  it(
    'ends the stream, cancels the upstream and keeps the partial answer, also after a reload',
    ctx.withPage(async (page) => {
      await ask(page, 'Write a long essay [mock:words=300] [mock:delay=50]')
      await eventually(async () => (await answerText(page)).includes(' w5'), 'a few words of the answer')
      await page.getByTestId('stop').click()
      await waitIdle(page, 5000)

      const partial = await answerText(page)
      assert.match(partial, /^Echo: Write a long essay w1 w2 w3 w4 w5/)
      assert.ok(!partial.includes('w300'), 'the answer was cut short')
      await page.waitForTimeout(300)
      assert.equal(await answerText(page), partial, 'nothing more arrives after Stop')
      await page.getByTestId('stopped-note').waitFor()

      const stats = await eventually(async () => {
        const s = await ctx.stack.mock.stats()
        return s.cancelled >= 1 && s.active === 0 && s
      }, 'the mock to see its stream cancelled')
      assert.equal(stats.completed, 0)

      // The gateway stored what had been said; a reload shows it.
      const stored = await eventually(async () => {
        await page.reload()
        await answers(page).first().waitFor()
        const text = await answerText(page)
        return text.includes(' w5') && text
      }, 'the partial answer after a reload')
      assert.ok(!stored.includes('w300'))
      assert.ok(stored.startsWith('Echo: Write a long essay w1'))

      // The conversation goes on from the partial answer.
      const next = 'Go on'
      assert.equal(await askAndWait(page, next), echoOf(next))
      const requests = await ctx.stack.mock.requests()
      const history = requests.at(-1).messages.filter((m) => m.role !== 'system')
      assert.equal(history.length, 3)
      assert.equal(history[1].role, 'assistant')
      assert.ok(history[1].content.startsWith('Echo: Write a long essay w1'))
    }),
  )

  it(
    'can stop before the first word arrives, and the question is kept',
    ctx.withPage(async (page) => {
      const question = 'Slow start [mock:first-delay=3000]'
      await ask(page, question)
      await eventually(async () => (await ctx.stack.mock.stats()).requests >= 1, 'the upstream to have the question')
      await page.getByTestId('stop').click()
      await waitIdle(page, 5000)
      await eventually(async () => (await ctx.stack.mock.stats()).cancelled >= 1, 'the upstream cancelled')

      // The gateway stored the question and an empty, stopped answer; the page shows that.
      await page.getByTestId('stopped-note').waitFor()
      assert.equal(await userMessages(page).first().getByTestId('message-text').innerText(), question)
      const id = await eventually(() => conversationIdOf(page), 'the URL to name the conversation')
      await page.reload()
      await page.getByTestId('stopped-note').waitFor()
      assert.equal(conversationIdOf(page), id)

      const answer = await askAndWait(page, 'Hello again')
      assert.equal(answer, echoOf('Hello again'))
      assert.equal(conversationIdOf(page), id, 'the conversation goes on')
    }),
  )
})
