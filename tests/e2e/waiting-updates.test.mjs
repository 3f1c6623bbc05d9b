// A stream update that builds on something the stream does not hold yet
// (ARCHITECTURE.md, "Updates waiting for what they build on"): a foreign
// writer's, or an edit whose predecessor a Redis failover lost until a client
// sends it again. y-websocket clients that sync meanwhile get it all the same
// (yjs holds it until it can apply it), the worker keeps it in the stream
// instead of trimming it away unstored, and once what it builds on arrives
// every client, a client syncing afresh and storage hold both.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { Harness, Y, waitFor, sleep, randomHex, encodeSyncUpdate, xrangeRaw } from './harness.mjs'
import { FsStorage, decodeStored } from './storage.mjs'

describe('updates waiting for what they build on', { timeout: 60000 }, () => {
  const h = new Harness('waiting-updates')
  /** @type {FsStorage} */
  let storage

  before(async () => {
    storage = new FsStorage(path.join(h.workDir, 'data'))
    await h.setup(2)
    await h.startWorker('w1')
  })
  after(async () => { await h.teardown() })

  it('reach clients that sync before what they need, stay in the stream, and are stored once it came', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `waiting-${randomHex(3)}`
    // A by one foreign client, then B typed right after A by another: B's
    // item has A's as its origin.
    const foreign = new Y.Doc()
    foreign.getText('text').insert(0, '<A>')
    const a = Y.encodeStateAsUpdate(foreign)
    const beforeB = Y.encodeStateVector(foreign)
    const other = new Y.Doc()
    Y.applyUpdate(other, a)
    other.getText('text').insert(3, '<B>')
    const b = Y.encodeStateAsUpdate(other, beforeB)

    // The room exists (its stream and worker task) with an edit of its own.
    const first = h.client(s1, room, { name: 'first' })
    await first.synced()
    first.text.insert(0, '<first>')
    const key = h.roomKey(room)
    await waitFor(async () => (await xrangeRaw(h.redis, key)).length > 0, { message: 'the first edit to reach the stream' })

    await h.redis.xAdd(key, '*', { m: encodeSyncUpdate(b) })
    const early = h.client(s2, room, { name: 'early' })
    await early.synced()
    // The worker compacts the room at least once meanwhile (debounce 300 ms,
    // message lifetime 1 s): B must stay in the stream, the first edit goes.
    await waitFor(async () => (await storage.pieces(room)).length > 0, { timeout: 20000, message: 'the worker to store the room' })
    await sleep(2500)
    const left = await xrangeRaw(h.redis, key)
    assert.ok(left.some(({ fields }) => fields.some((f) => Buffer.from(f).includes(Buffer.from('<B>')))), 'B is still in the stream after compactions')

    await h.redis.xAdd(key, '*', { m: encodeSyncUpdate(a) })
    const late = h.client(s1, room, { name: 'late' })
    const holdsAll = (c) => ['<first>', '<A>', '<B>'].every((s) => c.text.toString().includes(s))
    for (const c of [first, early, late]) {
      await waitFor(() => holdsAll(c), { timeout: 10000, message: () => `${c.name} to hold the first edit, A and B: has ${JSON.stringify(c.text.toString())}` })
    }
    let stored = ''
    await waitFor(async () => {
      stored = decodeStored(await storage.pieces(room)).text
      return ['<first>', '<A><B>'].every((s) => stored.includes(s))
    }, { timeout: 20000, message: () => `storage to hold the first edit, A and B: has ${JSON.stringify(stored)}` })
  }))
})
