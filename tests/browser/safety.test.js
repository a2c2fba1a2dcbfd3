import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { answers, askAndWait, useStack, userMessages } from './helpers.js'

const img = '<img src=x onerror="window.__xss=1">'
const script = '<script>window.__xss=2</script>'

describe('untrusted text', () => {
  const ctx = useStack()

  it(
    'shows HTML in answers and questions as text, and runs none of it',
    ctx.withPage(async (page) => {
      const answer = await askAndWait(page, `Look: ${img} and ${script} and **bold**`)
      assert.ok(answer.includes(img), `the <img> tag is shown as text: ${answer}`)
      assert.ok(answer.includes(script), `the <script> tag is shown as text: ${answer}`)
      await checkInert(page)

      // Markdown itself still renders.
      assert.equal(await answers(page).last().locator('strong').innerText(), 'bold')

      // The stored conversation renders the same way when reopened.
      await page.reload()
      await answers(page).first().waitFor()
      await page.waitForTimeout(300)
      await checkInert(page)
      assert.ok((await userMessages(page).first().innerText()).includes(img))
    }),
  )

  it(
    'does not follow javascript: links in Markdown',
    ctx.withPage(async (page) => {
      await askAndWait(page, 'Click [here](javascript:window.__xss=3) please')
      const hrefs = await answers(page).last().locator('a').evaluateAll((links) => links.map((a) => a.getAttribute('href')))
      assert.ok(hrefs.every((h) => !h || !h.toLowerCase().startsWith('javascript:')), `links: ${hrefs}`)
      await answers(page).last().getByText('here').click()
      await page.waitForTimeout(200)
      assert.equal(await page.evaluate(() => window.__xss), undefined)
    }),
  )
})

async function checkInert(page) {
  const messages = page.locator('[data-testid="messages"]')
  assert.equal(await messages.locator('img').count(), 0, 'no <img> element was created')
  assert.equal(await messages.locator('script').count(), 0, 'no <script> element was created')
  assert.equal(await page.evaluate(() => window.__xss), undefined, 'no injected script ran')
}
