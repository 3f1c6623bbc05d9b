// Worker and storage, end to end, once per backend (Postgres, S3 via moto,
// filesystem): two servers + one worker; y-websocket clients edit through both
// servers; the worker persists the document (ARCHITECTURE.md "Storage layout": one update v2 per
// stored piece, merged on read) and, once the messages outlive
// REDIS_MIN_MESSAGE_LIFETIME with no edits, removes the room stream and its
// task from Redis ("The worker's task protocol"). With this prefix's Redis keys deleted, a new
// client gets the whole document from storage alone.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  Harness, waitFor, sleep, randomHex, canonicalJSON, fingerprint, xrangeRaw, deletePrefix, scanKeys
} from './harness.mjs'
import { BACKENDS, useBackend, decodeStored, svString } from './storage.mjs'

const same = (a, b) => a.text === b.text && canonicalJSON(a.map) === canonicalJSON(b.map)

/** Tasks in PREFIX:worker (cluster layout: its bucket's queue) naming `streamKey` (field compact). */
async function tasksFor (h, streamKey) {
  const entries = await xrangeRaw(h.redis, h.workerKeyOf(streamKey))
  return entries.filter((e) => {
    for (let i = 0; i + 1 < e.fields.length; i += 2) {
      if (e.fields[i].toString() === 'compact' && e.fields[i + 1].toString() === streamKey) return true
    }
    return false
  })
}

/** Every client edits text and map; returns the markers every doc must contain. */
async function edit (clients, rounds, tag) {
  const markers = []
  await Promise.all(clients.map(async (c, i) => {
    for (let k = 0; k < rounds; k++) {
      const m = `[${tag}${i}:${k}]`
      markers.push(m)
      const s = c.text.toString()
      // insert at a marker boundary so markers stay intact
      let p = (k * 7 + i * 13) % (s.length + 1)
      while (p > 0 && p < s.length && s[p - 1] !== ']') p--
      c.text.insert(p, m)
      c.map.set(`${tag}${i}-${k}`, { by: i, k, s: 'ü€😀' })
      c.map.set('last', `${tag}${i}-${k}`)
      if (k % 4 === 1) c.map.delete(`${tag}${i}-${k - 1}`)
      await sleep(k % 3 === 0 ? 0 : 15)
    }
  }))
  return markers
}

async function converge (clients, markers, what) {
  await waitFor(() => {
    const snaps = clients.map((c) => c.snapshot())
    return snaps.every((s) => same(s, snaps[0])) && markers.every((m) => snaps[0].text.includes(m))
  }, {
    timeout: 20000,
    message: () => `${what}: clients to converge with all ${markers.length} markers\n` +
      clients.map((c) => `  ${c.name}@${c.server.name}: ${fingerprint(c.snapshot())}`).join('\n')
  })
  return clients[0].snapshot()
}

