// Redis Cluster (README, "Redis deployments"; ARCHITECTURE.md, "Redis
// Cluster layout"): three masters started by this test
// (`redis-server --cluster-enabled yes` + `redis-cli --cluster create`), two
// servers and one worker with REDIS_CLUSTER=true and two seed nodes.
// a. 200 rooms, one client per room on each server: rooms land on all three
//    masters (count per master printed), every document converges, the
//    worker persists each, and the streams are trimmed away.
// b. `redis-cli --cluster reshard` moves the slots of five buckets from one
//    master to another while clients keep editing rooms in those buckets (and
//    others): no edit is lost, in clients or in storage.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { Harness, waitFor, sleep, randomHex, fingerprint, roomBucket, scanKeys, xrangeRaw, decodeStreamMessage } from './harness.mjs'
import { FsStorage, decodeStored } from './storage.mjs'
import { Editors, waitConverged, sameContent, workerStory } from './faults.mjs'
import { startCluster } from './redis-topology.mjs'

/** `{bN}` hash tag slot, as Redis computes it (CRC16-XMODEM mod 16384). */
function tagSlot (tag) {
  let crc = 0
  for (const b of Buffer.from(tag)) {
    crc ^= b << 8
    for (let i = 0; i < 8; i++) crc = (crc & 0x8000) ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
  }
  return crc % 16384
}

/** Runs a command to its end; resolves with code and output. */
function run (cmd, args, timeout = 120000) {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    p.stdout.on('data', (d) => { out += d })
    p.stderr.on('data', (d) => { out += d })
    const t = setTimeout(() => p.kill('SIGKILL'), timeout)
    p.once('exit', (code) => { clearTimeout(t); resolve({ code, out }) })
  })
}

/** Waits until `storage` holds every room of `rooms` with the content `want` maps it to. */
async function waitPersisted (h, storage, rooms, want, what) {
  let missing = []
  await waitFor(async () => {
    missing = []
    for (const room of rooms) {
      const stored = decodeStored(await storage.pieces(room))
      if (!sameContent(stored, want.get(room))) missing.push(room)
    }
    return missing.length === 0
  }, { timeout: 60000, interval: 500, message: () => `${what}; ${missing.length} not yet (${missing.slice(0, 5).join(', ')}); worker: ${workerStory(h.workers[0])}` })
}

