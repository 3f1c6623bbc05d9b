// Storage outages (ARCHITECTURE.md, "Failure handling"): Postgres (a fresh database) and S3 (moto),
// each behind a TCP proxy that is cut (connections destroyed, new ones
// refused) for CUT_MS = 15 s. The issue speaks of a minute; 15 s keeps CI short and
// is already longer than the clients' retry backoff and the servers' Postgres
// pool timeout (10 s), so joins during the cut really fail.
// While storage is cut:
//   - live editing goes on between clients already in a room (Redis is fine);
//   - a NEW client of a room whose state must come from storage (persisted,
//     then its Redis stream deleted) is closed with 1013 within 15 s, and is
//     never shown an empty document as the truth;
//   - the worker keeps the room's task and stream (nothing trimmed or dropped);
//   - /readyz answers 503.
// After the restore the new client syncs the stored document, and the worker
// catches up: storage finally holds every edit.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as decoding from 'lib0/decoding'
import { Harness, waitFor, sleep, randomHex, fingerprint, xrangeRaw, withTimeout } from './harness.mjs'
import { PostgresDb, MotoS3, PG_ADMIN_URL, decodeStored } from './storage.mjs'
import { TcpProxy, Editors, httpGet, waitConverged, sameContent, workerStory, unrecoveredActors } from './faults.mjs'

const CUT_MS = 15000

/** message type / sync subtype of a frame the server sent */
function frameKind (buf) {
  const d = decoding.createDecoder(new Uint8Array(buf))
  const type = decoding.readVarUint(d)
  if (type !== 0) return `type${type}`
  return ['step1', 'step2', 'update'][decoding.readVarUint(d)] || 'sync?'
}

async function tasksFor (h, streamKey) {
  const entries = await xrangeRaw(h.redis, `${h.prefix}:worker`)
  return entries.filter((e) => e.fields.some((f, i) => i % 2 === 1 && e.fields[i - 1].toString() === 'compact' && f.toString() === streamKey))
}

