import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { askAndWait, echoOf, eventually, gatewayJson, useStack } from './helpers.js'

const KEY = 'sk-browser-tester-0001'

describe('client keys', () => {
  const ctx = useStack({ gatewayArgs: ['--api-keys', `tester:${KEY}`] })

  it(
    'asks for the key on 401, works once it is given, and remembers it across a reload',
    ctx.withPage(async (page) => {
      const form = page.getByTestId('key-form')
      await form.waitFor()
      await page.getByTestId('key-input').fill(KEY)
      await page.getByTestId('key-submit').click()
      await form.waitFor({ state: 'detached' })

      assert.equal(await askAndWait(page, 'hello there'), echoOf('hello there'))
      const list = await gatewayJson(ctx.stack, '/conversations', { headers: { Authorization: `Bearer ${KEY}` } })
      assert.equal(list.body.items.length, 1, 'the turn went through with the key')

      await page.reload()
      await page.getByTestId('composer').waitFor()
      await eventually(
        async () => (await page.getByTestId('sidebar').innerText()).includes('hello there'),
        'the list loads with the remembered key',
      )
      assert.equal(await form.count(), 0, 'no key is asked for again')
      assert.equal(await askAndWait(page, 'and again'), echoOf('and again'))
    }),
  )
})
