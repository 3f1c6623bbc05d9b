// f. A client that stops reading its socket is cut off once the bytes queued
//    towards it pass WS_MAX_SEND_QUEUE_BYTES; the room, its other clients and
//    the server process carry on.
//
// Why this fails without a cap: the paused socket is still a room member, so
// every one of the ~40 MB of updates is queued for it in the server. Once it
// resumes reading it drains all of them (loopback reads 40 MB in well under a
// second) and nothing closes it: it receives ~40 MB and no close within 30 s.
// With a 2 MB cap the server shuts its socket while it is paused, so after
// resuming it gets only what was already in the kernel socket buffers and the
// server's write buffer (about 4 MB on Linux loopback), then end-of-stream.
//
// The writer waits until each update has come back to it and reached the
// reader before sending the next, so a busy test process cannot make a normal
// client lag by more than one update and be cut off by the small cap itself.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, withTimeout, randomHex, pseudoText, grepLog } from './harness.mjs'

const h = new Harness('slow-client')
const room = `slow-${randomHex(4)}`
const CAP = 2_000_000
const INSERTS = 200
const INSERT_CHARS = 200_000 // ASCII, so ~200 KB per update and ~40 MB in all
const TOTAL = INSERTS * INSERT_CHARS
/** what the paused client may receive at most: cap + socket buffers, far from TOTAL */
const MAX_PAUSED_BYTES = 16_000_000

describe('slow client', { timeout: 120000 }, () => {
  before(async () => { await h.setup(1, { WS_MAX_SEND_QUEUE_BYTES: String(CAP) }) })
  after(async () => { await h.teardown() })

  it('a client that stops reading is closed; the room and the server keep working', { timeout: 90000 }, h.wrap(async (t) => {
    const [s1] = h.servers
    const writer = h.client(s1, room, { name: 'writer' })
    const reader = h.client(s1, room, { name: 'reader' })
    await Promise.all([writer.synced(), reader.synced()])

    // the slow client: joins the room, then never reads its socket. It pauses
    // as soon as its initial sync starts arriving, which proves the server has
    // made it a member of the room before the big updates start.
    const slow = h.raw(s1, room)
    await slow.open()
    await waitFor(() => slow.frames.length > 0, { message: 'the slow client to get its initial sync' })
    slow.ws._socket.pause()
    let bytesAfterResume = 0
    let resumed = false
    slow.ws.on('message', (data) => { if (resumed) bytesAfterResume += data.length })
    // closed by the server: a close frame, or the TCP stream ending / resetting
    const cutOff = Promise.race([
      slow.closed,
      new Promise((resolve) => {
        slow.ws._socket.once('end', () => resolve('socket end'))
        slow.ws._socket.once('error', (e) => resolve(`socket error ${e.code || e.message}`))
      })
    ])
    const bytesSoFar = () => slow.frames.reduce((n, f) => n + f.length, 0)

    // Each insert is sent, then the reader has it before the next one: the
    // normal clients keep up, so only the paused client can reach the
    // (deliberately small) send-queue cap, even on a loaded machine.
    const t0 = Date.now()
    const chunks = []
    for (let i = 0; i < INSERTS; i++) {
      const chunk = pseudoText(INSERT_CHARS, i + 1)
      chunks.push(chunk)
      writer.text.insert(writer.text.length, chunk)
      await waitFor(() => writer.provider.wsconnected && writer.provider.ws.bufferedAmount === 0 &&
        reader.text.length === (i + 1) * INSERT_CHARS, {
        timeout: 20000,
        interval: 5,
        message: () => `insert ${i} to be sent and received (wsconnected=${writer.provider.wsconnected} ` +
          `reader has ${reader.text.length} chars; ` +
          `writer closeEvents=${JSON.stringify(writer.closeEvents)} reader closeEvents=${JSON.stringify(reader.closeEvents)})`
      })
    }
    const pushMs = Date.now() - t0
    const expected = chunks.join('')

    const progress = () => `reader has ${reader.text.length}/${TOTAL} chars ${Date.now() - t0} ms after the push began; ` +
      `reader closeEvents=${JSON.stringify(reader.closeEvents)} writer closeEvents=${JSON.stringify(writer.closeEvents)}`
    await waitFor(() => reader.text.length === TOTAL, { timeout: 40000, interval: 100, message: progress })
    assert.ok(reader.text.toString() === expected, 'reader content differs from what the writer wrote')
    assert.equal(writer.text.length, TOTAL)
    assert.ok(s1.running, `server died: ${s1.describe()}`)

    // both normal clients are still connected and still talk to each other
    assert.deepEqual(writer.closeEvents, [], 'writer was disconnected')
    assert.deepEqual(reader.closeEvents, [], 'reader was disconnected')
    reader.text.insert(0, '<after>')
    await waitFor(() => writer.text.length === TOTAL + 7, { message: 'reader edit after the push to reach the writer' })
    assert.equal(writer.text.toString().slice(0, 7), '<after>')

    // now let the slow client read whatever the server left it
    const resumedAt = Date.now()
    resumed = true
    slow.ws._socket.resume()
    let timer
    const closed = await Promise.race([cutOff, new Promise((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error('the paused client was not closed by the server within 30 s of ' +
        `resuming; it received ${bytesSoFar()} bytes (${bytesAfterResume} after resume)`)), 30000)
    })]).finally(() => clearTimeout(timer))
    const closeMs = Date.now() - resumedAt
    // count the frames ws still parses from what it had buffered
    await withTimeout(slow.closed, 5000, 'ws close event after the socket ended').catch(() => {})
    const received = bytesSoFar()
    const detail = `paused client received ${received} bytes (${bytesAfterResume} after resume), ` +
      `closed ${closeMs} ms after resume (${JSON.stringify(closed)}, ws close ${JSON.stringify(slow.closeEvent)}); ` +
      `push of ${TOTAL} bytes took ${pushMs} ms`
    assert.ok(received < MAX_PAUSED_BYTES, `the paused client got too much; ${detail}`)
    assert.ok(received < TOTAL / 2, detail)

    assert.ok(s1.running, `server died: ${s1.describe()}`)
    const warned = grepLog(s1, /not reading its socket/)
    assert.ok(warned.length > 0, `server log has no "not reading its socket" line; ${detail}`)
    // the normal clients were not the ones cut off
    assert.deepEqual(writer.closeEvents, [], 'writer was disconnected')
    assert.deepEqual(reader.closeEvents, [], 'reader was disconnected')
    t.diagnostic(`${detail}; server log: ${warned[0].trim()}`)
  }))
})
