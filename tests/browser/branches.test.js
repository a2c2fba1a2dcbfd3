import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { answers, askAndWait, conversationIdOf, echoOf, gatewayJson, thread, userMessages, useStack, waitIdle } from './helpers.js'

const chatOf = (request) => request.messages.filter((m) => m.role !== 'system').map((m) => `${m.role}: ${m.content}`)

describe('branches', () => {
  const ctx = useStack()

  it(
    'regenerate makes a sibling answer to the same question, and both can be shown',
    ctx.withPage(async (page) => {
      const first = 'What is Rust?'
      const second = 'Tell me a joke'
      await askAndWait(page, first)
      await askAndWait(page, second)
      const original = await answers(page).last().getAttribute('data-message-id')

      await answers(page).last().getByTestId('regenerate').click()
      await page.waitForFunction(
        (id) => {
          const all = document.querySelectorAll('[data-testid="message-assistant"]')
          return all.length === 2 && all[1].dataset.messageId !== id && !document.querySelector('[data-testid="stop"]')
        },
        original,
      )
      await waitIdle(page)
      const regenerated = await answers(page).last().getAttribute('data-message-id')
      assert.notEqual(regenerated, original)
      assert.deepEqual(await thread(page), [
        `user: ${first}`,
        `assistant: ${echoOf(first)}`,
        `user: ${second}`,
        `assistant: ${echoOf(second)}`,
      ])
      const count = answers(page).last().getByTestId('branch-count')
      assert.equal(await count.innerText(), '2/2')

      // The upstream was asked the same question with the same history, not a follow-up.
      const requests = await ctx.stack.mock.requests()
      assert.equal(requests.length, 3)
      assert.deepEqual(chatOf(requests[2]), chatOf(requests[1]))

      // The gateway holds two user messages with the same text under the first answer.
      const { body: conv } = await gatewayJson(ctx.stack, `/conv/${conversationIdOf(page)}`)
      const asked = Object.values(conv.mapping).filter((n) => n.message?.content?.parts?.[0] === second)
      assert.equal(asked.length, 2)
      assert.equal(asked[0].parent, asked[1].parent)

      await answers(page).last().getByTestId('branch-prev').click()
      assert.equal(await answers(page).last().getAttribute('data-message-id'), original)
      assert.equal(await count.innerText(), '1/2')
      await answers(page).last().getByTestId('branch-next').click()
      assert.equal(await answers(page).last().getAttribute('data-message-id'), regenerated)

      // A reload opens the newest branch.
      await page.reload()
      await answers(page).nth(1).waitFor()
      assert.equal(await answers(page).last().getAttribute('data-message-id'), regenerated)
      assert.equal(await answers(page).last().getByTestId('branch-count').innerText(), '2/2')
    }),
  )

  it(
    'regenerating the first answer branches from the conversation root',
    ctx.withPage(async (page) => {
      const question = 'Only question'
      await askAndWait(page, question)
      const original = await answers(page).last().getAttribute('data-message-id')
      await answers(page).last().getByTestId('regenerate').click()
      await page.waitForFunction(
        (id) => document.querySelector('[data-testid="message-assistant"]')?.dataset.messageId !== id,
        original,
      )
      await waitIdle(page)
      assert.deepEqual(await thread(page), [`user: ${question}`, `assistant: ${echoOf(question)}`])
      assert.equal(await answers(page).last().getByTestId('branch-count').innerText(), '2/2')
      const requests = await ctx.stack.mock.requests()
      assert.deepEqual(chatOf(requests[1]), [`user: ${question}`])
      const { body: conv } = await gatewayJson(ctx.stack, `/conv/${conversationIdOf(page)}`)
      const root = Object.values(conv.mapping).find((n) => n.parent === null)
      assert.equal(root.children.length, 2, 'two first questions under the root')
    }),
  )

  it(
    'editing a question sends the new text as a branch, and the old one stays reachable',
    ctx.withPage(async (page) => {
      await askAndWait(page, 'Original question')
      await askAndWait(page, 'A follow-up')

      const firstQuestion = userMessages(page).first()
      await firstQuestion.hover()
      await firstQuestion.getByTestId('edit').click()
      const input = page.getByTestId('edit-input')
      assert.equal(await input.inputValue(), 'Original question')
      await input.fill('Edited question')
      await page.getByTestId('edit-save').click()
      await page.waitForFunction(
        () => document.querySelectorAll('[data-testid="message-user"]').length === 1 && !document.querySelector('[data-testid="stop"]'),
      )
      await waitIdle(page)

      assert.deepEqual(await thread(page), ['user: Edited question', `assistant: ${echoOf('Edited question')}`])
      assert.equal(await userMessages(page).first().getByTestId('branch-count').innerText(), '2/2')
      const requests = await ctx.stack.mock.requests()
      assert.deepEqual(chatOf(requests.at(-1)), ['user: Edited question'])

      await userMessages(page).first().getByTestId('branch-prev').click()
      assert.deepEqual(await thread(page), [
        'user: Original question',
        `assistant: ${echoOf('Original question')}`,
        'user: A follow-up',
        `assistant: ${echoOf('A follow-up')}`,
      ])
    }),
  )
})
