// Takes the README's screenshots of the real page against the mock upstream:
//   docs/screenshots/conversation.png  a conversation, desktop, light
//   docs/screenshots/dark-phone.png    the same, dark, at phone size
// Run with `npm run screenshots` in tests/browser (after building web/ and the binaries).
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { ROOT, startStack } from './harness.js'
import { askAndWait, openChat } from './helpers.js'

const OUT = join(ROOT, 'docs/screenshots')

const ANSWER = `Use a \`BufReader\` and its \`lines()\` iterator. It reads the file in chunks, so memory stays flat even for large logs:

\`\`\`rust
use std::fs::File;
use std::io::{self, BufRead, BufReader};

fn main() -> io::Result<()> {
    let file = File::open("server.log")?;
    for line in BufReader::new(file).lines() {
        println!("{}", line?);
    }
    Ok(())
}
\`\`\`

A few things worth knowing:

- \`lines()\` strips the trailing \`\\n\` (and \`\\r\\n\`).
- Each item is an \`io::Result<String>\`, so a bad byte sequence surfaces as an error instead of a panic.`

/** An OpenAI-style stream of `text`, a few words per chunk, for the mock's script queue. */
function scriptedStream(text) {
  const chunk = (delta, finish = null) =>
    `data: ${JSON.stringify({
      id: 'chatcmpl-screenshot',
      object: 'chat.completion.chunk',
      created: 1732170000,
      model: 'mock-model',
      choices: [{ index: 0, delta, finish_reason: finish }],
    })}\n\n`
  const pieces = text.match(/\S+\s*|\s+/g) || []
  const parts = [{ delay_ms: 0, text: chunk({ role: 'assistant', content: '' }) }]
  for (let i = 0; i < pieces.length; i += 4) {
    parts.push({ delay_ms: 5, text: chunk({ content: pieces.slice(i, i + 4).join('') }) })
  }
  parts.push({ delay_ms: 0, text: chunk({}, 'stop') })
  parts.push({ delay_ms: 0, text: 'data: [DONE]\n\n' })
  return { status: 200, headers: [['content-type', 'text/event-stream']], parts }
}

async function enqueue(stack, text) {
  const response = await fetch(`${stack.mock.url}/_mock/script`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(scriptedStream(text)),
  })
  if (!response.ok) throw new Error(`the mock refused a script: HTTP ${response.status}`)
}

const stack = await startStack()
try {
  mkdirSync(OUT, { recursive: true })
  const page = await openChat(stack)
  for (const topic of ['Plan a weekend in Lisbon', 'Explain Rust lifetimes simply', 'Draft a polite follow-up email']) {
    await askAndWait(page, topic)
    await page.getByTestId('new-chat').click()
  }
  await enqueue(stack, ANSWER)
  await askAndWait(page, 'How do I read a large log file line by line in Rust?')
  const hash = new URL(page.url()).hash
  const toTop = (p) => p.getByTestId('messages').evaluate((el) => (el.scrollTop = 0))
  await toTop(page)
  await page.mouse.move(0, 0)
  await page.screenshot({ path: join(OUT, 'conversation.png') })
  await page.context().close()

  const phone = await openChat(stack, {
    hash,
    viewport: { width: 390, height: 844 },
    colorScheme: 'dark',
    deviceScaleFactor: 2,
  })
  await phone.getByTestId('message-assistant').waitFor()
  await phone.waitForTimeout(300)
  await toTop(phone)
  await phone.screenshot({ path: join(OUT, 'dark-phone.png') })
  console.log(`wrote ${join(OUT, 'conversation.png')} and ${join(OUT, 'dark-phone.png')}`)
} finally {
  await stack.stop()
}
