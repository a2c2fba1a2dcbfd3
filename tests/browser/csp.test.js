// The page runs under the gateway's Content-Security-Policy (no inline script, nothing
// from elsewhere, no framing) without the browser blocking anything it needs.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { newPage, saveFailure } from './harness.js'
import { askAndWait, useStack } from './helpers.js'

describe('content security policy', () => {
  const ctx = useStack()

  it('streams, renders Markdown and switches theme with nothing blocked', async (t) => {
    const page = await newPage(ctx.stack)
    const blocked = []
    page.on('console', (message) => {
      if (/Content Security Policy/i.test(message.text())) blocked.push(message.text())
    })
    // Registered before the page's own script runs, so that nothing it does is missed.
    await page.addInitScript(() => {
      window.__violations = []
      document.addEventListener('securitypolicyviolation', (e) =>
        window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`),
      )
    })
    try {
      const response = await page.goto(`${ctx.stack.gatewayUrl}/`)
      const policy = response.headers()['content-security-policy'] || ''
      assert.match(policy, /script-src 'self'(;|$)/, policy)
      assert.match(policy, /frame-ancestors 'none'/, policy)
      await page.getByTestId('composer').waitFor()

      const answer = await askAndWait(page, 'Some **bold** and `code` please [mock:words=5]')
      assert.ok(answer.includes('bold'), answer)
      assert.equal(await page.getByTestId('message-assistant').last().locator('strong').count(), 1)
      // The composer grows with its text through an inline style.
      const composer = page.getByTestId('composer')
      await composer.fill('one\ntwo\nthree\nfour\nfive')
      await page.getByTestId('theme-toggle').click()
      await page.waitForTimeout(200)

      assert.deepEqual(await page.evaluate(() => window.__violations), [])
      assert.deepEqual(blocked, [])
      assert.deepEqual(page.consoleErrors, [])
    } catch (error) {
      await saveFailure(ctx.stack, page, t.name)
      throw error
    } finally {
      await page.context().close()
    }
  })
})