describe('Redis Cluster', { timeout: 300000 }, () => {
  let cluster
  /** @type {Harness} */
  let h
  /** @type {FsStorage} */
  let storage

  before(async () => {
    cluster = await startCluster({ tag: 'redis-cluster' })
    h = new Harness('redis-cluster', { env: { ...cluster.env, REDIS_COMMAND_TIMEOUT_MS: '5000' } })
    storage = new FsStorage(path.join(h.workDir, 'data'))
    h.redis = await cluster.client()
    await h.startServer('s1')
    await h.startServer('s2')
    await h.startWorker('w1')
  })
  after(async () => {
    await h?.teardown()
    await cluster?.stop()
  })

  /** room stream keys of this test on each master */
  async function streamsPerMaster () {
    const counts = []
    for (const n of cluster.nodes) {
      const c = await cluster.nodeClient(n)
      try {
        const keys = []
        for await (const batch of c.scanIterator({ MATCH: `${h.prefix}:{b*}:room:*`, COUNT: 1000 })) keys.push(...batch)
        counts.push(keys.length)
      } finally { await c.disconnect() }
    }
    return counts
  }

  it('200 rooms on 2 servers + 1 worker over 3 masters: spread, converge, persisted, trimmed', { timeout: 200000 }, async (t) => h.wrap(async () => {
    const [s1, s2] = h.servers
    const rooms = Array.from({ length: 200 }, (_, i) => `cl-${i}-${randomHex(2)}`)
    const pairs = []
    const t0 = Date.now()
    for (let i = 0; i < rooms.length; i += 25) {
      const batch = rooms.slice(i, i + 25).map((room) => [h.client(s1, room, { name: `${room}-a` }), h.client(s2, room, { name: `${room}-b` })])
      await Promise.all(batch.flat().map((c) => c.synced(30000)))
      pairs.push(...batch)
    }
    const tJoined = Date.now()
    // two edits by each client
    for (let k = 0; k < 2; k++) {
      for (const [a, b] of pairs) {
        for (const c of [a, b]) {
          c.text.insert(c.text.length, `[${c.name}:${k}]`)
          c.map.set(`${c.name}-${k}`, k)
        }
      }
      await sleep(200)
    }
    const want = (c) => [0, 1].map((k) => `[${c.name}:${k}]`)
    await waitFor(() => pairs.every(([a, b]) => {
      const sa = a.snapshot()
      const sb = b.snapshot()
      return sameContent(sa, sb) && [...want(a), ...want(b)].every((m) => sa.text.includes(m))
    }), {
      timeout: 60000,
      interval: 200,
      message: () => {
        const bad = pairs.filter(([a, b]) => !sameContent(a.snapshot(), b.snapshot()))
        return `every room to converge; ${bad.length} rooms differ, e.g. ${bad.slice(0, 3).map(([a, b]) => `${a.room}: ${fingerprint(a.snapshot())} vs ${fingerprint(b.snapshot())}`).join('; ')}`
      }
    })
    const tConverged = Date.now()
    const perMaster = await streamsPerMaster()
    const buckets = new Set(rooms.map((r) => roomBucket(r)))
    t.diagnostic(`200 rooms joined by 400 clients in ${tJoined - t0} ms, 800 edits converged in ${tConverged - tJoined} ms; ` +
      `room streams per master: ${perMaster.join(' / ')} (ports ${cluster.nodes.map((n) => n.port).join(' / ')}); ${buckets.size} of 32 buckets used`)
    assert.equal(perMaster.reduce((a, b) => a + b, 0), 200, 'one stream per room')
    for (const [i, n] of perMaster.entries()) assert.ok(n > 0, `master ${i + 1} holds rooms`)
    // the stream entries are valid messages
    for (const room of rooms.slice(0, 10)) {
      for (const e of await xrangeRaw(h.redis, h.roomKey(room))) {
        assert.doesNotThrow(() => decodeStreamMessage(e.fields[1]), `stream entry ${e.id} of ${room} decodes`)
      }
    }

    // every room persisted with its content
    const final = new Map(pairs.map(([a]) => [a.room, a.snapshot()]))
    await waitPersisted(h, storage, rooms, final, 'every room persisted')
    const tPersisted = Date.now()

    // with the clients gone, the worker trims every stream away and drops its task
    h.destroyClients()
    let left = []
    await waitFor(async () => (left = await streamsPerMaster()).every((n) => n === 0), {
      timeout: 60000, interval: 500, message: () => `room streams to be trimmed away: ${left.join(' / ')} left`
    })
    const tasksLeft = []
    for (const key of await scanKeys(h.redis, `${h.prefix}:*:worker`)) {
      tasksLeft.push(...(await xrangeRaw(h.redis, key)))
    }
    t.diagnostic(`all 200 rooms persisted ${tPersisted - tConverged} ms after converging; streams trimmed away ${Date.now() - tPersisted} ms later; ${tasksLeft.length} tasks left`)
    assert.equal(tasksLeft.length, 0, 'no task left in any bucket queue')
    for (const p of h.procs) assert.ok(p.running, `${p.describe()} still running`)
  })(t))

  it('a slot migration (redis-cli --cluster reshard) during traffic loses nothing', { timeout: 200000 }, async (t) => h.wrap(async () => {
    const [s1, s2] = h.servers
    const ids = await cluster.nodeIds()
    // the lowest slots move: rooms in the buckets whose tag hashes below 1500
    const SLOTS = 1500
    const moving = new Set(Array.from({ length: 32 }, (_, b) => b).filter((b) => tagSlot(`b${b}`) < SLOTS))
    assert.ok(moving.size >= 3, `buckets in the moving slots: ${[...moving]}`)
    const rooms = []
    for (let i = 0; rooms.length < 12; i++) {
      const room = `rs-${i}-${randomHex(2)}`
      const b = roomBucket(room)
      if (moving.has(b) ? rooms.filter((r) => moving.has(roomBucket(r))).length < 9 : rooms.filter((r) => !moving.has(roomBucket(r))).length < 3) rooms.push(room)
    }
    const clients = rooms.flatMap((room) => [h.client(s1, room, { name: `${room}-a` }), h.client(s2, room, { name: `${room}-b` })])
    await Promise.all(clients.map((c) => c.synced(30000)))
    const editors = new Map(rooms.map((room) => [room, new Editors(clients.filter((c) => c.room === room), { interval: 80 }).start()]))
    await sleep(1500)

    const tStart = Date.now()
    const r = await run('redis-cli', ['--cluster', 'reshard', `127.0.0.1:${cluster.nodes[0].port}`,
      '--cluster-from', ids[0], '--cluster-to', ids[1], '--cluster-slots', String(SLOTS), '--cluster-yes'])
    const tDone = Date.now()
    assert.equal(r.code, 0, `reshard failed: ${r.out.slice(-2000)}`)
    await sleep(1500)
    for (const e of editors.values()) await e.stop()
    const edits = [...editors.values()].reduce((n, e) => n + e.edits.length, 0)
    const during = [...editors.values()].reduce((n, e) => n + e.edits.filter((x) => x.at >= tStart && x.at <= tDone).length, 0)

    // the moved buckets are served by the target now
    const target = await cluster.nodeClient(cluster.nodes[1])
    let movedKeys = 0
    try {
      for (const b of moving) movedKeys += Number(await target.sendCommand(['CLUSTER', 'COUNTKEYSINSLOT', String(tagSlot(`b${b}`))]))
    } finally { await target.disconnect() }
    assert.ok(movedKeys > 0, 'keys of the moved buckets are on the target master')

    const tStop = Date.now()
    const finals = new Map()
    for (const room of rooms) {
      finals.set(room, await waitConverged(clients.filter((c) => c.room === room), editors.get(room), { timeout: 30000 }))
    }
    const closes = clients.reduce((n, c) => n + c.closeEvents.length, 0)
    t.diagnostic(`reshard of ${SLOTS} slots (${moving.size} buckets, ${movedKeys} keys on the target after) took ${tDone - tStart} ms; ` +
      `${edits} edits in ${rooms.length} rooms, ${during} during the reshard; all converged ${Date.now() - tStop} ms after editing stopped; ${closes} socket closes`)

    await waitPersisted(h, storage, rooms, finals, 'every room persisted after the reshard')
    for (const room of rooms) {
      assert.deepEqual(editors.get(room).missing(decodeStored(await storage.pieces(room))).map((e) => e.marker), [], `storage of ${room} lost no edit`)
    }
    for (const p of h.procs) assert.ok(p.running, `${p.describe()} still running`)
  })(t))
})

