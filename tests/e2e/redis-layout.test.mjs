// f. Redis layout, byte for byte compatible with @y/redis 0.1.x (ARCHITECTURE.md, "Redis layout"):
//    room stream key, entry field `m`, message bytes, SyncStep2 rewritten to
//    Update, the worker queue stream + consumer group + `pending` claim.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as encoding from 'lib0/encoding'
import * as awarenessProtocol from 'y-protocols/awareness'
import {
  Harness, Y, waitFor, sleep, randomHex, xrangeRaw, redisRaw, decodeStreamMessage, encodeSyncUpdate
} from './harness.mjs'

const h = new Harness('layout')
// What the application calls the room ...
const logicalName = `a b/ü?x-${randomHex(3)}`
// ... and what the URL path segment (= the server's room name) is, as a client sends it
const rawRoom = encodeURIComponent(logicalName)

const hex = (b) => Buffer.from(b).toString('hex')
const str = (v) => Buffer.isBuffer(v) ? v.toString('utf8') : String(v)
/** flat [k, v, k, v] reply -> object with string keys */
const kv = (arr) => {
  const o = {}
  for (let i = 0; i + 1 < arr.length; i += 2) o[str(arr[i])] = arr[i + 1]
  return o
}

describe('redis layout', { timeout: 120000 }, () => {
  before(async () => { await h.setup(2) })
  after(async () => { await h.teardown() })

  let streamKey = ''
  /** @type {import('./harness.mjs').Client} */
  let a

  const entries = () => xrangeRaw(h.redis, streamKey)
  const dumpEntries = async () => (await entries()).map((e) =>
    `  ${e.id} ${e.fields.map((f, i) => i % 2 === 0 ? str(f) : hex(f).slice(0, 40)).join(' ')}`).join('\n')

  it('room stream key, entry shape, SyncStep2 rewritten to Update, update and awareness bytes', { timeout: 60000 }, h.wrap(async () => {
    const [s1] = h.servers
    streamKey = `${h.prefix}:room:${encodeURIComponent(rawRoom)}:index`
    assert.equal(streamKey, h.roomKey(rawRoom))

    // A client that already has content before it connects: that content
    // reaches the server only as the client's SyncStep2.
    const doc = new Y.Doc()
    doc.getText('text').insert(0, 'offline;')
    doc.getMap('map').set('before', 1)
    const expectedStep2AsUpdate = encodeSyncUpdate(Y.encodeStateAsUpdate(doc))

    a = h.client(s1, rawRoom, { doc, name: 'A' })
    await a.synced()

    await waitFor(async () => (await h.redis.type(streamKey)) === 'stream', {
      timeout: 10000,
      message: `room stream ${streamKey} to exist`
    }).catch(async (e) => {
      const keys = await h.redis.keys(`${h.prefix}*`)
      throw new Error(`${e.message}\n  keys under prefix: ${JSON.stringify(keys)}`)
    })

    await waitFor(async () => (await entries()).some((e) => e.fields[1] && e.fields[1].equals(expectedStep2AsUpdate)), {
      timeout: 10000,
      message: () => `the client's SyncStep2 (byte 1 rewritten to 2) to be stored as ${hex(expectedStep2AsUpdate)}`
    }).catch(async (e) => { throw new Error(`${e.message}\n entries:\n${await dumpEntries()}`) })

    // An incremental update: stored exactly as the client sent it.
    const sent = []
    const onUpdate = (u, origin) => { if (origin !== a.provider) sent.push(encodeSyncUpdate(u)) }
    doc.on('update', onUpdate)
    a.text.insert(a.text.length, 'online')
    a.map.set('after', { x: [1, 2] })
    doc.off('update', onUpdate)
    assert.equal(sent.length, 2)

    // Awareness: stored as the client's awareness frame, byte for byte.
    a.awareness.setLocalState({ user: { name: 'alice' } })
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, 1)
    encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(a.awareness, [a.clientID]))
    const awarenessFrame = Buffer.from(encoding.toUint8Array(enc))

    const want = [...sent, awarenessFrame]
    await waitFor(async () => {
      const es = await entries()
      return want.every((w) => es.some((e) => e.fields[1] && e.fields[1].equals(w)))
    }, {
      timeout: 10000,
      message: () => `update and awareness frames to be stored byte for byte:\n${want.map((w) => '  ' + hex(w)).join('\n')}`
    }).catch(async (e) => { throw new Error(`${e.message}\n entries:\n${await dumpEntries()}`) })

    const es = await entries()
    const replay = new Y.Doc()
    for (const e of es) {
      assert.equal(e.fields.length, 2, `entry ${e.id} must have exactly one field, has ${e.fields.length / 2}`)
      assert.equal(str(e.fields[0]), 'm', `entry ${e.id} field name`)
      const m = e.fields[1]
      assert.ok(!(m[0] === 0 && m[1] !== 2), `entry ${e.id} is a sync message with subtype ${m[1]}: ${hex(m)}`)
      assert.ok(m[0] === 0 || m[0] === 1, `entry ${e.id} has message type ${m[0]}`)
      const d = decodeStreamMessage(m) // throws on anything malformed
      if (d.type === 'update') Y.applyUpdate(replay, d.update)
    }
    assert.equal(replay.getText('text').toString(), 'offline;online', 'stream replays to the text')
    assert.deepEqual(replay.getMap('map').toJSON(), { before: 1, after: { x: [1, 2] } })
    replay.destroy()

    // the key is the double-encoded raw segment; the once-encoded / decoded forms must not exist
    for (const wrong of [`${h.prefix}:room:${rawRoom}:index`, `${h.prefix}:room:${encodeURIComponent(logicalName)}:index`, `${h.prefix}:room:${logicalName}:index`]) {
      if (wrong === streamKey) continue
      assert.equal(await h.redis.exists(wrong), 0, `unexpected key ${wrong}`)
    }
  }))

  it('an empty SyncStep2 from a client with an empty doc is not stored', { timeout: 30000 }, h.wrap(async () => {
    assert.ok(a, 'previous test must have run')
    const before = (await entries()).length
    const b = h.client(h.servers[1], rawRoom, { name: 'B' })
    await b.synced()
    await waitFor(() => b.text.toString() === 'offline;online', { timeout: 10000, message: () => `B to get the doc, has ${JSON.stringify(b.text.toString())}` })
    await sleep(1000)
    const added = (await entries()).slice(before)
    const syncAdded = added.filter((e) => e.fields[1][0] === 0)
    assert.deepEqual(syncAdded.map((e) => hex(e.fields[1])), [],
      'a client with nothing new must not add sync entries (its SyncStep2 carries no content)')
  }))

  it('the query string is not part of the room name', { timeout: 30000 }, h.wrap(async () => {
    const room = `q-${randomHex(3)}`
    // url becomes /<room>?foo=bar%20baz&yauth=ignored
    const c = h.client(h.servers[0], room, { name: 'Q', params: { foo: 'bar baz', yauth: 'ignored' } })
    assert.match(c.provider.url, /\?foo=bar%20baz&yauth=ignored$/)
    await c.synced()
    c.text.insert(0, 'q')
    const key = h.roomKey(room)
    await waitFor(async () => (await h.redis.exists(key)) === 1, {
      timeout: 10000,
      message: `stream ${key} to exist (room = path segment without the query)`
    }).catch(async (e) => {
      throw new Error(`${e.message}\n  keys under prefix: ${JSON.stringify(await h.redis.keys(`${h.prefix}:room:*`))}`)
    })
  }))

  it('worker queue stream, consumer group and pending claim', { timeout: 30000 }, h.wrap(async () => {
    assert.ok(streamKey, 'previous test must have run')
    const workerKey = `${h.prefix}:worker`
    assert.equal(await h.redis.type(workerKey), 'stream', `${workerKey} must be a stream`)
    const tasks = await xrangeRaw(h.redis, workerKey)
    const mine = tasks.filter((t) => t.fields.length >= 2 && str(t.fields[1]) === streamKey)
    assert.equal(mine.length, 1,
      `exactly one compact task for ${streamKey}; tasks: ${JSON.stringify(tasks.map((t) => [t.id, t.fields.map(str)]))}`)
    const task = mine[0]
    assert.deepEqual(task.fields.map(str), ['compact', streamKey], 'task entry must have exactly one field "compact" = room stream key')

    const groups = (await redisRaw(h.redis, ['XINFO', 'GROUPS', workerKey])).map(kv)
    const group = groups.find((g) => str(g.name) === workerKey)
    assert.ok(group, `consumer group ${workerKey} must exist on ${workerKey}; groups: ${JSON.stringify(groups.map((g) => str(g.name)))}`)

    const pending = await redisRaw(h.redis, ['XPENDING', workerKey, workerKey, '-', '+', '100'])
    const p = pending.map(([id, consumer, idle, count]) => ({ id: str(id), consumer: str(consumer), idle, count }))
    const pt = p.find((x) => x.id === task.id)
    assert.ok(pt, `task ${task.id} must be pending in group ${workerKey}; pending: ${JSON.stringify(p)}`)
    assert.equal(pt.consumer, 'pending', 'task must be claimed by the pseudo-consumer "pending"')

    const consumers = (await redisRaw(h.redis, ['XINFO', 'CONSUMERS', workerKey, workerKey])).map(kv)
    const pc = consumers.find((c) => str(c.name) === 'pending')
    assert.ok(pc, `consumer "pending" must exist; consumers: ${JSON.stringify(consumers.map((c) => str(c.name)))}`)
    assert.ok(Number(pc.pending) >= 1, `consumer "pending" must hold the task; pending=${pc.pending}`)
  }))
})