for (const kind of BACKENDS) {
  describe(`worker persists to ${kind}`, { timeout: 120000 }, () => {
    const h = new Harness(`persist-${kind}`)
    /** @type {any} */
    let backend
    before(async () => {
      backend = await useBackend(kind, h)
      await h.setup(2)
      await h.startWorker('w1')
    })
    after(async () => { await h.teardown() })

    it(`persists edits from two servers to ${kind}, cleans Redis, serves the doc from storage alone`, { timeout: 60000 }, h.wrap(async () => {
      const [s1, s2] = h.servers
      if (kind === 's3') assert.ok(await backend.bucketExists(), `servers created the missing bucket ${backend.bucket}`)
      // room names as URL path segments; the second needs enc() in keys and storage paths
      const rooms = [`persist-${randomHex(4)}`, `per%20sist-${randomHex(4)}`]
      const describeStorage = async (room) => {
        try {
          const pieces = await backend.pieces(room)
          return `${backend.describe()}: ${pieces.length} piece(s) for ${JSON.stringify(room)}` +
            (pieces.length ? `, decoded ${fingerprint(decodeStored(pieces))}` : '')
        } catch (e) { return `storage unreadable: ${e.message}` }
      }

      const expected = {}
      for (const [ri, room] of rooms.entries()) {
        const clients = []
        const n = ri === 0 ? 4 : 2
        for (let i = 0; i < n; i++) clients.push(h.client(i % 2 === 0 ? s1 : s2, room, { name: `r${ri}c${i}` }))
        await Promise.all(clients.map((c) => c.synced()))
        const markers = await edit(clients, 12, `r${ri}c`)
        expected[room] = { snap: await converge(clients, markers, room), markers, clients }
      }

      // storage holds the document, decoded by npm yjs to the clients' content
      for (const room of rooms) {
        const want = expected[room].snap
        await waitFor(async () => {
          const pieces = await backend.pieces(room)
          return pieces.length > 0 && same(decodeStored(pieces), want)
        }, {
          timeout: 20000,
          message: () => `${kind} storage to hold room ${room} = ${fingerprint(want)}`
        }).catch(async (e) => { e.message += `\n  ${await describeStorage(room)}`; throw e })
      }

      // no more edits, clients gone (no awareness renewals): the stream outlives
      // REDIS_MIN_MESSAGE_LIFETIME, is trimmed and removed with its task
      for (const room of rooms) for (const c of expected[room].clients) c.destroy()
      for (const room of rooms) {
        const key = h.roomKey(room)
        await waitFor(async () => (await h.redis.exists(key)) === 0 && (await tasksFor(h, key)).length === 0, {
          timeout: 20000,
          message: () => `room stream ${key} and its worker task to be removed`
        }).catch(async (e) => {
          const entries = await xrangeRaw(h.redis, key).catch(() => [])
          const tasks = await tasksFor(h, key).catch(() => [])
          e.message += `\n  EXISTS=${await h.redis.exists(key)} XLEN=${entries.length} ` +
            `first=${entries[0]?.id} last=${entries.at(-1)?.id} now=${Date.now()}\n  tasks=${JSON.stringify(tasks.map((t) => t.id))}`
          throw e
        })
      }

      // exactly one stored piece per document, with the whole content
      for (const room of rooms) {
        const pieces = await backend.pieces(room)
        assert.equal(pieces.length, 1, `room ${room}: exactly one stored reference after compaction (got ${pieces.map((p) => p.ref).join(', ')})`)
        const got = decodeStored(pieces)
        assert.equal(got.text, expected[room].snap.text, `room ${room}: stored text`)
        assert.equal(canonicalJSON(got.map), canonicalJSON(expected[room].snap.map), `room ${room}: stored map`)
        if (kind === 'postgres') {
          assert.ok(pieces[0].sv, 'postgres row has sv')
          assert.equal(svString(pieces[0].sv), svString(got.sv), `room ${room}: sv column = state vector of the stored doc`)
        }
      }

      // forget Redis (this prefix only): the document must come from storage alone
      // (the running worker may recreate its empty queue at once, as it
      // should after Redis lost it: only queue keys may reappear)
      await deletePrefix(h.redis, h.prefix)
      const left = await scanKeys(h.redis, `${h.prefix}*`)
      const isQueue = (k) => k === `${h.prefix}:worker` || /^[^:]*:\{b\d+\}:worker$/.test(k)
      assert.deepEqual(left.filter((k) => !isQueue(k)), [], 'no keys left under the prefix but worker queues')
      for (const queue of left) assert.equal(await h.redis.xLen(queue), 0, `recreated worker queue ${queue} is empty`)
      for (const room of rooms) {
        for (const server of [s1, s2]) {
          const c = h.client(server, room, { name: `fresh@${server.name}` })
          await c.synced()
          // its awareness re-creates the room stream (and its task)
          await waitFor(async () => (await h.redis.exists(h.roomKey(room))) === 1, {
            timeout: 5000, message: `fresh client's awareness to re-create ${h.roomKey(room)}`
          })
          await waitFor(() => same(c.snapshot(), expected[room].snap), {
            timeout: 10000,
            message: () => `fresh client on ${server.name} to get room ${room} from storage: want ${fingerprint(expected[room].snap)}, got ${fingerprint(c.snapshot())}`
          })
          c.destroy()
        }
      }

      // the worker keeps running after Redis lost its queue; reading changed
      // nothing, so no new reference appears and Redis empties again
      for (const room of rooms) {
        const key = h.roomKey(room)
        await waitFor(async () => (await h.redis.exists(key)) === 0 && (await tasksFor(h, key)).length === 0, {
          timeout: 20000,
          message: () => `room stream ${key} (re-created by the fresh clients) to be removed again`
        })
        const pieces = await backend.pieces(room)
        assert.equal(pieces.length, 1, `room ${room}: still exactly one stored reference`)
        assert.ok(same(decodeStored(pieces), expected[room].snap), `room ${room}: stored content unchanged`)
      }
      assert.ok(h.workers[0].running, `worker still running: ${h.workers[0].describe()}`)
    }))
  })
}