// c. The cluster over TLS only (`--tls-port`, `--tls-cluster yes`, a CA made
//    by openssl here): servers and worker reach every node through
//    `rediss://` seeds and REDIS_TLS_CA_FILE, the blocking reads included.
describe('Redis Cluster over TLS', { timeout: 120000 }, () => {
  let cluster
  /** @type {Harness} */
  let h
  /** @type {FsStorage} */
  let storage

  before(async () => {
    cluster = await startCluster({ tag: 'redis-cluster-tls', tls: true })
    h = new Harness('redis-cluster-tls', { env: { ...cluster.env, REDIS_COMMAND_TIMEOUT_MS: '5000' } })
    storage = new FsStorage(path.join(h.workDir, 'data'))
    await h.startServer('s1')
    await h.startServer('s2')
    await h.startWorker('w1')
  })
  after(async () => {
    await h?.teardown()
    await cluster?.stop()
  })

  it('30 rooms with a client on each server converge and are persisted', { timeout: 90000 }, async (t) => h.wrap(async () => {
    const [s1, s2] = h.servers
    const rooms = Array.from({ length: 30 }, (_, i) => `cltls-${i}-${randomHex(2)}`)
    const pairs = rooms.map((room) => [h.client(s1, room, { name: `${room}-a` }), h.client(s2, room, { name: `${room}-b` })])
    await Promise.all(pairs.flat().map((c) => c.synced(30000)))
    for (const [a, b] of pairs) {
      for (const c of [a, b]) {
        c.text.insert(c.text.length, `[${c.name}]`)
        c.map.set(c.name, 1)
      }
    }
    await waitFor(() => pairs.every(([a, b]) => {
      const sa = a.snapshot()
      return sameContent(sa, b.snapshot()) && sa.text.includes(`[${a.name}]`) && sa.text.includes(`[${b.name}]`)
    }), { timeout: 30000, interval: 100, message: 'every room to converge over the TLS cluster' })
    const buckets = new Set(rooms.map((r) => roomBucket(r)))
    let missing = []
    await waitFor(async () => {
      missing = []
      for (const [a] of pairs) {
        if (!sameContent(decodeStored(await storage.pieces(a.room)), a.snapshot())) missing.push(a.room)
      }
      return missing.length === 0
    }, { timeout: 60000, interval: 500, message: () => `every room persisted; not yet: ${missing.join(', ')}; worker: ${workerStory(h.workers[0])}` })
    t.diagnostic(`30 rooms in ${buckets.size} buckets converged and persisted over a TLS-only 3-master cluster`)
    for (const p of h.procs) assert.ok(p.running, `${p.describe()} still running`)
  })(t))
})