/** @param {'postgres' | 's3'} kind */
function scenario (kind) {
  describe(`storage outage: ${kind}`, { timeout: 110000 }, () => {
    const h = new Harness(`fault-storage-${kind}`, { env: { REDIS_COMMAND_TIMEOUT_MS: '2000' } })
    /** @type {PostgresDb | MotoS3} */
    let backend
    /** @type {TcpProxy} */
    let proxy

    before(async () => {
      if (kind === 'postgres') {
        backend = await PostgresDb.create()
        const target = Number(new URL(PG_ADMIN_URL).port || 5432)
        proxy = await TcpProxy.start(target, { name: 'postgres-proxy' })
        const url = new URL(backend.url)
        url.hostname = '127.0.0.1'
        url.port = String(proxy.port)
        h.env.POSTGRES = url.toString()
      } else {
        backend = await MotoS3.start(`${h.tag}-${h.prefix}-moto`)
        proxy = await TcpProxy.start(backend.port, { name: 's3-proxy' })
        Object.assign(h.env, backend.env, { S3_PORT: String(proxy.port) })
      }
      h.cleanups.push((failed) => backend.close(failed))
      h.cleanups.push(() => proxy.close())
      await h.setup(2)
      await h.startWorker('w1')
    })
    after(async () => { await h.teardown() })

    it(`storage (${kind}) cut for ${CUT_MS / 1000} s: live editing goes on, a storage-backed join gets 1013, the worker catches up`, { timeout: 100000 }, h.wrap(async (t) => {
      const [s1, s2] = h.servers
      const liveRoom = `live-${kind}-${randomHex(3)}`
      const storedRoom = `stored-${kind}-${randomHex(3)}`

      // a room that lives in storage only
      const b = h.client(s1, storedRoom, { name: 'b' })
      await b.synced()
      b.text.insert(0, `stored content of ${storedRoom}`)
      b.map.set('from', 'storage')
      const bWant = b.snapshot()
      let got = null
      await waitFor(async () => { got = decodeStored(await backend.pieces(storedRoom)); return sameContent(got, bWant) },
        { timeout: 20000, interval: 100, message: () => `room ${storedRoom} persisted: want ${fingerprint(bWant)} got ${got && fingerprint(got)}` })
      b.destroy()
      await sleep(200)
      await h.redis.del(h.roomKey(storedRoom))

      // a live room, edited on both servers all along
      const live = [h.client(s1, liveRoom, { name: 'a1' }), h.client(s2, liveRoom, { name: 'a2' })]
      await Promise.all(live.map((c) => c.synced()))
      const editors = new Editors(live, { interval: 80 }).start()
      await waitFor(async () => (await backend.pieces(liveRoom)).length > 0, { timeout: 20000, message: `first persist of ${liveRoom}` })

      // ---- cut
      await proxy.cut('refuse')
      const tCut = Date.now()

      // new clients of the stored room: closed with 1013, never handed an empty doc
      const raw = h.raw(s2, storedRoom)
      // a y-websocket client of that room keeps retrying and never syncs during the outage
      const joiner = h.client(s1, storedRoom, { name: 'joiner' })
      await raw.open()
      const close = await withTimeout(raw.closed, 15000, `the server to close a join of ${storedRoom} while storage is cut`)
      const joinMs = Date.now() - tCut
      const kinds = raw.frames.map(frameKind)
      assert.equal(close.code, 1013, `join during the outage closed with 1013 (got ${close.code} ${close.reason}; frames ${kinds.join(',')})`)
      assert.ok(!kinds.includes('step2'), `no SyncStep2 before the close (frames: ${kinds.join(',')})`)
      t.diagnostic(`join of a storage-backed room during the outage: closed ${close.code} "${close.reason}" after ${joinMs} ms`)


      // readiness reports the outage
      for (const s of h.servers) {
        await waitFor(async () => (await httpGet(s.port)).status === 503, { timeout: 5000, interval: 200, message: `${s.name} /readyz 503 while storage is cut` })
      }

      // live editing goes on: edits made during the cut reach the other client
      await sleep(2000)
      await waitConverged(live, editors, { edits: editors.before(Date.now()), timeout: 10000 })

      const remaining = CUT_MS - (Date.now() - tCut)
      if (remaining > 0) await sleep(remaining)
      assert.equal(joiner.provider.synced, false, 'the joiner never synced while storage was cut')
      assert.ok(joiner.closeEvents.length > 0 && joiner.closeEvents.every((e) => e && e.code === 1013),
        `the joiner was closed with 1013 only: ${JSON.stringify(joiner.closeEvents)}`)
      // the worker kept the live room's stream and task
      assert.equal(await h.redis.exists(h.roomKey(liveRoom)), 1, 'live room stream still in Redis')
      assert.ok((await tasksFor(h, h.roomKey(liveRoom))).length > 0, 'live room task still in the worker queue')
      const madeDuringCut = editors.edits.filter((e) => e.at > tCut).length

      // ---- restore
      await proxy.restore()
      const tRestore = Date.now()
      await joiner.synced(20000)
      await waitFor(() => sameContent(joiner.snapshot(), bWant), { timeout: 10000, message: () => `joiner to get the stored doc: want ${fingerprint(bWant)} got ${fingerprint(joiner.snapshot())}` })
      const joinerMs = Date.now() - tRestore
      for (const s of h.servers) {
        await waitFor(async () => (await httpGet(s.port)).status === 200, { timeout: 10000, interval: 200, message: `${s.name} /readyz 200 after the restore` })
      }

      await sleep(1000)
      await editors.stop()
      const final = await waitConverged(live, editors, { timeout: 15000 })
      // every persistence actor of the worker that failed during the outage works again
      let lost = []
      await waitFor(() => (lost = unrecoveredActors(h.workers[0])).length === 0, {
        timeout: 20000, interval: 250, message: () => `the worker's persistence actors to recover after the outage; still stopped: ${lost.join(', ')} (${workerStory(h.workers[0])})`
      })
      let stored = null
      await waitFor(async () => {
        stored = decodeStored(await backend.pieces(liveRoom))
        return sameContent(stored, final)
      }, {
        timeout: 45000,
        interval: 250,
        message: () => `storage to hold every edit of ${liveRoom}: want ${fingerprint(final)} got ${stored && fingerprint(stored)}, ` +
          `missing ${stored && editors.missing(stored).length}/${editors.edits.length}; worker: ${workerStory(h.workers[0])}`
      })
      const caughtUpMs = Date.now() - tRestore
      assert.deepEqual(editors.missing(stored).map((e) => e.marker), [], 'storage lost no edit')
      t.diagnostic(`${kind}: ${madeDuringCut} edits during the ${CUT_MS} ms cut, ${editors.edits.length} in all; after the restore the joiner synced in ${joinerMs} ms, ` +
        `storage held every edit after ${caughtUpMs} ms; worker: ${workerStory(h.workers[0])}`)
      for (const p of h.procs) assert.ok(p.running, `${p.describe()} never exited`)
    }))
  })
}

scenario('postgres')
scenario('s3')
