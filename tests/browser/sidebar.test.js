import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { askAndWait, conversationIdOf, echoOf, eventually, gatewayJson, thread, useStack } from './helpers.js'

const items = (page) => page.getByTestId('conversation-item')
const itemIds = (page) =>
  page.evaluate(() => [...document.querySelectorAll('[data-testid="conversation-item"]')].map((el) => el.dataset.conversationId))

describe('the conversations sidebar', () => {
  const ctx = useStack()

  it(
    'lists conversations newest first, opens one, keeps it across a reload, and deletes it',
    ctx.withPage(async (page) => {
      await askAndWait(page, 'First conversation about cats')
      const firstId = conversationIdOf(page)
      await page.getByTestId('new-chat').click()
      assert.equal(await page.getByTestId('message-user').count(), 0, 'a new chat starts empty')
      await askAndWait(page, 'Second conversation about dogs')
      const secondId = conversationIdOf(page)
      assert.notEqual(firstId, secondId)

      await eventually(async () => (await itemIds(page)).join() === [secondId, firstId].join(), 'both conversations listed, newest first')
      const { body: list } = await gatewayJson(ctx.stack, '/conversations')
      assert.deepEqual(list.items.map((i) => i.conversation_id), [secondId, firstId])

      // Open the older one from the sidebar.
      await items(page).nth(1).locator('a').click()
      await eventually(async () => conversationIdOf(page) === firstId, 'the URL to name the opened conversation')
      await eventually(
        async () => (await thread(page)).join('|') === `user: First conversation about cats|assistant: ${echoOf('First conversation about cats')}`,
        'the first conversation shown',
      )
      assert.equal(await items(page).nth(1).getAttribute('class').then((c) => c.includes('active')), true)

      // A reload keeps it open.
      await page.reload()
      await page.getByTestId('message-assistant').waitFor()
      assert.equal(conversationIdOf(page), firstId)
      assert.deepEqual(await thread(page), [
        'user: First conversation about cats',
        `assistant: ${echoOf('First conversation about cats')}`,
      ])

      // Delete the open conversation: it leaves the list and the page starts a new chat.
      const item = page.locator(`[data-testid="conversation-item"][data-conversation-id="${firstId}"]`)
      await item.hover()
      await item.getByTestId('delete-conversation').click()
      await item.getByTestId('confirm-delete').click()
      await eventually(async () => (await itemIds(page)).join() === secondId, 'the deleted conversation gone from the list')
      assert.equal(await page.getByTestId('message-user').count(), 0)
      assert.equal(conversationIdOf(page), null)
      const { status } = await gatewayJson(ctx.stack, `/conv/${firstId}`)
      assert.equal(status, 404)

      // Opening a deleted conversation by its URL says so instead of failing silently.
      await page.goto(`${ctx.stack.gatewayUrl}/#/c/${firstId}`)
      await page.getByTestId('notice').waitFor()
      assert.match(await page.getByTestId('notice').innerText(), /no longer exists/)
    }),
  )

  it(
    'collapses behind a button at phone width',
    ctx.withPage(
      async (page) => {
        await askAndWait(page, 'Hello from a phone')
        const sidebar = page.getByTestId('sidebar')
        assert.equal(await isOnScreen(sidebar), false, 'the sidebar starts hidden')
        await page.getByTestId('sidebar-toggle').click()
        await eventually(() => isOnScreen(sidebar), 'the sidebar to slide in')
        await page.getByTestId('new-chat').click()
        await eventually(async () => !(await isOnScreen(sidebar)), 'the sidebar to close')
        assert.equal(await page.getByTestId('message-user').count(), 0)
        const width = await page.evaluate(() => document.documentElement.scrollWidth)
        assert.ok(width <= 390, `no horizontal scrolling (page is ${width}px wide)`)
      },
      { viewport: { width: 390, height: 844 } },
    ),
  )
})

async function isOnScreen(locator) {
  const box = await locator.boundingBox()
  return !!box && box.x + box.width > 10
}
