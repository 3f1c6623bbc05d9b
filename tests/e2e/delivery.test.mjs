// Order and completeness of delivery under load: 50 y-websocket clients on
// two servers in one room; 10 of them write 3,000 updates in all as fast as
// they can while announcing a counter in their awareness state. Every client
// ends with the same document holding every update, and every client sees
// each writer's counter only ever go up (awareness is coalesced under the
// rate limit, so values may be skipped, never reordered) and ends on its
// last value.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, sleep, randomHex } from './harness.mjs'

const h = new Harness('delivery')
const CLIENTS = 50
const WRITERS = 10
const UPDATES_PER_WRITER = 300

describe('delivery under load', { timeout: 180000 }, () => {
  before(async () => { await h.setup(2) })
  after(async () => { await h.teardown() })

  it(`${CLIENTS} clients, ${WRITERS * UPDATES_PER_WRITER} updates: equal documents, awareness in order per sender`, { timeout: 170000 }, h.wrap(async (t) => {
    const room = `delivery-${randomHex(3)}`
    const clients = Array.from({ length: CLIENTS }, (_, i) => h.client(h.servers[i % 2], room, { name: `c${i}` }))
    await Promise.all(clients.map((c) => c.synced(30000)))
    const writers = clients.slice(0, WRITERS)
    // per observer, per writer: the counter values seen, in arrival order
    const seen = clients.map(() => new Map())
    clients.forEach((c, i) => {
      c.awareness.on('change', () => {
        for (const w of writers) {
          const n = c.awareness.getStates().get(w.clientID)?.n
          if (typeof n !== 'number') continue
          const list = seen[i].get(w.clientID) ?? []
          if (list[list.length - 1] !== n) list.push(n)
          seen[i].set(w.clientID, list)
        }
      })
    })
    const t0 = Date.now()
    await Promise.all(writers.map(async (w, k) => {
      for (let u = 0; u < UPDATES_PER_WRITER; u++) {
        w.text.insert(w.text.length, `<${k}:${u}>`)
        w.awareness.setLocalStateField('n', u)
        // bursts of ten, then let the event loop breathe
        if (u % 10 === 9) await sleep(5)
      }
    }))
    const sentMs = Date.now() - t0
    const expected = writers.flatMap((_, k) => Array.from({ length: UPDATES_PER_WRITER }, (_, u) => `<${k}:${u}>`))
    await waitFor(() => clients.every((c) => c.text.length === writers[0].text.length) &&
      expected.every((m) => clients[CLIENTS - 1].text.toString().includes(m)), {
      timeout: 60000,
      interval: 100,
      message: () => `every client to hold all ${expected.length} updates; lengths ${[...new Set(clients.map((c) => c.text.length))].join(',')}`
    })
    const deliveredMs = Date.now() - t0
    const reference = clients[0].text.toString()
    for (const c of clients) assert.equal(c.text.toString(), reference, `${c.name} has the same document`)
    for (const m of expected) assert.ok(reference.includes(m), `${m} arrived`)
    // awareness: the last value arrives everywhere, and never out of order
    await waitFor(() => seen.every((perWriter, i) => writers.every((w) =>
      clients[i] === w || perWriter.get(w.clientID)?.at(-1) === UPDATES_PER_WRITER - 1)), {
      timeout: 10000,
      message: 'every client to see every writer\'s last awareness value'
    })
    let values = 0
    for (const [i, perWriter] of seen.entries()) {
      for (const w of writers) {
        if (clients[i] === w) continue
        const list = perWriter.get(w.clientID) ?? []
        values += list.length
        for (let j = 1; j < list.length; j++) {
          assert.ok(list[j] > list[j - 1], `${clients[i].name} saw ${w.name}'s counter go ${list[j - 1]} -> ${list[j]}`)
        }
      }
    }
    t.diagnostic(`${expected.length} updates sent in ${sentMs} ms, all ${CLIENTS} documents equal after ${deliveredMs} ms; ${values} awareness values observed, all in order per sender`)
  }))
})
