// Quiet streams woken by Redis keyspace notifications (REDIS_STREAM_EVENTS,
// on by default): a server serving many quiet rooms names only the busy
// streams in its reads, instead of every stream it serves; an append to a
// quiet stream is announced, and interrupts the read blocked on the busy
// ones. Watched with MONITOR on a private Redis (so only these servers'
// commands show), with a block time of 30 s so that the once-per-block read
// of every stream stays out of the window and a missed wake-up shows as a
// 30 s wait. Also: appends by another kind of writer (a plain XADD, as an
// @y/redis server makes) are announced too; the notification connection
// killed, and Redis restarted (which forgets the setting), are recovered
// from; a Redis refusing CONFIG leaves the server reading every stream and
// delivering as before.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { Harness, randomHex, sleep, waitFor, grepLog, encodeSyncUpdate } from './harness.mjs'
import { PrivateRedis } from './faults.mjs'

const BLOCK_MS = '30000'
const QUIET_ROOMS = 30
const LIVE = /keyspace notifications announce news/
// A stream without entries for 2 s is quiet; the listener checks every second.
const QUIET_SETTLE_MS = 3500

/** Records the XREADs Redis runs while `during` runs: for each, how many streams it names and whether it blocks. */
async function watchReads (redis, prefix, during) {
  const monitor = await redis.client()
  const reads = []
  await monitor.monitor((line) => {
    const args = [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1])
    if (args[0]?.toUpperCase() !== 'XREAD' || !args.some((a) => a.startsWith(`${prefix}:`))) return
    const streams = args.findIndex((a) => a.toUpperCase() === 'STREAMS')
    reads.push({ named: (args.length - streams - 1) / 2, blocks: args.some((a) => a.toUpperCase() === 'BLOCK') })
  })
  try {
    await during()
    await sleep(200)
  } finally {
    await monitor.destroy()
  }
  return reads
}

/** Makes `count` edits on `writer`, each awaited on `reader`; returns the slowest in ms. */
async function editsCross (writer, reader, count, tag, limitMs = 2000) {
  let slowest = 0
  for (let i = 0; i < count; i++) {
    const mark = `<${tag}${i}>`
    const started = Date.now()
    writer.text.insert(writer.text.length, mark)
    while (!reader.text.toString().includes(mark)) {
      assert.ok(Date.now() - started < limitMs, `edit ${mark} took over ${limitMs} ms to cross servers`)
      await sleep(2)
    }
    slowest = Math.max(slowest, Date.now() - started)
  }
  return slowest
}

async function notifyFlags (redis) {
  const client = await redis.client()
  try {
    return (await client.configGet('notify-keyspace-events'))['notify-keyspace-events']
  } finally {
    await client.destroy()
  }
}

/** Five quiet rooms read on server 2, and an active one written on server 1 and read on server 2. */
async function activeAndQuietRooms (h) {
  const [s1, s2] = h.servers
  const quiet = []
  for (let i = 0; i < 5; i++) quiet.push(h.client(s2, `quiet-${i}-${randomHex(3)}`, { name: `quiet${i}` }))
  await Promise.all(quiet.map((c) => c.synced()))
  const room = `active-${randomHex(4)}`
  const writer = h.client(s1, room, { name: 'writer' })
  const reader = h.client(s2, room, { name: 'reader' })
  await Promise.all([writer.synced(), reader.synced()])
  return { writer, reader }
}

const hasStreamEvents = (flags) => flags.includes('K') && (flags.includes('t') || flags.includes('A'))

