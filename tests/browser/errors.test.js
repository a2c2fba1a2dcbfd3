import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { answerText, answers, ask, askAndWait, echoOf, eventually, userMessages, useStack, waitIdle } from './helpers.js'

describe('when things go wrong', () => {
  const ctx = useStack()

  it(
    'shows an upstream refusal under the question, and the next message carries on',
    ctx.withPage(async (page) => {
      await askAndWait(page, 'Warm-up question')
      await ask(page, 'Will this work? [mock:status=500]')
      const error = userMessages(page).last().getByTestId('error')
      await error.waitFor()
      await waitIdle(page)
      const message = (await error.getByTestId('error-message').innerText()).trim()
      assert.ok(message.length > 0, 'the error says something')
      assert.equal(await userMessages(page).last().getByTestId('message-text').innerText(), 'Will this work? [mock:status=500]')
      assert.equal(await answers(page).count(), 1, 'no empty answer is left behind')
      assert.equal(await answerText(page), echoOf('Warm-up question'), 'the earlier answer is untouched')

      // Sending something else replaces the failed message; the history is intact.
      assert.equal(await askAndWait(page, 'Something else'), echoOf('Something else'))
      assert.equal(await page.getByTestId('error').count(), 0)
      const history = (await ctx.stack.mock.requests()).at(-1).messages.filter((m) => m.role !== 'system')
      assert.deepEqual(history.map((m) => m.content), ['Warm-up question', echoOf('Warm-up question'), 'Something else'])
    }),
  )

  it(
    'offers Retry after a refusal',
    ctx.withPage(async (page) => {
      await ask(page, 'Refused once [mock:status=502]')
      await userMessages(page).last().getByTestId('retry').waitFor()
      await waitIdle(page)
      await userMessages(page).last().getByTestId('retry').click()
      await userMessages(page).last().getByTestId('error').waitFor()
      await waitIdle(page)
      assert.equal(await userMessages(page).count(), 1, 'a retry does not duplicate the question')
      // A 502 is tried three times before the gateway gives up: three requests a turn.
      assert.equal((await ctx.stack.mock.requests()).length, 6)
    }),
  )

  it(
    'shows a rate limit with when to try again',
    ctx.withPage(async (page) => {
      // Longer than the gateway's retry budget: passed on at once, not waited for.
      await ask(page, 'Too fast [mock:status=429] [mock:retry-after=30]')
      const error = page.getByTestId('error')
      await error.waitFor()
      assert.match(await error.innerText(), /try again in 30 s/i)
    }),
  )

  it(
    'keeps the partial answer and shows the error when the model fails mid-answer',
    ctx.withPage(async (page) => {
      await ask(page, 'Start then fail [mock:words=10] [mock:error-after=3]')
      const error = answers(page).last().getByTestId('error')
      await error.waitFor()
      await waitIdle(page)
      const partial = await answerText(page)
      assert.equal(partial, 'Echo: Start then', 'the three words that arrived stay visible')
      assert.ok((await error.innerText()).trim().length > 0)
      assert.equal(await answers(page).last().getAttribute('data-status'), 'error')

      // Stored with its status: a reload still shows the partial answer and that it failed.
      await page.reload()
      await answers(page).first().waitFor()
      await eventually(async () => (await answerText(page)) === partial, 'the partial answer after reload')
      await answers(page).last().getByTestId('error').waitFor()

      // Regenerate tries again as a sibling answer; the directives are in the question,
      // so the new attempt fails the same way, and the first one is still there.
      await answers(page).last().getByTestId('regenerate').click()
      await answers(page).last().getByTestId('branch-count').waitFor()
      await waitIdle(page)
      assert.equal(await answers(page).last().getByTestId('branch-count').innerText(), '2/2')
      assert.equal(await answerText(page), 'Echo: Start then')
      await answers(page).last().getByTestId('error').waitFor()
    }),
  )

  it(
    'says so when the gateway cannot be reached',
    ctx.withPage(async (page) => {
      await page.route('**/conv', (route) => route.abort('connectionrefused'))
      await ask(page, 'Anyone there?')
      const error = page.getByTestId('error')
      await error.waitFor()
      assert.match(await error.innerText(), /could not reach the gateway/i)
    }),
  )
})
