// A client's own messages are left out of what it receives (y-websocket
// would apply them again as no-ops), unless ECHO_OWN_MESSAGES is set; a
// client alone in a room still hears from the server often enough that
// y-websocket (which reconnects after 30 s without a message) stays
// connected.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, sleep, randomHex } from './harness.mjs'

const h = new Harness('own-messages')
const INSERT_CHARS = 2000
const INSERTS = 5

/** Frames a client's socket receives that are at least as large as one insert. */
function countLargeFrames (client) {
  const counter = { n: 0 }
  client.provider.ws.on('message', (data) => { if (data.byteLength >= INSERT_CHARS) counter.n++ })
  return counter
}

async function writeAndCount (server, label) {
  const room = `own-${label}-${randomHex(3)}`
  const writer = h.client(server, room, { name: `${label}-writer` })
  const reader = h.client(server, room, { name: `${label}-reader` })
  await Promise.all([writer.synced(), reader.synced()])
  const toWriter = countLargeFrames(writer)
  const toReader = countLargeFrames(reader)
  for (let i = 0; i < INSERTS; i++) {
    writer.text.insert(writer.text.length, String(i % 10).repeat(INSERT_CHARS))
    await waitFor(() => reader.text.length === (i + 1) * INSERT_CHARS, { message: `insert ${i} to reach the reader` })
  }
  // An echo would have been read before the reader's copy or right after it.
  await sleep(300)
  writer.destroy()
  reader.destroy()
  return { toWriter: toWriter.n, toReader: toReader.n }
}

describe('own messages', { timeout: 120000 }, () => {
  before(async () => {
    await h.setup(1)
    await h.startServer('echoing', { ECHO_OWN_MESSAGES: 'true' })
  })
  after(async () => { await h.teardown() })

  it('a writer does not get its own updates back; with ECHO_OWN_MESSAGES it does', h.wrap(async () => {
    const [server, echoing] = h.servers
    const quiet = await writeAndCount(server, 'default')
    assert.deepEqual(quiet, { toWriter: 0, toReader: INSERTS }, 'default: the reader gets each update, the writer none')
    const echoed = await writeAndCount(echoing, 'echoing')
    assert.deepEqual(echoed, { toWriter: INSERTS, toReader: INSERTS }, 'ECHO_OWN_MESSAGES=true: both get each update')
  }))

  it('a y-websocket client alone in a room stays connected past its 30 s silence limit', { timeout: 60000 }, h.wrap(async (t) => {
    const [server] = h.servers
    const lone = h.client(server, `own-lone-${randomHex(3)}`, { name: 'lone' })
    await lone.synced()
    lone.text.insert(0, 'alone')
    await sleep(40000)
    assert.deepEqual(lone.closeEvents, [], 'the lone client never lost its connection')
    assert.ok(lone.provider.wsconnected, 'still connected')
    const silentFor = Date.now() - lone.provider.wsLastMessageReceived
    t.diagnostic(`last message from the server ${silentFor} ms ago`)
    assert.ok(silentFor < 30000, `heard from the server within 30 s (${silentFor} ms ago)`)
    lone.destroy()
  }))
})
