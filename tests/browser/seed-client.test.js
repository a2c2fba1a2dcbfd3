// The client that already exists in the wild: the seed's sse.js `startConv`, on a page from
// another origin (http://localhost:<port>) than the gateway (http://127.0.0.1:<port>), so
// CORS, the POST body it sends (empty strings on the first turn) and the frames it reads
// are all checked the way that client meets them.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { ROOT } from './harness.js'
import { echoOf, gatewayJson, useStack } from './helpers.js'

const require = createRequire(import.meta.url)
const files = {
  '/': ['text/html', readFileSync(join(ROOT, 'tests/browser/seed-client/index.html'))],
  '/sse.js': ['text/javascript', readFileSync(require.resolve('sse.js'))],
}

describe('the seed client', () => {
  const ctx = useStack()
  let server
  let origin

  before(async () => {
    server = createServer((req, res) => {
      const file = files[new URL(req.url, 'http://x').pathname]
      if (!file) return res.writeHead(204).end() // e.g. favicon.ico: nothing, and no console error
      res.writeHead(200, { 'Content-Type': file[0], 'Cache-Control': 'no-store' }).end(file[1])
    })
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    origin = `http://localhost:${server.address().port}`
  })
  after(() => new Promise((resolve) => (server ? server.close(resolve) : resolve())))

  it(
    'streams two turns of one conversation from another origin',
    ctx.withPage(async (page) => {
      const consoleErrors = []
      page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()))
      await page.goto(`${origin}/?gateway=${encodeURIComponent(ctx.stack.gatewayUrl)}`)
      await page.waitForFunction(() => window.app)

      const turn = async (question, n) => {
        await page.evaluate((q) => {
          window.app.question = q
          window.app.startConv()
        }, question)
        await page.waitForFunction((count) => window.streamsClosed >= count, n)
        return page.evaluate(() => ({ ...window.app, shown: document.getElementById('answer').textContent }))
      }

      const first = await turn('Hello from the seed client', 1)
      assert.equal(first.answer, echoOf('Hello from the seed client'))
      assert.equal(first.shown, first.answer)
      assert.match(first.conversationId, /^[0-9a-f-]{36}$/i)
      assert.ok(first.parentMessageID, 'the answer has an id')

      const second = await turn('And a second turn', 2)
      assert.equal(second.answer, echoOf('And a second turn'))
      assert.equal(second.conversationId, first.conversationId, 'the same conversation goes on')
      assert.notEqual(second.parentMessageID, first.parentMessageID)

      const requests = await ctx.stack.mock.requests()
      assert.equal(requests.length, 2)
      const history = requests[1].messages.filter((m) => m.role !== 'system').map((m) => [m.role, m.content])
      assert.deepEqual(history, [
        ['user', 'Hello from the seed client'],
        ['assistant', echoOf('Hello from the seed client')],
        ['user', 'And a second turn'],
      ])

      const { body: conv } = await gatewayJson(ctx.stack, `/conv/${first.conversationId}`)
      const secondQuestion = Object.values(conv.mapping).find((n) => n.message?.content?.parts?.[0] === 'And a second turn')
      assert.equal(secondQuestion.parent, first.parentMessageID, 'the second question answers the first answer')
      assert.equal(conv.current_node, second.parentMessageID)

      assert.deepEqual(consoleErrors, [])
    }),
  )
})
