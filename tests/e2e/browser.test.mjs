// The demo page (demo/) in real headless Chromium against the real stack on
// this machine: two `y-redis server` processes with token auth through
// `y-redis auth-example`, one `y-redis worker` persisting to a fresh Postgres
// database (filesystem storage when Postgres is not there), the demo served
// with the /auth/token proxy the compose load balancer provides.
// Page 1 (alice) talks to server 1, page 2 (bob) to server 2.
//
// Needs Debian's Chromium: apt-get update && apt-get install -y chromium
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
import { diffText, transformPosition } from '../../demo/src/textarea-binding.js'

const h = new Harness('browser')
const room = `browser-${randomHex(4)}`
/** @type {any} */ let browser = null
/** @type {any[]} */ const pages = []
/** @type {string[]} */ const consoleLines = []
let web = null
let db = null
let auth = null
let s1 = null
let s2 = null
let worker = null
let workerPort = 0

before(async () => {
  assertChromium()
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
  s1 = await h.startServer('s1', serverEnv)
  s2 = await h.startServer('s2', serverEnv)
  workerPort = await freePort()
  worker = await h.startWorker('w1', { ...storageEnv, WORKER_PORT: String(workerPort) })
  web = await startStaticServer(dist, auth.url)
  h.cleanups.push(() => web.close())
  browser = await launchChromium()
})

after(async () => {
  if (h.failed && pages.length) {
    fs.mkdirSync(ARTIFACTS_DIR, { recursive: true })
    for (const [i, p] of pages.entries()) {
      try { await p.screenshot({ path: path.join(ARTIFACTS_DIR, `browser-failure-page${i + 1}.png`) }) } catch {}
    }
  }
  if (browser) { try { await browser.close() } catch {} }
  await h.teardown()
})

/** Open the demo in its own browser context (no shared storage or BroadcastChannel). */
async function openDemo (server, user) {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } })
  const page = await context.newPage()
  page.on('console', (m) => consoleLines.push(`[${user} console.${m.type()}] ${m.text()}`))
  page.on('pageerror', (e) => consoleLines.push(`[${user} pageerror] ${e.message}`))
  const url = `${web.url}/?ws=${encodeURIComponent(server.url)}&user=${encodeURIComponent(user)}#${room}`
  await page.goto(url)
  pages.push(page)
  return page
}

const editorValue = (page) => page.$eval('#editor', (el) => el.value)
const presenceNames = (page) => page.$$eval('#presence li', (lis) => lis.map((li) => li.dataset.name))

async function waitForPage (page, fn, message, timeout = 15000) {
  return waitFor(fn, {
    timeout,
    interval: 50,
    message: () => `${message}\npage console:\n${consoleLines.slice(-30).join('\n')}`
  })
}

test('textarea diff and cursor mapping', () => {
  assert.deepEqual(diffText('abc', 'abXc', 3), { index: 2, remove: 0, insert: 'X' })
  assert.deepEqual(diffText('aa', 'aaa', 2), { index: 1, remove: 0, insert: 'a' })
  assert.deepEqual(diffText('hello world', 'hello there', 11), { index: 6, remove: 5, insert: 'there' })
  assert.deepEqual(diffText('abc', 'ac', 1), { index: 1, remove: 1, insert: '' })
  // never split a surrogate pair: 😀 is \ud83d\ude00, 😁 is \ud83d\ude01
  assert.deepEqual(diffText('x😀', 'x😁', 3), { index: 1, remove: 2, insert: '😁' })
  // remote insert of 3 before a cursor at 5 moves it to 8; a delete around it collapses it
  assert.equal(transformPosition(5, [{ insert: 'abc' }], false), 8)
  assert.equal(transformPosition(5, [{ retain: 5 }, { insert: 'abc' }], false), 5)
  assert.equal(transformPosition(5, [{ retain: 5 }, { insert: 'abc' }], true), 8)
  assert.equal(transformPosition(5, [{ retain: 2 }, { delete: 10 }], false), 2)
})

