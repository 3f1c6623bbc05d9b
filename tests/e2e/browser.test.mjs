// The demo page (demo/) in real headless Chromium, through the committed load
// balancer config (deploy/nginx.conf in a real nginx, Docker service names
// swapped for local ports by nginx.mjs), in front of two `y-redis server`
// processes with token auth from `y-redis auth-example`, and one
// `y-redis worker` persisting to a fresh Postgres database (filesystem
// storage when Postgres is not there). Each page loads, gets its token and
// opens its websocket on nginx's one origin, as in docker-compose.yml; nginx
// puts the two pages on different servers, which /metrics confirms.
//
// Checks: typing both ways and at once through CodeMirror's contenteditable,
// each page draws the other user's cursor and selection (y-codemirror.next)
// with that user's name and colour, the presence list, the connection status
// (connected; disconnected and back when a server stops), persistence.
//
// Needs Debian's chromium and nginx: apt-get install -y chromium nginx
// Screenshots: tests/e2e/artifacts/browser-*.png

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { Harness, freePort, randomHex, waitFor } from './harness.mjs'
import {
  ARTIFACTS_DIR, assertChromium, buildDemo, countStoredRows, createScratchDatabase, keygen,
  launchChromium, metric, scrapeMetrics, startAuthExample, startStaticServer
} from './stack.mjs'
import { NGINX_BIN, startNginx } from './nginx.mjs'

const h = new Harness('browser')
const room = `browser-${randomHex(4)}`
/** @type {any} */ let browser = null
/** @type {Map<string, any>} user name -> page */
const pages = new Map()
/** @type {string[]} */ const consoleLines = []
let web = null
let db = null
let auth = null
let lb = null
/** @type {import('./harness.mjs').ServerProc[]} */
let servers = []
let workerPort = 0

before(async () => {
  assertChromium()
  if (!NGINX_BIN) throw new Error('nginx is not installed: apt-get install -y nginx (or set NGINX_BIN)')
  const dist = buildDemo()
  await h.setup(0)
  const keys = keygen()
  db = await createScratchDatabase('browser')
  const storageEnv = db ? { POSTGRES: db.url } : {}
  if (db) h.cleanups.push(() => db.drop())
  auth = await startAuthExample({ prefix: h.prefix, privateKey: keys.AUTH_PRIVATE_KEY, tag: h.tag, workDir: h.workDir })
  h.servers.push(auth.proc)
  const serverEnv = {
    ...storageEnv,
    AUTH_DISABLED: 'false',
    AUTH_PUBLIC_KEY: keys.AUTH_PUBLIC_KEY,
    AUTH_PERM_CALLBACK: `${auth.url}/auth/perm`
  }
  servers = [await h.startServer('s1', serverEnv), await h.startServer('s2', serverEnv)]
  workerPort = await freePort()
  await h.startWorker('w1', { ...storageEnv, WORKER_PORT: String(workerPort) })
  web = await startStaticServer(dist, auth.url)
  h.cleanups.push(() => web.close())
  lb = await startNginx({
    dir: path.join(h.workDir, 'nginx'),
    servers: servers.map((s) => s.port),
    auth: auth.port,
    demo: Number(new URL(web.url).port)
  })
  h.cleanups.push(() => lb.stop())
  browser = await launchChromium()
})

after(async () => {
  if (h.failed && pages.size) {
    fs.mkdirSync(ARTIFACTS_DIR, { recursive: true })
    for (const [user, p] of pages) {
      try { await p.screenshot({ path: path.join(ARTIFACTS_DIR, `browser-failure-${user}.png`) }) } catch {}
    }
  }
  if (browser) { try { await browser.close() } catch {} }
  await h.teardown()
})

