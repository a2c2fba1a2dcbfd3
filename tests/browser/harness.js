// Starts what a browser test needs, each on a free port: the mock upstream
// (target/debug/mockllm), the gateway pointed at it (target/debug/chatgate, memory store,
// serving web/dist), and Debian's Chromium through playwright-core.
import { spawn } from 'node:child_process'
import { mkdirSync, writeFileSync, existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
export const ARTIFACTS = join(ROOT, 'tests/browser/artifacts')
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const START_TIMEOUT_MS = 30_000

/**
 * Runs `command` and resolves with the URL it prints on stdout once serving
 * (`<name> listening on http://…`). Output is kept for the failure report.
 */
function startServer(name, command, args) {
  // The command line names the upstream; a developer's own key must not leak into tests.
  const env = { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' }
  delete env.OPENAI_API_KEY
  delete env.OPENAI_BASE_URL
  const child = spawn(command, args, {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const log = []
  const pattern = new RegExp(`${name} listening on (http://\\S+)`)
  const url = new Promise((resolveUrl, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${name} did not say it was listening within ${START_TIMEOUT_MS} ms:\n${log.join('')}`)),
      START_TIMEOUT_MS,
    )
    let buffered = ''
    child.stdout.on('data', (chunk) => {
      log.push(chunk.toString())
      buffered += chunk.toString()
      const match = pattern.exec(buffered)
      if (match) {
        clearTimeout(timer)
        resolveUrl(match[1].replace(/\/+$/, ''))
      }
    })
    child.stderr.on('data', (chunk) => log.push(chunk.toString()))
    child.on('error', (error) => {
      clearTimeout(timer)
      reject(new Error(`could not start ${command}: ${error.message}`))
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`${name} exited (${code ?? signal}) before listening:\n${log.join('')}`))
    })
  })
  return { child, url, log }
}

function stopServer(server) {
  if (!server || server.child.exitCode !== null || server.child.signalCode !== null) return Promise.resolve()
  return new Promise((done) => {
    const timer = setTimeout(() => server.child.kill('SIGKILL'), 3000)
    server.child.once('exit', () => {
      clearTimeout(timer)
      done()
    })
    server.child.kill('SIGTERM')
  })
}

/** The mock upstream's control endpoints. */
function mockControl(base) {
  const json = async (method, path) => {
    const response = await fetch(base + path, { method })
    if (!response.ok) throw new Error(`${method} ${path} on the mock: HTTP ${response.status}`)
    const text = await response.text()
    return text ? JSON.parse(text) : null
  }
  return {
    url: base,
    requests: () => json('GET', '/_mock/requests'),
    stats: () => json('GET', '/_mock/stats'),
    reset: () => json('POST', '/_mock/reset'),
  }
}

/**
 * Starts mock, gateway and browser. Call `stop()` at the end (the test files do it in
 * `after`). With `demo`, the gateway gets no upstream at all and runs its demo provider;
 * `gatewayArgs` are more flags for it (client keys, limits).
 */
export async function startStack({ demo = false, gatewayArgs = [] } = {}) {
  // cargo's target directory, wherever CARGO_TARGET_DIR puts it
  const debug = join(resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target'), 'debug')
  const mockBin = join(debug, 'mockllm')
  const gatewayBin = process.env.CHATGATE_BIN || join(debug, 'chatgate')
  for (const bin of [mockBin, gatewayBin]) {
    if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build --bins --workspace\` first`)
  }
  if (!existsSync(join(ROOT, 'web/dist/index.html'))) {
    throw new Error('web/dist is missing: run `npm run build` in web/ first')
  }
  const servers = []
  let browser = null
  const stop = async () => {
    await browser?.close().catch(() => {})
    await Promise.all(servers.map(stopServer))
  }
  try {
    const mockServer = startServer('mockllm', mockBin, ['--listen', '127.0.0.1:0'])
    servers.push(mockServer)
    const mockUrl = await mockServer.url
    const upstream = demo ? [] : ['--upstream-url', `${mockUrl}/v1`, '--upstream-key', 'test-key']
    const gateway = startServer('chatgate', gatewayBin, [
      '--listen', '127.0.0.1:0',
      ...upstream,
      '--store', 'memory',
      '--web-dir', 'web/dist',
      ...gatewayArgs,
    ])
    servers.push(gateway)
    const gatewayUrl = await gateway.url
    browser = await launchBrowser()
    return {
      gatewayUrl,
      mock: mockControl(mockUrl),
      browser,
      logs: () => servers.map((s) => s.log.join('')).join('\n'),
      stop,
    }
  } catch (error) {
    await stop()
    throw error
  }
}

export function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get update && apt-get install -y chromium`)
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-quic',
      '--disable-component-update',
      '--disable-sync',
    ],
  })
}

/** A fresh browser context (own localStorage) with a page; console errors are collected. */
export async function newPage(stack, { viewport = { width: 1280, height: 800 }, colorScheme = 'light', deviceScaleFactor = 1 } = {}) {
  const context = await stack.browser.newContext({ viewport, colorScheme, deviceScaleFactor })
  const page = await context.newPage()
  page.setDefaultTimeout(15_000)
  page.consoleErrors = []
  page.on('pageerror', (error) => page.consoleErrors.push(String(error)))
  return page
}

/** Saves a screenshot and the server logs of a failed test under tests/browser/artifacts. */
export async function saveFailure(stack, page, name) {
  mkdirSync(ARTIFACTS, { recursive: true })
  const base = join(ARTIFACTS, name.replace(/[^a-z0-9-]+/gi, '_'))
  await page?.screenshot({ path: `${base}.png`, fullPage: true }).catch(() => {})
  writeFileSync(`${base}.log`, stack?.logs() ?? '')
}
