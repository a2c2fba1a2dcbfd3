import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { useStack } from './helpers.js'

const themeOf = (page) => page.evaluate(() => document.documentElement.dataset.theme)
const background = (page) => page.evaluate(() => getComputedStyle(document.body).backgroundColor)

describe('light and dark', () => {
  const ctx = useStack()

  it(
    'follows the system, and the toggle wins and is remembered',
    ctx.withPage(
      async (page) => {
        assert.equal(await themeOf(page), 'dark', 'a dark system gets the dark theme')
        const dark = await background(page)
        await page.getByTestId('theme-toggle').click()
        assert.equal(await themeOf(page), 'light')
        assert.notEqual(await background(page), dark)
        await page.reload()
        await page.getByTestId('composer').waitFor()
        assert.equal(await themeOf(page), 'light', 'the choice survives a reload')
      },
      { colorScheme: 'dark' },
    ),
  )

  it(
    'starts light on a light system',
    ctx.withPage(async (page) => {
      assert.equal(await themeOf(page), 'light')
    }),
  )
})
