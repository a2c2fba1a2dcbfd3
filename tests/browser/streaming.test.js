import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  answerText,
  answers,
  ask,
  askAndWait,
  conversationIdOf,
  echoOf,
  gatewayJson,
  seenWhileStreaming,
  thread,
  useStack,
  waitIdle,
} from './helpers.js'

describe('asking a question', () => {
  const ctx = useStack()

  it(
    'shows the answer growing as it streams, then complete',
    ctx.withPage(async (page) => {
      const question = 'Tell me something [mock:words=30] [mock:delay=40]'
      await ask(page, question)
      await page.getByTestId('stop').waitFor()

      // Read what the person sees while the answer streams.
      const seen = await seenWhileStreaming(page, answerText)
      await waitIdle(page)
      const final = await answerText(page)

      assert.equal(final, echoOf(question))
      const partial = seen.filter((t) => t !== final)
      assert.ok(partial.length >= 5, `expected several partial renders, saw ${JSON.stringify(seen)}`)
      for (const text of partial) assert.ok(final.startsWith(text), `"${text}" is not a prefix of the answer`)
      assert.equal(await answers(page).last().getAttribute('data-status'), 'finished_successfully')
      assert.match(conversationIdOf(page) || '', /^[0-9a-f-]{36}$/i, 'the URL names the conversation')
      assert.deepEqual(page.consoleErrors, [])
    }),
  )

  it(
    'sends the conversation so far with a follow-up',
    ctx.withPage(async (page) => {
      const first = 'What is the capital of France?'
      const second = 'And of Italy?'
      assert.equal(await askAndWait(page, first), echoOf(first))
      assert.equal(await askAndWait(page, second), echoOf(second))

      assert.deepEqual(await thread(page), [
        `user: ${first}`,
        `assistant: ${echoOf(first)}`,
        `user: ${second}`,
        `assistant: ${echoOf(second)}`,
      ])
      const requests = await ctx.stack.mock.requests()
      assert.equal(requests.length, 2)
      const chat = requests[1].messages
        .filter((m) => m.role !== 'system')
        .map((m) => [m.role, m.content])
      assert.deepEqual(chat, [
        ['user', first],
        ['assistant', echoOf(first)],
        ['user', second],
      ])

      const { body: conv } = await gatewayJson(ctx.stack, `/conv/${conversationIdOf(page)}`)
      const stored = Object.values(conv.mapping).filter((n) => n.message).length
      assert.equal(stored, 4, 'both turns are stored in one conversation')
    }),
  )

  it(
    'sends with Enter, adds a line with Shift+Enter, and sends the chosen model and preset',
    ctx.withPage(async (page) => {
      const { body: config } = await gatewayJson(ctx.stack, '/config')
      assert.equal(config.demo, false)
      assert.equal(await page.getByTestId('demo-banner').count(), 0, 'no demo banner with a real upstream')
      const model = page.getByTestId('model-input')
      if (config.default_model) {
        assert.match(await model.getAttribute('placeholder'), new RegExp(config.default_model.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
      }
      await model.fill('my-test-model')

      const { body: prompts } = await gatewayJson(ctx.stack, '/prompts')
      // `default` is what a turn without a preset gets; choose another one.
      const preset = prompts?.items?.find((p) => p.name !== 'default')
      if (preset) await page.getByTestId('preset-select').selectOption(preset.name)

      const composer = page.getByTestId('composer')
      await composer.fill('first line')
      await composer.press('Shift+Enter')
      await composer.pressSequentially('second line')
      assert.equal(await composer.inputValue(), 'first line\nsecond line')
      assert.equal(await answers(page).count(), 0, 'Shift+Enter does not send')
      await composer.press('Enter')
      await waitIdle(page)
      await page.waitForFunction(() => document.querySelector('[data-testid="message-assistant"]'))
      assert.equal(await answerText(page), 'Echo: first line second line')

      const [request] = await ctx.stack.mock.requests()
      assert.equal(request.model, 'my-test-model')
      if (preset) assert.equal(request.messages[0].role, 'system', 'the preset becomes the system message')
      assert.equal(request.messages.at(-1).content, 'first line\nsecond line')

      // Both choices survive a reload.
      await page.reload()
      assert.equal(await page.getByTestId('model-input').inputValue(), 'my-test-model')
      if (preset) {
        // The preset's option comes with the page's list of presets, fetched after the
        // reload: the choice shows once the list is there.
        const select = '[data-testid="preset-select"]'
        await page.waitForFunction(([s, name]) => document.querySelector(s)?.value === name, [select, preset.name])
        assert.equal(await page.getByTestId('preset-select').inputValue(), preset.name)
      }
    }),
  )
})

describe('demo mode', () => {
  const ctx = useStack({ demo: true })

  it(
    'says clearly that answers are canned',
    ctx.withPage(async (page) => {
      const banner = page.getByTestId('demo-banner')
      await banner.waitFor()
      assert.match(await banner.innerText(), /Demo mode: answers are canned\. Set OPENAI_API_KEY \/ OPENAI_BASE_URL to talk to a real model\./)
      const answer = await askAndWait(page, 'Hello there')
      assert.ok(answer.length > 0, 'the demo provider streams an answer')
    }),
  )
})
