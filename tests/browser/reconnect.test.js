// A connection that drops mid-answer does not lose the answer. Between the browser and the
// gateway sits a TCP proxy that cuts the first answer stream; the client connects again
// with the id of the last frame it had and must end with exactly the answer, nothing lost
// and nothing doubled. Two clients: the plainest one, a page on another origin that sends
// with `fetch(POST /conv {background: true})` and listens with the browser's own
// EventSource (which reconnects by itself after the stream's `retry: 1000`, sending
// Last-Event-ID), and the chat page (which reconnects with `?last_event_id=`).
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import net from 'node:net'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { ROOT } from './harness.js'
import { answerText, ask, conversationIdOf, echoOf, rendersUntilIdle, storedMessage, useStack } from './helpers.js'

const PAGE = readFileSync(join(ROOT, 'tests/browser/eventsource-client/index.html'))

/** Serves the client page; its origin is `http://localhost:<port>`, the gateway's is 127.0.0.1. */
async function startSite() {
  const server = createServer((req, res) => {
    if (new URL(req.url, 'http://x').pathname !== '/') return res.writeHead(204).end()
    res.writeHead(200, { 'Content-Type': 'text/html', 'Cache-Control': 'no-store' }).end(PAGE)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, origin: `http://localhost:${server.address().port}` }
}

// Request heads as the browser sends them over a connection (bodies are skipped over).
const REQUEST_HEAD = /(?:GET|POST|OPTIONS|DELETE) \S+ HTTP\/1\.1\r\n(?:[^\r\n]+\r\n)*\r\n/g

/**
 * A TCP proxy to `target` that cuts the connection carrying the first answer stream as soon
 * as the gateway sends `cutAt`, without passing that chunk on. It keeps the path and the
 * Last-Event-ID header of every stream request it carries.
 */
async function startCuttingProxy(target, cutAt) {
  const { hostname, port } = new URL(target)
  const proxy = { url: '', cut: false, streamRequests: [], sockets: new Set() }

  const server = net.createServer((browser) => {
    const gateway = net.connect(Number(port), hostname)
    for (const socket of [browser, gateway]) {
      proxy.sockets.add(socket)
      socket.on('close', () => proxy.sockets.delete(socket))
    }
    browser.on('error', () => gateway.destroy())
    gateway.on('error', () => browser.destroy())
    browser.on('close', () => gateway.destroy())
    gateway.on('close', () => browser.destroy())

    let sent = ''
    let scanned = 0
    let watching = false // this connection carries the first stream, not cut yet
    let received = ''
    browser.on('data', (chunk) => {
      sent += chunk.toString('latin1')
      REQUEST_HEAD.lastIndex = scanned
      for (let m; (m = REQUEST_HEAD.exec(sent)); ) {
        scanned = REQUEST_HEAD.lastIndex
        const [, path] = /^GET (\S+)/.exec(m[0]) || []
        if (!path || !/^\/conv\/[^/]+\/stream/.test(path)) continue
        const lastEventId = /^last-event-id: *(.*)\r$/im.exec(m[0])?.[1] ?? null
        proxy.streamRequests.push({ path, lastEventId })
        if (proxy.streamRequests.length === 1) watching = true
      }
      gateway.write(chunk)
    })
    gateway.on('data', (chunk) => {
      if (watching && !proxy.cut) {
        received += chunk.toString('latin1')
        if (received.includes(cutAt)) {
          proxy.cut = true
          browser.destroy()
          gateway.destroy()
          return
        }
      }
      browser.write(chunk)
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  proxy.url = `http://127.0.0.1:${server.address().port}`
  proxy.close = () => {
    for (const socket of proxy.sockets) socket.destroy()
    return new Promise((resolve) => server.close(resolve))
  }
  return proxy
}

describe('a stream cut mid-answer', () => {
  const ctx = useStack()
  let site

  before(async () => {
    site = await startSite()
  })
  after(() => new Promise((resolve) => (site ? site.server.close(resolve) : resolve())))

  /** A test body that gets a fresh cutting proxy in front of the gateway. */
  const withProxy = (fn) =>
    ctx.withPage(async (page, t) => {
      const proxy = await startCuttingProxy(ctx.stack.gatewayUrl, ' w8"')
      try {
        await fn(page, proxy, t)
      } finally {
        await proxy.close()
      }
    })

  it(
    'a native EventSource client on another origin reconnects by itself and ends with the exact text',
    withProxy(async (page, proxy) => {
      const consoleErrors = []
      page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()))
      await page.goto(`${site.origin}/?gateway=${encodeURIComponent(proxy.url)}`)
      await page.waitForFunction(() => window.ask)

      const question = 'Listen through a proxy [mock:words=50] [mock:delay=60]'
      await page.evaluate((q) => window.ask(q), question)
      await page.waitForFunction(() => window.client.done, null, { timeout: 20_000 })
      const client = await page.evaluate(() => window.client)

      // The 202 named everything before the first word.
      assert.equal(client.accepted.status, 202)
      const { conversation_id: conversationId, message_id: messageId, stream_url: streamUrl } = client.accepted.body
      assert.match(conversationId, /^[0-9a-f-]{36}$/i)
      assert.ok(messageId, 'the 202 names the answer')
      assert.ok(streamUrl.startsWith(`/conv/${conversationId}/stream`), `stream_url: ${streamUrl}`)

      // The stream was cut mid-answer once, and EventSource came back on its own.
      assert.ok(proxy.cut, 'the proxy cut the stream')
      assert.equal(client.errors.length, 1, 'one dropped connection')
      const [drop] = client.errors
      assert.ok(drop.text.includes(' w1') && !drop.text.includes(' w8'), `cut mid-answer: "${drop.text}"`)
      assert.equal(client.opens.length, 2, 'a second connection opened')
      const pause = client.opens[1] - drop.at
      assert.ok(pause > 800 && pause < 2500, `reconnected after about retry: 1000 (${Math.round(pause)} ms)`)

      // It asked for the same answer again, from the last frame it had.
      assert.equal(proxy.streamRequests.length, 2)
      const [first, again] = proxy.streamRequests
      assert.equal(first.lastEventId, null)
      assert.equal(again.path, first.path)
      assert.ok(drop.lastId > 0)
      assert.equal(again.lastEventId, String(drop.lastId))

      // Nothing lost, nothing doubled: frame ids never go back, and the text is exact.
      client.ids.forEach((id, i) => assert.ok(i === 0 || id >= client.ids[i - 1], `ids go back: ${client.ids}`))
      assert.equal(client.text, echoOf(question))
      assert.equal(client.status, 'finished_successfully')
      assert.equal(await page.locator('#answer').textContent(), client.text)
      const stored = await storedMessage(ctx.stack, conversationId, messageId)
      assert.equal(stored.status, 'finished_successfully')
      assert.equal(stored.content.parts[0], client.text)

      // The answer went on while nobody was listening: one upstream request, run to its end.
      const stats = await ctx.stack.mock.stats()
      assert.deepEqual([stats.requests, stats.completed, stats.cancelled], [1, 1, 0])
      // Chromium logs the cut connection itself; nothing else may go wrong.
      const others = consoleErrors.filter((e) => !/net::ERR_(INCOMPLETE_CHUNKED_ENCODING|CONNECTION_RESET)/.test(e))
      assert.deepEqual(others, [])
    }),
  )

  it(
    'the chat page reconnects with the last frame id it had and ends with the exact text',
    withProxy(async (page, proxy) => {
      await page.goto(`${proxy.url}/`)
      await page.getByTestId('composer').waitFor()
      const question = 'Keep going through a cut [mock:words=50] [mock:delay=60]'
      await ask(page, question)
      await page.getByTestId('stop').waitFor()
      const seen = await rendersUntilIdle(page)
      const final = await answerText(page)

      assert.ok(proxy.cut, 'the proxy cut the stream')
      assert.equal(proxy.streamRequests.length, 2, 'one reconnect')
      const [first, again] = proxy.streamRequests
      assert.equal(new URL(first.path, 'http://x').searchParams.get('last_event_id'), null)
      const resumeAt = Number(new URL(again.path, 'http://x').searchParams.get('last_event_id'))
      assert.ok(resumeAt > 0, `the reconnect names the last frame it had: ${again.path}`)

      assert.equal(final, echoOf(question))
      for (const text of seen) assert.ok(final.startsWith(text), `"${text}" is not a prefix of the answer`)
      assert.equal(await page.getByTestId('error').count(), 0, 'no error is shown')
      const answer = page.getByTestId('message-assistant').last()
      assert.equal(await answer.getAttribute('data-status'), 'finished_successfully')
      const stored = await storedMessage(ctx.stack, conversationIdOf(page), await answer.getAttribute('data-message-id'))
      assert.equal(stored.content.parts[0], final)
      assert.deepEqual(page.consoleErrors, [])
    }),
  )
})