test('demo page: two browsers on two servers edit one text and see each other', h.wrap(async () => {
  const before1 = await scrapeMetrics(s1.port)
  const workerBefore = await scrapeMetrics(workerPort)

  const alice = await openDemo(s1, 'alice')
  const bob = await openDemo(s2, 'bob')
  for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
    await waitForPage(page, async () => (await page.getAttribute('#status', 'data-status')) === 'synced',
      `${name}'s page to sync (status: ${await page.textContent('#status').catch(() => '?')})`)
  }

  // alice types, bob sees it
  await alice.click('#editor')
  await alice.keyboard.type('Hello from Alice')
  await waitForPage(bob, async () => (await editorValue(bob)) === 'Hello from Alice', 'alice\'s text on bob\'s page')

  // bob types at the end, alice sees it
  await bob.click('#editor')
  await bob.keyboard.press('Control+End')
  await bob.keyboard.type(' and Bob')
  await waitForPage(alice, async () => (await editorValue(alice)) === 'Hello from Alice and Bob', 'bob\'s text on alice\'s page')

  // alice's cursor sits after "Hello"; bob inserts in front of it: her cursor moves along
  await alice.$eval('#editor', (el) => { el.focus(); el.setSelectionRange(5, 5) })
  await bob.$eval('#editor', (el) => { el.focus(); el.setSelectionRange(0, 0) })
  await bob.keyboard.type('>> ')
  await waitForPage(alice, async () => (await editorValue(alice)) === '>> Hello from Alice and Bob', 'bob\'s prefix on alice\'s page')
  assert.deepEqual(await alice.$eval('#editor', (el) => [el.selectionStart, el.selectionEnd]), [8, 8],
    'a remote insert before the cursor moves the cursor with the text')
  await alice.keyboard.type(',')
  const expected = '>> Hello, from Alice and Bob'
  for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
    await waitForPage(page, async () => (await editorValue(page)) === expected, `${name}'s page to show ${JSON.stringify(expected)}`)
  }

  // presence: each page lists both users, itself marked
  for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
    await waitForPage(page, async () => JSON.stringify(await presenceNames(page)) === '["alice","bob"]',
      `${name}'s presence list to show alice and bob (now ${JSON.stringify(await presenceNames(page).catch(() => null))})`)
    assert.equal(await page.$eval('#presence li.self', (li) => li.dataset.name), name)
    const colors = await page.$$eval('#presence .dot', (dots) => dots.map((d) => d.style.background))
    assert.equal(colors.length, 2)
    assert.ok(colors.every((c) => c && c.length > 0), `presence colors: ${colors}`)
  }

  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true })
  await alice.screenshot({ path: path.join(ARTIFACTS_DIR, 'browser-page1-alice.png') })
  await bob.screenshot({ path: path.join(ARTIFACTS_DIR, 'browser-page2-bob.png') })

  // server 1 counted alice's connection and traffic
  const after1 = await scrapeMetrics(s1.port)
  for (const name of ['yredis_connections_total', 'yredis_messages_in_total', 'yredis_bytes_out_total']) {
    const b = metric(before1, name)
    const a = metric(after1, name)
    assert.ok(a > b, `${name} on server 1 went from ${b} to ${a}`)
  }
  assert.ok(metric(after1, 'yredis_connections_total') - metric(before1, 'yredis_connections_total') >= 1)
  for (const s of [s1, s2]) {
    const res = await fetch(`http://127.0.0.1:${s.port}/readyz`)
    const body = await res.json()
    assert.equal(res.status, 200, `/readyz of ${s.name}: ${JSON.stringify(body)}`)
    assert.equal(body.ready, true)
  }

  // the worker picked up the room (REDIS_TASK_DEBOUNCE is 300 ms here) and persisted it
  const tasksBefore = metric(workerBefore, 'yredis_worker_tasks_total')
  await waitFor(async () => metric(await scrapeMetrics(workerPort), 'yredis_worker_tasks_total') > tasksBefore,
    { timeout: 20000, interval: 200, message: 'yredis_worker_tasks_total on the worker to grow' })
  assert.ok(metric(await scrapeMetrics(workerPort), 'yredis_worker_tasks_total') > 0)
  const wr = await fetch(`http://127.0.0.1:${workerPort}/readyz`)
  assert.equal(wr.status, 200, `worker /readyz: ${await wr.text()}`)
  if (db) {
    await waitFor(async () => (await countStoredRows(db.url, room)) > 0,
      { timeout: 20000, interval: 200, message: `a row for room ${room} in Postgres ${db.name}` })
  }

  // the page came with its token through the same origin
  assert.ok(web.requests.some((r) => r === 'GET /auth/token'), `static server requests: ${web.requests.join(', ')}`)
  assert.ok(worker.running && s1.running && s2.running && auth.proc.running)
}))
