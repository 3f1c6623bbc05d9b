// Storage compatibility with @y/redis 0.1.x (ARCHITECTURE.md, "Storage layout"), both directions:
// a. documents stored the way @y/redis stores them (npm yjs
//    Y.encodeStateAsUpdateV2 in a `yredis_docs_v1` row with sv =
//    Y.encodeStateVector; an S3 object at enc(room)/index/<uuid v4>; a room
//    with two rows/objects, merged on read) are served to y-websocket clients
//    with identical content, and the worker merges the two into one;
// b. what our worker stores is read back by npm yjs (Y.mergeUpdatesV2 +
//    Y.applyUpdateV2) as the clients' content; the Postgres `sv` column is the
//    state vector of that document.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, Y, waitFor, sleep, randomHex, canonicalJSON, fingerprint, xrangeRaw } from './harness.mjs'
import { PostgresDb, MotoS3, decodeStored, docContent, svString } from './storage.mjs'

const same = (a, b) => a.text === b.text && canonicalJSON(a.map) === canonicalJSON(b.map)

/** Documents as an @y/redis deployment would have them, built with npm yjs. */
function fixtures () {
  // one document
  const single = new Y.Doc()
  single.getText('text').insert(0, 'stored by @y/redis: ü€😀\n')
  single.getText('text').format(0, 6, { bold: true })
  single.getMap('map').set('n', 42)
  single.getMap('map').set('nested', { a: [1, 2, { b: 'c' }], s: 'x' })
  const sub = new Y.Map()
  single.getMap('map').set('ymap', sub)
  sub.set('inner', true)
  single.getText('text').delete(3, 2)

  // two rows for one room: an older full state and a newer one that also has
  // another client's edits (what a worker that died between insert and delete leaves)
  const older = new Y.Doc()
  older.getText('text').insert(0, 'first version;')
  older.getMap('map').set('v', 1)
  const newer = new Y.Doc()
  Y.applyUpdate(newer, Y.encodeStateAsUpdate(older))
  newer.getText('text').insert(newer.getText('text').length, 'second client;')
  newer.getMap('map').set('v', 2)
  newer.getMap('map').set('by', 'newer')

  // two rows with disjoint content from concurrent clients
  const left = new Y.Doc()
  left.getText('text').insert(0, 'LEFT')
  left.getMap('map').set('left', 'l')
  const right = new Y.Doc()
  right.getText('text').insert(0, 'RIGHT')
  right.getMap('map').set('right', 'r')

  const merged = (...docs) => {
    const d = new Y.Doc()
    for (const x of docs) Y.applyUpdate(d, Y.encodeStateAsUpdate(x))
    return docContent(d)
  }
  return {
    single: { pieces: [single], want: docContent(single) },
    overlapping: { pieces: [older, newer], want: merged(older, newer) },
    disjoint: { pieces: [left, right], want: merged(left, right) }
  }
}

async function tasksFor (h, streamKey) {
  const entries = await xrangeRaw(h.redis, `${h.prefix}:worker`)
  return entries.filter((e) => e.fields.some((f, i) => i % 2 === 1 && e.fields[i - 1].toString() === 'compact' && f.toString() === streamKey))
}

async function waitRoomGone (h, room) {
  const key = h.roomKey(room)
  await waitFor(async () => (await h.redis.exists(key)) === 0 && (await tasksFor(h, key)).length === 0, {
    timeout: 20000, message: `room stream ${key} and its task to be removed by the worker`
  })
}

/**
 * Shared body for both backends.
 * @param {Harness} h
 * @param {PostgresDb | MotoS3} backend
 * @param {string} tag
 */
