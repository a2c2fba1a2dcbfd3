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
  openChat,
  seenWhileStreaming,
  useStack,
  waitIdle,
} from './helpers.js'

/** The reasoning the mock streams for `[mock:reasoning=n]`. */
const mockReasoning = (n) => Array.from({ length: n }, (_, i) => `Thinking, step ${i + 1}. `).join('')

/** The reasoning element of the last answer: whether it is open, and its whole text. */
const reasoningOf = (page) =>
  answers(page)
    .last()
    .evaluate((answer) => {
      const details = answer.querySelector('details[data-testid="reasoning"]')
      if (!details) return null
      return {
        open: details.open,
        summary: details.querySelector('summary')?.textContent.trim(),
        text: details.querySelector('[data-testid="reasoning-text"]')?.textContent ?? '',
        answerInside: Boolean(details.querySelector('[data-testid="message-text"]')),
      }
    })

describe('reasoning', () => {
  const ctx = useStack()

  it(
    'is shown collapsed above the answer, grows while it streams, and stays for a stored conversation',
    ctx.withPage(async (page) => {
      const question = 'Why is the sky blue? [mock:reasoning=6] [mock:delay=80]'
      await ask(page, question)
      await page.getByTestId('stop').waitFor()

      // While the answer streams, the reasoning grows, collapsed.
      const seen = await seenWhileStreaming(page, reasoningOf, (reasoning) => reasoning.text)
      await waitIdle(page)
      const whole = mockReasoning(6)
      assert.ok(seen.length >= 3, `the reasoning grew in several steps: ${JSON.stringify(seen)}`)
      for (const r of seen) {
        assert.equal(r.open, false, 'closed by default while streaming')
        assert.ok(whole.startsWith(r.text), `"${r.text}" is a prefix of the reasoning`)
      }

      const done = await reasoningOf(page)
      assert.deepEqual(done, { open: false, summary: 'Reasoning', text: whole, answerInside: false })
      const answer = await answerText(page)
      assert.equal(answer, echoOf(question))
      assert.ok(!answer.includes('Thinking'), 'the reasoning is not in the answer text')
      // The mock counts 10 prompt tokens and one token a chunk ("Echo:", " Why", …).
      const completion = echoOf(question).split(' ').length
      assert.equal((await page.getByTestId('usage').innerText()).trim(), `${10 + completion} tokens`)

      // A click opens it.
      await answers(page).last().locator('summary').click()
      assert.equal((await reasoningOf(page)).open, true)

      // Opened again from the store: there, collapsed, whole.
      const id = conversationIdOf(page)
      const again = await openChat(ctx.stack, { hash: `#/c/${id}` })
      try {
        await eventually(async () => (await answerText(again)) === echoOf(question), 'the stored answer')
        assert.deepEqual(await reasoningOf(again), { open: false, summary: 'Reasoning', text: whole, answerInside: false })
      } finally {
        await again.context().close()
      }
      assert.deepEqual(page.consoleErrors, [])
    }),
  )

  it(
    'is not shown for an answer without reasoning',
    ctx.withPage(async (page) => {
      const question = 'Plain please [mock:words=3]'
      assert.equal(await askAndWait(page, question), echoOf(question))
      await answers(page).last().getByTestId('copy').waitFor()
      assert.equal(await reasoningOf(page), null)
    }),
  )
})