// Chromium prints failed websocket URLs, and those carry the token.
const redact = (s) => s.replace(/yauth=[^&\s'"]+/g, 'yauth=<redacted>')

/** The demo through the load balancer, in its own browser context (no shared storage). */
async function openDemo (user) {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } })
  const page = await context.newPage()
  page.on('console', (m) => consoleLines.push(redact(`[${user} console.${m.type()}] ${m.text()}`)))
  page.on('pageerror', (e) => consoleLines.push(redact(`[${user} pageerror] ${e.message}`)))
  // Record every status the page shows from its first script on, so a short
  // "disconnected" is not missed.
  await context.addInitScript(() => {
    window.statusHistory = []
    new MutationObserver((records) => {
      for (const r of records) {
        const status = /** @type {HTMLElement} */ (r.target).dataset.status
        if (r.target.id === 'status' && window.statusHistory.at(-1) !== status) window.statusHistory.push(status)
      }
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-status'] })
  })
  await page.goto(`${lb.url}/?user=${encodeURIComponent(user)}#${room}`)
  await waitForPage(async () => {
    const s = await statusOf(page)
    return s.status === 'connected' && s.synced === 'true'
  }, async () => `${user}'s page to be connected and synced (status: ${JSON.stringify(await statusOf(page).catch(() => null))})`)
  return page
}

const statusOf = (page) => page.$eval('#status', (el) => ({ status: el.dataset.status, synced: el.dataset.synced, text: el.textContent }))

async function waitForPage (fn, message, timeout = 15000) {
  let last = ''
  return waitFor(async () => {
    const ok = await fn()
    if (!ok && typeof message === 'function') last = await message()
    return ok
  }, {
    timeout,
    interval: 50,
    message: () => `${typeof message === 'function' ? last : message}\npage console:\n${consoleLines.slice(-30).join('\n')}`
  })
}

/** The text the editor shows, line by line, without the remote carets' name labels. */
const editorText = (page) => page.$$eval('.cm-content > .cm-line', (lines) => lines.map((line) => {
  const copy = line.cloneNode(true)
  copy.querySelectorAll('.cm-ySelectionCaret, .cm-placeholder, .cm-widgetBuffer').forEach((e) => e.remove())
  return copy.textContent
}).join('\n'))

async function expectText (page, user, expected) {
  await waitForPage(async () => (await editorText(page)) === expected,
    async () => `${user}'s editor to show ${JSON.stringify(expected)} (shows ${JSON.stringify(await editorText(page).catch(() => null))})`)
}

/** Remote cursors drawn by y-codemirror.next: name, colour, line and the line's text before the caret. */
const remoteCarets = (page) => page.$$eval('.cm-content .cm-ySelectionCaret', (carets) => carets.map((caret) => {
  const line = caret.closest('.cm-line')
  const range = document.createRange()
  range.setStart(line, 0)
  range.setEndBefore(caret)
  const before = range.cloneContents()
  before.querySelectorAll('.cm-ySelectionCaret, .cm-widgetBuffer').forEach((e) => e.remove())
  const info = caret.querySelector('.cm-ySelectionInfo')
  const box = caret.getBoundingClientRect()
  return {
    name: info ? info.textContent : null,
    labelOpacity: info ? getComputedStyle(info).opacity : null,
    color: getComputedStyle(caret).backgroundColor,
    line: [...line.parentElement.querySelectorAll(':scope > .cm-line')].indexOf(line) + 1,
    before: before.textContent,
    drawn: box.height > 0
  }
}))

/** Remote selections: the highlighted text and its colour. */
const remoteSelections = (page) => page.$$eval('.cm-content .cm-ySelection', (marks) => marks.map((m) => {
  const copy = m.cloneNode(true)
  copy.querySelectorAll('.cm-ySelectionCaret, .cm-widgetBuffer').forEach((e) => e.remove())
  return { text: copy.textContent, color: getComputedStyle(m).backgroundColor }
}))

/** Colour of `user`'s dot in the presence list, as the browser computes it. */
const presenceColor = (page, user) => page.$eval(`#presence li[data-name="${user}"] .dot`, (d) => getComputedStyle(d).backgroundColor)
const presenceNames = (page) => page.$$eval('#presence li', (lis) => lis.map((li) => li.dataset.name))

const rgba = (css) => {
  const n = css.match(/[\d.]+/g).map(Number)
  return { r: n[0], g: n[1], b: n[2], a: n.length > 3 ? n[3] : 1 }
}

/** Open websocket connections per server (the yredis_connections gauge). */
const connectionsPerServer = () => Promise.all(servers.map(async (s) => metric(await scrapeMetrics(s.port), 'yredis_connections')))
const sum = (xs) => xs.reduce((a, b) => a + b, 0)

/**
 * Open `user`'s page and find the server nginx gave its websocket. If that
 * is one in `avoid`, leave the page and open another (nginx round-robins, so
 * the next one lands elsewhere) until one does.
 */
async function openOnServer (user, avoid) {
  for (let attempt = 1; attempt <= 4; attempt++) {
    const before = await connectionsPerServer()
    const page = await openDemo(user)
    const after = await waitFor(async () => {
      const now = await connectionsPerServer()
      return sum(now) === sum(before) + 1 ? now : null
    }, { timeout: 10000, message: () => `one more connection over both servers than ${JSON.stringify(before)}` })
    const server = servers[after.findIndex((n, i) => n > before[i])]
    if (!avoid.includes(server)) {
      pages.set(user, page)
      return server
    }
    console.log(`# ${user}'s page landed on ${server.name} too (attempt ${attempt}); opening another page`)
    // navigating away runs the page's pagehide handler, which disconnects
    await page.goto('about:blank')
    await page.context().close()
    await waitFor(async () => sum(await connectionsPerServer()) === sum(before),
      { timeout: 10000, message: `${user}'s extra page to disconnect` })
  }
  throw new Error(`nginx put ${user}'s page on ${avoid.map((s) => s.name).join(', ')} four times out of four; it should round-robin`)
}

test('demo page through nginx: two browsers on two servers edit one CodeMirror text and see each other', h.wrap(async () => {
  const metricsBefore = await Promise.all(servers.map((s) => scrapeMetrics(s.port)))
  const tasksBefore = metric(await scrapeMetrics(workerPort), 'yredis_worker_tasks_total')

  const aliceServer = await openOnServer('alice', [])
  const bobServer = await openOnServer('bob', [aliceServer])
  assert.notEqual(aliceServer, bobServer)
  const alice = pages.get('alice')
  const bob = pages.get('bob')
  console.log(`# alice on ${aliceServer.name}, bob on ${bobServer.name}`)

  // connection status
  for (const [page, user] of [[alice, 'alice'], [bob, 'bob']]) {
    assert.deepEqual(await statusOf(page), { status: 'connected', synced: 'true', text: 'connected' }, `${user}'s status`)
    assert.equal(await page.isVisible('#status'), true)
    assert.deepEqual(await page.evaluate(() => window.statusHistory), ['connecting', 'connected'], `${user}'s status history`)
  }

  // alice types, bob sees it
  await alice.click('.cm-content')
  await alice.keyboard.type('Hello from Alice')
  await expectText(bob, 'bob', 'Hello from Alice')

  // bob types at the end and on a new line, alice sees it
  await bob.click('.cm-content')
  await bob.keyboard.press('Control+End')
  await bob.keyboard.type(' and Bob')
  await bob.keyboard.press('Enter')
  await bob.keyboard.type('second line by Bob')
  await expectText(alice, 'alice', 'Hello from Alice and Bob\nsecond line by Bob')

  // each user has a colour of their own
  const aliceColor = rgba(await presenceColor(alice, 'alice'))
  const bobColor = rgba(await presenceColor(alice, 'bob'))
  assert.notDeepEqual(aliceColor, bobColor, 'alice and bob have different colours')

  // alice sees bob's cursor where he stopped typing: end of line 2, his name, his colour
  await waitForPage(async () => {
    const c = await remoteCarets(alice)
    return c.length === 1 && c[0].name === 'bob' && c[0].line === 2 && c[0].before === 'second line by Bob'
  }, async () => `bob's cursor at the end of line 2 on alice's page (carets: ${JSON.stringify(await remoteCarets(alice))})`)
  const bobCaret = (await remoteCarets(alice))[0]
  assert.deepEqual(rgba(bobCaret.color), bobColor, `bob's caret colour ${bobCaret.color}`)
  assert.equal(bobCaret.labelOpacity, '1', 'the name label of a remote cursor is shown')
  assert.ok(bobCaret.drawn, 'bob\'s caret has a size on screen')

  // alice selects "Hello": bob sees the selection in her light colour and her cursor after it
  await alice.keyboard.press('Control+Home')
  for (let i = 0; i < 5; i++) await alice.keyboard.press('Shift+ArrowRight')
  await waitForPage(async () => {
    const c = await remoteCarets(bob)
    const s = await remoteSelections(bob)
    return c.length === 1 && c[0].name === 'alice' && c[0].line === 1 && c[0].before === 'Hello' &&
      s.map((x) => x.text).join('') === 'Hello'
  }, async () => `alice's selection of "Hello" on bob's page (carets: ${JSON.stringify(await remoteCarets(bob))}, ` +
    `selections: ${JSON.stringify(await remoteSelections(bob))})`)
  const aliceCaret = (await remoteCarets(bob))[0]
  assert.deepEqual(rgba(aliceCaret.color), aliceColor, `alice's caret colour ${aliceCaret.color}`)
  for (const sel of await remoteSelections(bob)) {
    const c = rgba(sel.color)
    assert.deepEqual({ r: c.r, g: c.g, b: c.b }, { r: aliceColor.r, g: aliceColor.g, b: aliceColor.b }, `selection colour ${sel.color}`)
    assert.ok(c.a > 0 && c.a < 1, `a selection is translucent (colorLight): ${sel.color}`)
  }

  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true })
  await alice.screenshot({ path: path.join(ARTIFACTS_DIR, 'browser-alice.png') })
  await bob.screenshot({ path: path.join(ARTIFACTS_DIR, 'browser-bob.png') })

  // both type at once, on different lines
  await alice.keyboard.press('End')
  await Promise.all([
    alice.keyboard.type(' [alice was here]', { delay: 15 }),
    bob.keyboard.type(' [so was bob]', { delay: 15 })
  ])
  const both = 'Hello from Alice and Bob [alice was here]\nsecond line by Bob [so was bob]'
  await expectText(alice, 'alice', both)
  await expectText(bob, 'bob', both)

  // presence: each page lists both users, itself marked
  for (const [page, user] of [[alice, 'alice'], [bob, 'bob']]) {
    await waitForPage(async () => JSON.stringify(await presenceNames(page)) === '["alice","bob"]',
      async () => `${user}'s presence list to show alice and bob (shows ${JSON.stringify(await presenceNames(page).catch(() => null))})`)
    assert.equal(await page.$eval('#presence li.self', (li) => li.dataset.name), user)
    assert.equal(await page.textContent('#count'), '2')
  }

  // both servers carried traffic from their page
  const metricsAfter = await Promise.all(servers.map((s) => scrapeMetrics(s.port)))
  for (const [i, s] of servers.entries()) {
    const b = metric(metricsBefore[i], 'yredis_messages_in_total')
    const a = metric(metricsAfter[i], 'yredis_messages_in_total')
    assert.ok(a > b, `yredis_messages_in_total on ${s.name} went from ${b} to ${a}`)
  }
  // tokens came from the auth backend through nginx, never from the demo's own server
  assert.ok(web.requests.includes('GET /'), `demo server requests: ${web.requests.join(', ')}`)
  assert.ok(!web.requests.includes('GET /auth/token'), `nginx sent /auth/token to the demo server: ${web.requests.join(', ')}`)

  // the worker persisted the room to Postgres (REDIS_TASK_DEBOUNCE is 300 ms here)
  await waitFor(async () => metric(await scrapeMetrics(workerPort), 'yredis_worker_tasks_total') > tasksBefore,
    { timeout: 20000, interval: 200, message: 'yredis_worker_tasks_total on the worker to grow' })
  if (db) {
    await waitFor(async () => (await countStoredRows(db.url, room)) > 0,
      { timeout: 20000, interval: 200, message: `a row for room ${room} in Postgres ${db.name}` })
  }

  // bob's server stops: his page shows "disconnected", reconnects through
  // nginx to the other server, shows "connected" and edits flow again
  await bobServer.stop(10000)
  await waitForPage(async () => {
    const s = await statusOf(bob)
    const history = await bob.evaluate(() => window.statusHistory)
    return s.status === 'connected' && s.synced === 'true' && history.includes('disconnected')
  }, async () => `bob's page to go disconnected and back to connected (status ${JSON.stringify(await statusOf(bob))}, ` +
    `history ${JSON.stringify(await bob.evaluate(() => window.statusHistory))})`, 20000)
  const history = await bob.evaluate(() => window.statusHistory)
  assert.deepEqual(history.slice(history.indexOf('disconnected')).filter((s) => s !== 'connecting'), ['disconnected', 'connected'])
  assert.equal(await statusOf(alice).then((s) => s.status), 'connected', 'alice, on the other server, stayed connected')
  await waitFor(async () => metric(await scrapeMetrics(aliceServer.port), 'yredis_connections') === 2,
    { timeout: 10000, message: `both pages on ${aliceServer.name}` })
  await bob.keyboard.type('!')
  await expectText(alice, 'alice', both + '!')
  // and alice sees bob again, in her list and at his cursor, without waiting
  // for awareness's 15 s renewal
  await waitForPage(async () => JSON.stringify(await presenceNames(alice)) === '["alice","bob"]',
    async () => `bob back in alice's presence list (shows ${JSON.stringify(await presenceNames(alice).catch(() => null))})`, 5000)
  await waitForPage(async () => {
    const c = await remoteCarets(alice)
    return c.length === 1 && c[0].name === 'bob' && c[0].line === 2 && c[0].before === 'second line by Bob [so was bob]!'
  }, async () => `bob's cursor after "!" on alice's page (carets: ${JSON.stringify(await remoteCarets(alice))})`, 5000)
  await alice.screenshot({ path: path.join(ARTIFACTS_DIR, 'browser-alice-after-failover.png') })
}))