describe('stream reads woken by keyspace notifications', { timeout: 150000 }, () => {
  const h = new Harness('stream-events')
  let redis
  let writer
  let reader
  const quietRooms = []

  before(async () => {
    redis = await PrivateRedis.start({ tag: 'stream-events' })
    h.env.REDIS = redis.url
    await h.setup(2, { REDIS_BLOCK_MS: BLOCK_MS })
    for (const s of h.servers) {
      await waitFor(() => grepLog(s, LIVE).length === 1, { message: `${s.name} to subscribe to stream notifications` })
    }
    const [s1, s2] = h.servers
    for (let i = 0; i < QUIET_ROOMS; i++) {
      const room = `quiet-${i}-${randomHex(3)}`
      quietRooms.push({ room, reader: h.client(s2, room, { name: `quiet${i}` }) })
    }
    await Promise.all(quietRooms.map((q) => q.reader.synced()))
    const room = `active-${randomHex(4)}`
    writer = h.client(s1, room, { name: 'writer' })
    reader = h.client(s2, room, { name: 'reader' })
    await Promise.all([writer.synced(), reader.synced()])
    await sleep(QUIET_SETTLE_MS)
  })
  after(async () => {
    await h.teardown()
    await redis?.close()
  })

  it('turns the notifications on in Redis', h.wrap(async () => {
    const flags = await notifyFlags(redis)
    assert.ok(hasStreamEvents(flags), `notify-keyspace-events is ${JSON.stringify(flags)}`)
  }))

  it('reads name only the busy streams', h.wrap(async () => {
    let slowest = 0
    const reads = await watchReads(redis, h.prefix, async () => {
      slowest = await editsCross(writer, reader, 20, 'a')
    })
    console.log(`# ${reads.length} reads, most streams named ${Math.max(...reads.map((r) => r.named))}, slowest edit ${slowest} ms`)
    assert.ok(reads.length >= 20, `expected a read per edit on the reading server, saw ${reads.length}`)
    for (const read of reads) {
      assert.ok(read.named <= 2, `a read named ${read.named} streams (${QUIET_ROOMS} quiet rooms open): ${JSON.stringify(reads)}`)
    }
  }))

  it('an edit in a quiet room interrupts the read blocked on the busy room', h.wrap(async () => {
    const [s1] = h.servers
    for (let i = 0; i < 5; i++) {
      // The active room is busy (entries within 2 s) and has nothing new:
      // server 2 waits on it in a 30 s XREAD BLOCK.
      await editsCross(writer, reader, 1, `busy${i}-`)
      await sleep(300)
      const q = quietRooms[i]
      const quietWriter = h.client(s1, q.room, { name: `quiet-writer${i}` })
      await quietWriter.synced()
      const started = Date.now()
      quietWriter.text.insert(0, `<quiet${i}>`)
      await waitFor(() => q.reader.text.toString().includes(`<quiet${i}>`), {
        timeout: 2000, interval: 1, message: `the edit in quiet room ${i} to reach its reader on the other server`
      })
      console.log(`# quiet room ${i}: edit crossed in ${Date.now() - started} ms`)
      quietWriter.destroy()
    }
  }))

  it('an append by another writer (a plain XADD) to a quiet stream is announced too', h.wrap(async () => {
    await sleep(QUIET_SETTLE_MS)
    const q = quietRooms[QUIET_ROOMS - 1]
    const doc = new Y.Doc()
    doc.getText('text').insert(0, '<external>')
    const client = await redis.client()
    const started = Date.now()
    try {
      await client.xAdd(h.roomKey(q.room), '*', { m: encodeSyncUpdate(Y.encodeStateAsUpdate(doc)) })
    } finally {
      await client.destroy()
    }
    await waitFor(() => q.reader.text.toString().includes('<external>'), { timeout: 2000, interval: 1, message: 'the XADD to reach the reader' })
    console.log(`# external append reached the reader in ${Date.now() - started} ms`)
  }))

  it('a killed notification connection is replaced; edits keep crossing meanwhile', h.wrap(async () => {
    const admin = await redis.client()
    try {
      await admin.sendCommand(['CLIENT', 'KILL', 'TYPE', 'pubsub'])
    } finally {
      await admin.destroy()
    }
    await editsCross(writer, reader, 5, 'b')
    for (const s of h.servers) {
      await waitFor(() => grepLog(s, LIVE).length === 2, { message: `${s.name} to subscribe again` })
    }
    await sleep(QUIET_SETTLE_MS)
    const reads = await watchReads(redis, h.prefix, () => editsCross(writer, reader, 10, 'c'))
    // Streams of clients that were still settling may be busy: far fewer than all 31.
    assert.ok(reads.length >= 10 && reads.every((r) => r.named <= 5),
      `after resubscribing, reads should leave the quiet streams out: ${JSON.stringify(reads)}`)
  }))

  it('after a Redis restart (which forgets the setting) the notifications are on again', { timeout: 90000 }, h.wrap(async () => {
    const closes = quietRooms.map((q) => q.reader.closeEvents.length)
    const subscribed = h.servers.map((s) => grepLog(s, LIVE).length)
    await redis.kill()
    await redis.start()
    await waitFor(async () => hasStreamEvents(await notifyFlags(redis)), { timeout: 20000, message: 'the servers to turn notifications on again' })
    // The servers ask their clients to resync after the outage.
    await waitFor(() => writer.provider.synced && reader.provider.synced && reader.text.toString() === writer.text.toString(), {
      timeout: 30000, message: 'the clients to resync'
    })
    for (const [i, s] of h.servers.entries()) {
      await waitFor(() => grepLog(s, LIVE).length > subscribed[i], { timeout: 20000, message: `${s.name} to subscribe again` })
    }
    await waitFor(() => quietRooms.every((q, i) => q.reader.closeEvents.length > closes[i] && q.reader.provider.synced), {
      timeout: 30000, message: 'the quiet rooms to be closed and resync'
    })
    // A reconnected y-websocket client still sends awareness for a couple
    // of seconds after it synced.
    await sleep(2 * QUIET_SETTLE_MS)
    const reads = await watchReads(redis, h.prefix, () => editsCross(writer, reader, 10, 'd', 5000))
    assert.ok(reads.length >= 10 && reads.every((r) => r.named <= 5),
      `after the restart, reads should leave the quiet streams out: ${JSON.stringify(reads)}`)
  }))
})

