// A room newly subscribed on a server whose Redis listener is blocked in
// XREAD (here with a 20 s block) still gets its first messages at once: the
// listener interrupts the blocked read instead of waiting for the timeout.
// Also: a room with no connections left is unsubscribed (its stream is no
// longer read), and rejoining it works; and a listener whose last room
// closed while a new one was still loading keeps reading once it loaded.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, randomHex, sleep } from './harness.mjs'

const h = new Harness('subscribe')
const BLOCK_MS = 20000

describe('room subscriptions', { timeout: 90000 }, () => {
  before(async () => { await h.setup(2, { REDIS_BLOCK_MS: String(BLOCK_MS) }) })
  after(async () => { await h.teardown() })

  it('a new room does not wait for the blocked read to time out', { timeout: 60000 }, h.wrap(async () => {
    const [s1, s2] = h.servers
    // Put server 2's listener into a long blocking read on some other room.
    const busy = h.client(s2, `busy-${randomHex(4)}`, { name: 'busy' })
    await busy.synced()
    await sleep(300)
    for (let round = 0; round < 3; round++) {
      const room = `fresh-${round}-${randomHex(4)}`
      const writer = h.client(s1, room, { name: `writer${round}` })
      await writer.synced()
      const reader = h.client(s2, room, { name: `reader${round}` })
      await reader.synced()
      const started = Date.now()
      writer.text.insert(0, `hello ${round}`)
      while (!reader.text.toString().includes(`hello ${round}`)) {
        assert.ok(Date.now() - started < 5000, `edit took over 5 s to reach the new room on server 2 (block ${BLOCK_MS} ms)`)
        await sleep(10)
      }
      const took = Date.now() - started
      console.log(`# round ${round}: first edit reached the new room in ${took} ms`)
      assert.ok(took < 2000, `edit reached the new room after ${took} ms`)
      writer.destroy()
      reader.destroy()
    }
    busy.destroy()
  }))
})

const churn = new Harness('subscribe-churn')

describe('room churn on an otherwise idle server', { timeout: 120000 }, () => {
  // Short blocking reads: the read in flight when a room closes ends while
  // the next room is still loading, the moment a listener can lose track.
  before(async () => { await churn.setup(2, { REDIS_BLOCK_MS: '10' }) })
  after(async () => { await churn.teardown() })

  it('each new room hears the other server, however the previous room closed', { timeout: 110000 }, churn.wrap(async () => {
    const [s1, s2] = churn.servers
    for (let round = 0; round < 40; round++) {
      const room = `churn-${round}-${randomHex(4)}`
      const a = churn.client(s1, room, { name: `a${round}` })
      const b = churn.client(s2, room, { name: `b${round}` })
      await Promise.all([a.synced(), b.synced()])
      a.text.insert(0, 'a')
      b.text.insert(0, 'b')
      const started = Date.now()
      while (a.text.length < 2 || b.text.length < 2) {
        assert.ok(Date.now() - started < 3000, `round ${round}: edits did not cross servers within 3 s (a: ${a.text.toString()}, b: ${b.text.toString()})`)
        await sleep(5)
      }
      a.destroy()
      b.destroy()
    }
  }))
})
