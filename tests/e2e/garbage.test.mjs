// d. Malformed frames: the server closes only the offending socket with a
//    4400-4499 close code and a reason; the room keeps working and nothing
//    invalid ever reaches the Redis room stream.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, Y, waitFor, withTimeout, randomHex, xrangeRaw, decodeStreamMessage, encodeSyncUpdate, canonicalJSON } from './harness.mjs'

const h = new Harness('garbage')
const room = `garbage-${randomHex(4)}`

// a real update, cut in the middle of its string content: not decodable
const truncatedUpdate = (() => {
  const d = new Y.Doc()
  d.getText('text').insert(0, 'this update is cut in the middle of its content')
  const u = Y.encodeStateAsUpdate(d)
  d.destroy()
  return u.slice(0, Math.floor(u.length / 2))
})()

const cases = [
  {
    name: 'sync update whose varUint8Array length exceeds the frame',
    frame: Buffer.from([0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f])
  },
  {
    name: 'sync update whose payload is a truncated (invalid) Yjs update',
    frame: encodeSyncUpdate(truncatedUpdate)
  },
  {
    name: 'unknown message type 9',
    frame: Buffer.from([9, 1, 2])
  },
  {
    name: 'text frame',
    frame: 'hello, I am not binary',
    text: true
  },
  {
    name: 'awareness update whose state is not JSON',
    frame: (() => {
      const state = Buffer.from('{not json', 'utf8')
      const inner = Buffer.concat([Buffer.from([1, 7, 1, state.length]), state])
      return Buffer.concat([Buffer.from([1, inner.length]), inner])
    })()
  }
]

describe('malformed frames', { timeout: 180000 }, () => {
  /** @type {import('./harness.mjs').Client[]} */
  let regulars = []
  let editCounter = 0

  before(async () => {
    await h.setup(2)
    const [s1, s2] = h.servers
    regulars = [h.client(s1, room, { name: 'R1' }), h.client(s2, room, { name: 'R2' })]
    await Promise.all(regulars.map((c) => c.synced()))
    regulars[0].text.insert(0, 'start;')
    await waitFor(() => regulars[1].text.toString() === 'start;', { message: 'initial edit to reach R2' })
  })
  after(async () => { await h.teardown() })

  /** R1 and R2 edit and see each other's edits. */
  const checkRoomStillWorks = async (label) => {
    const [r1, r2] = regulars
    const m1 = `<r1:${++editCounter}>`
    const m2 = `<r2:${editCounter}>`
    r1.text.insert(r1.text.length, m1)
    r2.map.set(`k${editCounter}`, editCounter)
    r2.text.insert(0, m2)
    await waitFor(() => [r1, r2].every((c) => c.text.toString().includes(m1) && c.text.toString().includes(m2) && c.map.get(`k${editCounter}`) === editCounter), {
      timeout: 10000,
      message: () => `regular clients to keep syncing (${label}); R1: ${JSON.stringify(r1.text.toString())} R2: ${JSON.stringify(r2.text.toString())}`
    })
  }

  for (const [i, tc] of cases.entries()) {
    it(`closes the socket with 4400-4499 on: ${tc.name}`, { timeout: 30000 }, h.wrap(async () => {
      const server = h.servers[i % 2]
      const raw = h.raw(server, room)
      await raw.open()
      // let the server's initial sync arrive first, so we know the socket is fully set up
      await waitFor(() => raw.frames.length > 0, { timeout: 10000, message: 'server to send its initial sync to a raw socket' })
      raw.send(tc.frame, { binary: !tc.text })
      // the room keeps working while the bad socket is being dealt with
      const still = checkRoomStillWorks(`after ${tc.name}`)
      const ev = await withTimeout(raw.closed, 10000,
        `server to close the socket that sent a malformed frame (${tc.name}); it stayed open`)
      assert.ok(ev.code >= 4400 && ev.code <= 4499,
        `close code must be in 4400..4499 (y-websocket then stops reconnecting), got ${ev.code} reason ${JSON.stringify(ev.reason)}`)
      assert.ok(ev.reason.length > 0, `close reason must be non-empty (code ${ev.code})`)
      await still
      // the regular clients were not disconnected
      for (const c of regulars) {
        assert.equal(c.closeEvents.length, 0, `${c.name} saw a close: ${JSON.stringify(c.closeEvents)}`)
      }
    }))
  }

  it('a new client still receives the full document', { timeout: 30000 }, h.wrap(async () => {
    await checkRoomStillWorks('final')
    const expected = regulars[0].snapshot()
    for (const s of h.servers) {
      const c = h.client(s, room, { name: `new@${s.name}` })
      await c.synced()
      await waitFor(() => {
        const snap = c.snapshot()
        return snap.text === expected.text && canonicalJSON(snap.map) === canonicalJSON(expected.map)
      }, { timeout: 10000, message: () => `new client on ${s.name} to get the full doc; has ${JSON.stringify(c.text.toString())}, expected ${JSON.stringify(expected.text)}` })
    }
  }))

  it('every entry of the room stream is a valid update (0,2) or awareness (1) message', { timeout: 30000 }, h.wrap(async () => {
    const key = h.roomKey(room)
    const entries = await xrangeRaw(h.redis, key)
    assert.ok(entries.length > 0, `room stream ${key} is empty or missing`)
    const doc = new Y.Doc()
    const bad = []
    for (const e of entries) {
      if (e.fields.length !== 2 || e.fields[0].toString() !== 'm') {
        bad.push(`${e.id}: fields ${e.fields.filter((_, j) => j % 2 === 0).map(String).join(',')} (expected exactly one field "m")`)
        continue
      }
      const m = e.fields[1]
      const shapeOk = (m.length >= 2 && m[0] === 0 && m[1] === 2) || (m.length >= 1 && m[0] === 1)
      if (!shapeOk) { bad.push(`${e.id}: bad shape ${m.subarray(0, 16).toString('hex')}`); continue }
      try {
        const d = decodeStreamMessage(m)
        if (d.type === 'update') Y.applyUpdate(doc, d.update)
      } catch (err) {
        bad.push(`${e.id}: ${err.message} (${m.subarray(0, 16).toString('hex')}...)`)
      }
    }
    assert.deepEqual(bad, [], `invalid entries in ${key}`)
    assert.equal(doc.getText('text').toString(), regulars[0].text.toString(), 'the stream replays to the clients\' document')
    doc.destroy()
  }))
})