describe('a Redis that refuses CONFIG', { timeout: 90000 }, () => {
  const h = new Harness('stream-events-refused')
  let redis

  before(async () => {
    redis = await PrivateRedis.start({ tag: 'stream-events-refused', args: ['--rename-command', 'CONFIG', '""'] })
    h.env.REDIS = redis.url
    await h.setup(2, { REDIS_BLOCK_MS: BLOCK_MS })
  })
  after(async () => {
    await h.teardown()
    await redis?.close()
  })

  it('says so once, and reads every stream, blocking, with edits crossing as before', h.wrap(async () => {
    for (const s of h.servers) {
      await waitFor(() => grepLog(s, /redis refuses keyspace notifications/).length === 1, { message: `${s.name} to report the refusal` })
    }
    const { writer, reader } = await activeAndQuietRooms(h)
    let slowest = 0
    const reads = await watchReads(redis, h.prefix, async () => { slowest = await editsCross(writer, reader, 10, 'e') })
    console.log(`# polling: ${reads.length} reads, slowest edit ${slowest} ms`)
    assert.ok(reads.some((r) => r.blocks && r.named === 6), `expected blocking reads naming all 6 streams: ${JSON.stringify(reads)}`)
    for (const s of h.servers) assert.equal(grepLog(s, /redis refuses keyspace notifications/).length, 1)
  }))
})

describe('REDIS_STREAM_EVENTS=false', { timeout: 90000 }, () => {
  const h = new Harness('stream-events-off')
  let redis

  before(async () => {
    redis = await PrivateRedis.start({ tag: 'stream-events-off' })
    h.env.REDIS = redis.url
    await h.setup(2, { REDIS_BLOCK_MS: BLOCK_MS, REDIS_STREAM_EVENTS: 'false' })
  })
  after(async () => {
    await h.teardown()
    await redis?.close()
  })

  it('leaves Redis settings alone and reads every stream', h.wrap(async () => {
    const { writer, reader } = await activeAndQuietRooms(h)
    await sleep(QUIET_SETTLE_MS)
    const reads = await watchReads(redis, h.prefix, () => editsCross(writer, reader, 10, 'f'))
    assert.ok(reads.some((r) => r.blocks && r.named === 6), `expected blocking reads naming all 6 streams: ${JSON.stringify(reads)}`)
    assert.equal(await notifyFlags(redis), '')
    for (const s of h.servers) assert.deepEqual(grepLog(s, /keyspace notifications/), [])
  }))
})
