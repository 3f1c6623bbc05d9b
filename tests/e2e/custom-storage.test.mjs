// A storage backend of one's own, through the library API: the example
// program examples/single_file_storage.rs (server and worker in one process
// on a Storage implementation of its own: one file per document, replaced on
// every compaction) serves y-websocket clients next to a plain `y-redis
// server` on the same Redis; its worker persists into its files; with Redis
// emptied, a new client gets the whole document from the file alone; a name
// that storage refuses for good closes the client once with 4422.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import {
  Harness, startServer, binaryPath, freePort, waitFor, sleep, randomHex, canonicalJSON, deletePrefix, FAST_WORKER_ENV
} from './harness.mjs'
import { decodeStored } from './storage.mjs'

/** The example's binary, built next to y-redis by `cargo build --examples` (and `cargo test`). */
function exampleBin () {
  const bin = path.join(path.dirname(binaryPath()), 'examples', 'single_file_storage')
  if (!fs.existsSync(bin)) throw new Error(`example not built at ${bin}: run \`cargo build --examples\``)
  return bin
}

const hex = (s) => Buffer.from(s, 'utf8').toString('hex')
const same = (a, b) => a.text === b.text && canonicalJSON(a.map) === canonicalJSON(b.map)

describe('custom storage: examples/single_file_storage.rs', () => {
  const h = new Harness('custom-storage')
  let example
  let storageDir

  before(async () => {
    await h.setup(1)
    storageDir = path.join(h.workDir, 'single-file')
    example = await startServer({
      prefix: h.prefix,
      name: 'example',
      tag: h.tag,
      workDir: h.workDir,
      bin: exampleBin(),
      subcommand: null,
      env: { ...FAST_WORKER_ENV, WORKER_PORT: String(await freePort()), STORAGE_DIR: storageDir }
    })
    h.servers.push(example)
  })
  after(() => h.teardown())

  /** What the example's storage holds for `room` (its one file, decoded), or null. */
  function stored (room) {
    const dir = path.join(storageDir, hex(room))
    let files
    try { files = fs.readdirSync(dir) } catch { return null }
    const file = path.join(dir, hex('index'))
    if (!fs.existsSync(file)) return null
    return { files, ...decodeStored([{ bytes: fs.readFileSync(file) }]) }
  }

  it('syncs clients of both processes, persists one file per document, serves it back with Redis emptied', h.wrap(async (t) => {
    const [plain] = h.servers
    const room = `doc-${randomHex(4)}`
    const a = await h.client(example, room, { name: 'on-example' }).synced()
    const b = await h.client(plain, room, { name: 'on-y-redis' }).synced()
    for (let i = 0; i < 20; i++) {
      ;(i % 2 ? a : b).text.insert(0, `[${i}]`)
      a.map.set(`k${i}`, i)
      await sleep(5)
    }
    await waitFor(() => same(a.snapshot(), b.snapshot()) && a.snapshot().text.includes('[0]') && a.snapshot().text.includes('[19]'), {
      message: 'the clients to converge'
    })
    const first = a.snapshot()
    await waitFor(() => { const s = stored(room); return s && same(s, first) }, {
      timeout: 20000, message: () => `the worker to persist the document into ${storageDir} (holds ${JSON.stringify(stored(room))})`
    })

    // a second compaction replaces the file: still one file, now with the new edits
    b.text.insert(0, '[second]')
    await waitFor(() => a.snapshot().text.includes('[second]'), { message: 'the second edit to reach the example' })
    const second = a.snapshot()
    await waitFor(() => { const s = stored(room); return s && same(s, second) }, {
      timeout: 20000, message: 'the second compaction to replace the file'
    })
    assert.deepEqual(stored(room).files, [hex('index')], 'one file per document, no staging file left')

    // the worker removes the stream once its entries outlive the minimum lifetime
    await waitFor(async () => (await h.redis.exists(h.roomKey(room))) === 0, {
      timeout: 20000, message: 'the worker to remove the room stream'
    })
    h.destroyClients()
    await deletePrefix(h.redis, h.prefix)
    const fresh = await h.client(example, room, { name: 'fresh' }).synced()
    await waitFor(() => same(fresh.snapshot(), second), {
      message: () => `a new client to load the document from the file (has ${JSON.stringify(fresh.snapshot())})`
    })
    t.diagnostic(`persisted ${second.text.length} characters and ${Object.keys(second.map).length} map keys; served back from the file alone`)
  }))

  it('a room name the storage refuses for good closes the client once with 4422', h.wrap(async (t) => {
    // 130 bytes: 260 hex characters, more than a file name holds
    const room = 'r'.repeat(130)
    const client = h.client(example, room)
    await waitFor(() => client.closeEvents.length > 0, { timeout: 10000, message: 'the client to be refused' })
    await sleep(2000)
    t.diagnostic(`close events ${JSON.stringify(client.closeEvents)}`)
    assert.equal(client.closeEvents.length, 1, 'one close, no reconnect loop')
    assert.equal(client.closeEvents[0].code, 4422)
    const ok = await h.client(example, `ok-${randomHex(3)}`).synced()
    ok.text.insert(0, 'still works')
  }))
})
