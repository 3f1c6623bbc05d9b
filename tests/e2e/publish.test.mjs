// Publishing into room streams (ARCHITECTURE.md, "Redis layout"): a client
// that closes right after its first message into a new room still has that
// message stored, with the room's one task.
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