function compatSuite (h, backend, tag, rooms) {
  it(`serves documents stored by @y/redis (${tag}), one and two pieces, with identical content`, { timeout: 60000 }, h.wrap(async () => {
    const [s1, s2] = h.servers
    for (const [name, fx] of Object.entries(rooms.fx)) {
      const room = rooms[name]
      for (const server of [s1, s2]) {
        const c = h.client(server, room, { name: `${name}@${server.name}` })
        await c.synced()
        await waitFor(() => same(c.snapshot(), fx.want), {
          timeout: 10000,
          message: () => `client on ${server.name}, room ${room} (${fx.pieces.length} stored piece(s)): want ${fingerprint(fx.want)} ${JSON.stringify(fx.want)}, got ${JSON.stringify(c.snapshot())}`
        })
        // the formatting attribute is part of the document too
        if (name === 'single') assert.deepEqual(c.text.toDelta()[0].attributes, { bold: true }, 'text formatting survives')
        c.destroy()
      }
    }
  }))

  it(`the worker replaces two stored pieces by one (${tag}) and leaves a single one alone`, { timeout: 60000 }, h.wrap(async () => {
    const before = await backend.pieces(rooms.single)
    await h.startWorker('w1')
    // the clients of the previous test created the room streams and tasks
    for (const name of Object.keys(rooms.fx)) await waitRoomGone(h, rooms[name])
    for (const [name, fx] of Object.entries(rooms.fx)) {
      const room = rooms[name]
      const pieces = await backend.pieces(room)
      assert.equal(pieces.length, 1, `room ${room}: one stored piece after the worker ran (got ${pieces.map((p) => p.ref).join(', ')})`)
      const got = decodeStored(pieces)
      assert.ok(same(got, fx.want), `room ${room}: stored content, want ${JSON.stringify(fx.want)} got ${JSON.stringify(got)}`)
      if (backend.kind === 'postgres') assert.equal(svString(pieces[0].sv), svString(got.sv), `room ${room}: sv column`)
    }
    // nothing changed in the single-piece room: it is not rewritten
    const after = await backend.pieces(rooms.single)
    assert.deepEqual(after.map((p) => p.ref), before.map((p) => p.ref), 'an unchanged single piece is kept as is')
  }))

  it(`what the worker stores is read by npm yjs as the clients' content (${tag})`, { timeout: 60000 }, h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = rooms.edited
    const a = h.client(s1, room, { name: 'a' })
    const b = h.client(s2, room, { name: 'b' })
    await Promise.all([a.synced(), b.synced()])
    for (let k = 0; k < 20; k++) {
      const c = k % 2 ? a : b
      c.text.insert(k % 3 === 0 ? 0 : c.text.length, `<${c.name}${k}>`)
      c.map.set(`${c.name}${k}`, { k, arr: [k, 'ü'] })
      if (k % 5 === 4) c.text.delete(0, 1)
      await sleep(10)
    }
    const nested = new Y.Map()
    a.map.set('ymap', nested)
    nested.set('deep', 'yes')
    await waitFor(() => same(a.snapshot(), b.snapshot()) && a.snapshot().map.ymap?.deep === 'yes', { message: 'a and b to converge' })
    const want = a.snapshot()
    a.destroy(); b.destroy()
    await waitRoomGone(h, room)
    const pieces = await backend.pieces(room)
    assert.equal(pieces.length, 1, 'one stored piece')
    // npm yjs: merge (a no-op for one piece, as @y/redis always does) and apply as update v2
    const update = Y.mergeUpdatesV2(pieces.map((p) => new Uint8Array(p.bytes)))
    const d = new Y.Doc()
    Y.applyUpdateV2(d, update)
    assert.equal(d.getText('text').toString(), want.text, 'stored text')
    assert.equal(canonicalJSON(d.getMap('map').toJSON()), canonicalJSON(want.map), 'stored map')
    // it is an update v2, not v1 (a v1 update does not decode as v2 and vice versa)
    let asV1 = null
    try { const x = new Y.Doc(); Y.applyUpdate(x, new Uint8Array(pieces[0].bytes)); asV1 = x.getText('text').toString() } catch {}
    assert.notEqual(asV1, want.text, 'stored bytes are an update v2 (read as v1 they do not give the document)')
    if (backend.kind === 'postgres') {
      assert.ok(pieces[0].sv && pieces[0].sv.length > 0, 'sv column is set')
      assert.equal(svString(pieces[0].sv), svString(Y.encodeStateVector(d)), 'sv column = Y.encodeStateVector(stored doc)')
    }
  }))
}

describe('compat: Postgres rows as @y/redis writes them', { timeout: 180000 }, () => {
  const h = new Harness('compat-pg')
  const fx = fixtures()
  const rooms = {
    fx,
    single: `compat%20pg-${randomHex(3)}`,
    overlapping: `compat-pg-two-${randomHex(3)}`,
    disjoint: `compat-pg-disjoint-${randomHex(3)}`,
    edited: `compat-pg-edit-${randomHex(3)}`
  }
  /** @type {PostgresDb} */
  let db
  before(async () => {
    db = await PostgresDb.create()
    h.cleanups.push(() => db.close())
    Object.assign(h.env, db.env)
    // an existing @y/redis deployment: its table, its rows, no migration history
    await db.createTableLikeYRedis()
    for (const name of ['single', 'overlapping', 'disjoint']) {
      for (const doc of fx[name].pieces) await db.put(rooms[name], 'index', Y.encodeStateAsUpdateV2(doc), Y.encodeStateVector(doc))
    }
    await h.setup(2)
  })
  after(async () => { await h.teardown() })
  compatSuite(h, /** @type {any} */ ({
    kind: 'postgres',
    pieces: (room) => db.pieces(room)
  }), 'postgres', rooms)
})

describe('compat: S3 objects as @y/redis writes them', { timeout: 180000 }, () => {
  const h = new Harness('compat-s3')
  const fx = fixtures()
  const rooms = {
    fx,
    single: `compat%20s3-${randomHex(3)}`,
    overlapping: `compat-s3-two-${randomHex(3)}`,
    disjoint: `compat-s3-disjoint-${randomHex(3)}`,
    edited: `compat-s3-edit-${randomHex(3)}`
  }
  /** @type {MotoS3} */
  let s3
  before(async () => {
    s3 = await MotoS3.start(`compat-s3-${h.prefix}-moto`)
    h.cleanups.push((failed) => s3.close(failed))
    Object.assign(h.env, s3.env)
    // the bucket exists already, as in a deployment
    await s3.createBucket()
    for (const name of ['single', 'overlapping', 'disjoint']) {
      for (const doc of fx[name].pieces) {
        const key = await s3.put(rooms[name], 'index', Y.encodeStateAsUpdateV2(doc))
        assert.match(key, /^[^/]+\/index\/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
      }
    }
    assert.equal((await s3.listKeys(`${encodeURIComponent(rooms.single)}/index/`)).length, 1)
    assert.ok((await s3.listKeys('compat%2520s3-'))[0].startsWith('compat%2520s3-'), 'room enc()oded once in the key')
    await h.setup(2)
  })
  after(async () => { await h.teardown() })
  compatSuite(h, /** @type {any} */ ({
    kind: 's3',
    pieces: (room) => s3.pieces(room)
  }), 's3', rooms)
})
