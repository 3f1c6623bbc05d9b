// Publishing into room streams (ARCHITECTURE.md, "Redis layout"): a lone
// message goes as `XADD <stream> NOMKSTREAM`, which appends only where the
// stream exists (and so already has its worker task); a stream that does
// not exist yet (a new room, or one a worker compacted and deleted) is
// created by the add-messages script, which also queues its one task. Checked
// with MONITOR on a private Redis (only these servers' commands show): the
// cheap path carries the steady traffic, every stream gets exactly one task,
// a deleted stream gets a new one, and a client that closes right after its
// first message into a new room still has that message stored.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { Harness, randomHex, sleep, waitFor, xrangeRaw, redisRaw, encodeSyncUpdate, decodeStreamMessage } from './harness.mjs'
import { PrivateRedis } from './faults.mjs'

const str = (v) => Buffer.isBuffer(v) ? v.toString('utf8') : String(v)

/** Records the commands Redis runs on keys under `prefix` while `during` runs: [name, ...args]. */
async function watchCommands (redis, prefix, during) {
  const monitor = await redis.client()
  const seen = []
  await monitor.monitor((line) => {
    const args = [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1])
    if (args.some((a) => a.startsWith(`${prefix}:`))) seen.push(args)
  })
  try {
    await during()
    await sleep(200)
  } finally {
    await monitor.destroy()
  }
  return seen
}

/** The tasks of the worker queue naming `streamKey`, and those claimed by `pending`. */
async function tasksOf (h, client, streamKey) {
  const queue = h.workerKeyOf(streamKey)
  const tasks = (await xrangeRaw(client, queue)).filter((e) => str(e.fields[1]) === streamKey)
  const pending = await redisRaw(client, ['XPENDING', queue, queue, '-', '+', '1000'])
  const claimed = new Set(pending.filter(([, consumer]) => str(consumer) === 'pending').map(([id]) => str(id)))
  return { tasks, claimedByPending: tasks.filter((t) => claimed.has(t.id)) }
}

describe('publishing into room streams', { timeout: 120000 }, () => {
  const h = new Harness('publish')
  let redis
  let client

  before(async () => {
    redis = await PrivateRedis.start({ tag: 'publish' })
    h.env.REDIS = redis.url
    await h.setup(2)
    client = await redis.client()
  })
  after(async () => {
    await client?.destroy()
    await h.teardown()
    await redis?.close()
  })

  it('a new room gets its stream and one claimed task; lone messages then go as XADD NOMKSTREAM', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `new-${randomHex(4)}`
    const streamKey = h.roomKey(room)
    let writer, reader
    const commands = await watchCommands(redis, h.prefix, async () => {
      writer = h.client(s1, room, { name: 'writer' })
      reader = h.client(s2, room, { name: 'reader' })
      await Promise.all([writer.synced(), reader.synced()])
      for (let i = 0; i < 20; i++) {
        const mark = `<${i}>`
        writer.text.insert(writer.text.length, mark)
        await waitFor(() => reader.text.toString().includes(mark), { interval: 2, message: `edit ${mark} to reach the reader` })
      }
    })
    const appends = commands.filter((c) => c[0].toUpperCase() === 'XADD' && c[1] === streamKey)
    const scripts = commands.filter((c) => c[0].toUpperCase() === 'EVALSHA' && c[3] === streamKey)
    const conditional = appends.filter((c) => c[2].toUpperCase() === 'NOMKSTREAM')
    console.log(`# ${conditional.length} XADD NOMKSTREAM, ${scripts.length} script calls, ${appends.length} XADDs in all`)
    assert.ok(conditional.length >= 20, `expected the 20 edits as XADD NOMKSTREAM, saw ${conditional.length}`)
    assert.ok(scripts.length >= 1, 'the first message of the new room must go through the script')
    const { tasks, claimedByPending } = await tasksOf(h, client, streamKey)
    assert.equal(tasks.length, 1, `exactly one task for the room, found ${tasks.length}`)
    assert.equal(claimedByPending.length, 1, 'the task must be claimed by "pending"')
    // Everything the writer sent is in the stream and the documents agree.
    const doc = new Y.Doc()
    for (const e of await xrangeRaw(client, streamKey)) {
      const message = decodeStreamMessage(e.fields[1])
      if (message.type === 'update') Y.applyUpdate(doc, message.update)
    }
    assert.equal(doc.getText('text').toString(), writer.text.toString())
    assert.equal(reader.text.toString(), writer.text.toString())
  }))

  it('a stream deleted by compaction gets a new task with its next message', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `deleted-${randomHex(4)}`
    const streamKey = h.roomKey(room)
    const writer = h.client(s1, room, { name: 'writer' })
    const reader = h.client(s2, room, { name: 'reader' })
    await Promise.all([writer.synced(), reader.synced()])
    writer.text.insert(0, 'a')
    await waitFor(() => reader.text.toString() === 'a', { message: 'first edit to reach the reader' })
    // What a worker does with a compacted, emptied room: the stream and its task go.
    const before = await tasksOf(h, client, streamKey)
    assert.equal(before.tasks.length, 1)
    await client.del(streamKey)
    await redisRaw(client, ['XDEL', h.workerKeyOf(streamKey), before.tasks[0].id])
    writer.text.insert(1, 'b')
    await waitFor(() => reader.text.toString() === 'ab', { message: 'the edit after the deletion to reach the reader' })
    const after = await tasksOf(h, client, streamKey)
    assert.equal(after.tasks.length, 1, `one new task for the recreated stream, found ${after.tasks.length}`)
    assert.notEqual(after.tasks[0].id, before.tasks[0].id)
    assert.equal(after.claimedByPending.length, 1, 'the new task must be claimed by "pending"')
    assert.equal((await xrangeRaw(client, streamKey)).length, 1, 'the recreated stream holds the one new message')
  }))

  it('a client that closes right after its first message into a new room still has it stored', h.wrap(async () => {
    const [s1] = h.servers
    const rooms = []
    for (let i = 0; i < 20; i++) {
      const room = `gone-${i}-${randomHex(3)}`
      const raw = h.raw(s1, room)
      await raw.open()
      // The server's sync first: then the update is judged at once.
      await waitFor(() => raw.frames.length > 0, { message: 'the server to send its sync' })
      const doc = new Y.Doc()
      doc.getText('text').insert(0, `gone-${i}`)
      raw.send(encodeSyncUpdate(Y.encodeStateAsUpdate(doc)))
      raw.terminate()
      rooms.push({ streamKey: h.roomKey(room), text: `gone-${i}` })
    }
    for (const { streamKey, text } of rooms) {
      await waitFor(async () => (await xrangeRaw(client, streamKey)).length === 1, { message: `${text} to be stored in ${streamKey}` })
      const doc = new Y.Doc()
      const [entry] = await xrangeRaw(client, streamKey)
      Y.applyUpdate(doc, decodeStreamMessage(entry.fields[1]).update)
      assert.equal(doc.getText('text').toString(), text)
      const { tasks, claimedByPending } = await tasksOf(h, client, streamKey)
      assert.equal(tasks.length, 1, `one task for ${streamKey}`)
      assert.equal(claimedByPending.length, 1)
    }
  }))
})

