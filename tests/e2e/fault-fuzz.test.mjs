// Fuzzed frames over real sockets (one bad client never hurts a room).
// 20,000 frames mutated from valid y-websocket messages (encoded by npm yjs /
// y-protocols: SyncStep1, SyncStep2, Updates of many shapes, awareness,
// query-awareness) by flipping, overwriting, inserting, deleting, duplicating
// and truncating bytes, are sent on raw `ws` sockets (a new socket whenever
// the server closed the last one) to one server while two normal clients
// edit: half from a fixed seed, half from a random one (printed; set
// E2E_FUZZ_SEED to replay it). The server process never dies, closes only
// with 4400-4499, every entry of the room stream is one npm yjs applies
// (alone and after the entries before it), the normal clients converge
// holding every edit, a fresh client gets the same content, and applied in
// order the stream's updates give exactly the clients' content.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import { Harness, Y, WebSocket, waitFor, sleep, randomHex, fingerprint, xrangeRaw, decodeStreamMessage, withTimeout } from './harness.mjs'
import { Editors, waitConverged, sameContent } from './faults.mjs'

const FRAMES = Number(process.env.E2E_FUZZ_FRAMES || 10000)
const SOCKETS = 8
const FIXED_SEED = 0x5eed1234
const RANDOM_SEED = Number(process.env.E2E_FUZZ_SEED || (Math.random() * 0xffffffff)) >>> 0

/** xorshift32: deterministic mutations for a given seed */
function prng (seed) {
  let x = seed || 1
  const next = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x }
  return { next, int: (n) => next() % n, pick: (a) => a[next() % a.length] }
}

const msg = (fn) => { const e = encoding.createEncoder(); fn(e); return encoding.toUint8Array(e) }
const syncFrame = (sub, payload) => msg((e) => { encoding.writeVarUint(e, 0); encoding.writeVarUint(e, sub); encoding.writeVarUint8Array(e, payload) })

/** Valid y-websocket frames of every kind a client sends, from real npm yjs / y-protocols encoders. */
function seedFrames (clientA = 1234567, clientB = 7654321) {
  const frames = []
  const doc = new Y.Doc()
  doc.clientID = clientA
  const updates = []
  doc.on('update', (u) => updates.push(u))
  const text = doc.getText('text')
  text.insert(0, 'fuzz seed text ')
  text.insert(5, 'with ünïcödé 🎉 ', { bold: true })
  text.format(0, 4, { italic: true })
  text.delete(2, 3)
  text.insertEmbed(1, { image: 'x.png' })
  const map = doc.getMap('map')
  map.set('n', 42)
  map.set('s', 'str')
  map.set('arr', [1, 'two', { three: 3 }])
  map.set('bin', new Uint8Array([1, 2, 3]))
  const nested = new Y.Map()
  map.set('nested', nested)
  nested.set('deep', new Y.Array())
  nested.get('deep').insert(0, ['a', 'b', 'c'])
  map.delete('s')
  const xml = doc.getXmlFragment('xml')
  const el = new Y.XmlElement('p')
  el.setAttribute('class', 'c')
  el.insert(0, [new Y.XmlText('hello')])
  xml.insert(0, [el])
  doc.getArray('list').insert(0, [1, 2, 3, null, true, 1.5, 'x'])
  for (const u of updates) frames.push(syncFrame(2, u))
  frames.push(syncFrame(2, Y.encodeStateAsUpdate(doc)))
  frames.push(syncFrame(1, Y.encodeStateAsUpdate(doc)))
  frames.push(msg((e) => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, doc) }))
  frames.push(msg((e) => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep2(e, doc, Y.encodeStateVector(new Y.Doc())) }))
  // a second client whose update depends on the first one's (pending structs for a fresh doc)
  const doc2 = new Y.Doc()
  doc2.clientID = clientB
  Y.applyUpdate(doc2, Y.encodeStateAsUpdate(doc))
  const sv = Y.encodeStateVector(doc2)
  doc2.getText('text').insert(3, 'second')
  doc2.getMap('map').set('n', 43)
  frames.push(syncFrame(2, Y.encodeStateAsUpdate(doc2, sv)))
  // awareness: a state, an update of it, a removal; query awareness
  const aw = new awarenessProtocol.Awareness(doc)
  aw.setLocalState({ user: { name: 'fuzz', color: '#ff0000' }, cursor: { anchor: 1, head: 3 } })
  const awFrame = () => msg((e) => { encoding.writeVarUint(e, 1); encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(aw, [doc.clientID])) })
  frames.push(awFrame())
  aw.setLocalStateField('cursor', null)
  frames.push(awFrame())
  aw.setLocalState(null)
  frames.push(awFrame())
  aw.destroy()
  frames.push(Uint8Array.of(3))
  doc.destroy()
  doc2.destroy()
  return frames
}

const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x3f, 0x40, 0xc0]

/** One mutation of `src` (never an identical copy). */
function mutate (r, src, seeds) {
  let b = Array.from(src)
  const rounds = 1 + r.int(3)
  for (let k = 0; k < rounds; k++) {
    const pos = b.length ? r.int(b.length) : 0
    switch (r.int(8)) {
      case 0: if (b.length) b[pos] ^= 1 << r.int(8); break // flip a bit
      case 1: if (b.length) b[pos] = r.pick(INTERESTING); break // interesting byte
      case 2: if (b.length) b[pos] = r.int(256); break // random byte
      case 3: b.splice(pos, 0, ...Array.from({ length: 1 + r.int(4) }, () => r.int(256))); break // insert
      case 4: b.splice(pos, 1 + r.int(Math.min(8, Math.max(1, b.length - pos)))); break // delete
      case 5: b = b.slice(0, pos); break // truncate
      case 6: { // duplicate a chunk
        const len = 1 + r.int(16)
        b.splice(pos, 0, ...b.slice(pos, pos + len))
        break
      }
      case 7: { // splice the tail of another seed
        const other = r.pick(seeds)
        b = b.slice(0, pos).concat(Array.from(other.subarray(r.int(other.length))))
        break
      }
    }
  }
  const out = Uint8Array.from(b)
  if (out.length === src.length && out.every((x, i) => x === src[i])) {
    // unchanged: flip one bit for sure (or append a byte to an empty frame)
    return out.length ? (out[r.int(out.length)] ^= 1, out) : Uint8Array.of(r.int(256))
  }
  return out
}

const h = new Harness('fault-fuzz')

/** A stream entry is a sync Update whose payload npm yjs decodes, or an
 * awareness message with JSON states (no integration into a document). */
function wellFormed (m) {
  try {
    const dec = decoding.createDecoder(m)
    const type = decoding.readVarUint(dec)
    if (type === 0) {
      if (decoding.readVarUint(dec) !== 2) return false
      Y.decodeUpdate(decoding.readVarUint8Array(dec))
    } else if (type === 1) {
      return decodeStreamMessage(m).type === 'awareness'
    } else return false
    return !decoding.hasContent(dec)
  } catch { return false }
}

describe('fuzzed frames over real sockets', { timeout: Math.max(220000, FRAMES * 60) }, () => {
  before(async () => { await h.setup(1) })
  after(async () => { await h.teardown() })

  /** Sends `FRAMES` frames mutated from seed `seed` (client ids from `idBase`), 8 sockets at a time. */
  async function fuzz (t, url, seed, idBase) {
    // Each frame is mutated from seeds of its own two client ids: a fuzz frame
    // is garbage from one client, not a forgery of another client's structs
    // (conflicting structs under one id are undefined behaviour in Yjs).
    const r = prng(seed)
    const seeds = seedFrames()
    // Made up front (the mutations stay reproducible), letting the event loop
    // run between chunks: the normal clients in this process must keep
    // answering the server's pings, or it rightly drops them as dead.
    const frames = []
    for (let i = 0; i < FRAMES; i++) {
      const own = seedFrames(idBase + 2 * i, idBase + 1 + 2 * i)
      frames.push(mutate(r, r.pick(own), own))
      if (i % 200 === 199) await new Promise((resolve) => setImmediate(resolve))
    }
    t.diagnostic(`seed 0x${seed.toString(16)}: ${seeds.length} valid seed frames (${seeds.map((f) => f.length).join(',')} bytes), ${frames.length} mutated frames`)
    const stats = { sent: 0, sockets: 0, refusedOpen: 0, codes: new Map(), bad: [] }
    const open = () => new Promise((resolve, reject) => {
      const ws = new WebSocket(url)
      ws.binaryType = 'nodebuffer'
      ws.on('error', () => {})
      ws.once('open', () => resolve(ws))
      ws.once('close', (code, reason) => {
        stats.codes.set(code, (stats.codes.get(code) || 0) + 1)
        // 1006: the server's close frame lost to a TCP reset (a frame of ours
        // crossed its close); 1013 "missing updates": a socket whose updates
        // waited 10 s for dependencies is asked to resync. Anything else is an error.
        const resync = code === 1013 && reason.toString() === 'missing updates, please resync'
        if ((code < 4400 || code > 4499) && code !== 1006 && !resync) stats.bad.push(`${code} ${reason.toString()}`)
        reject(new Error(`closed ${code} before open`))
      })
      ws.once('unexpected-response', (_q, res) => reject(new Error(`upgrade refused: HTTP ${res.statusCode}`)))
    })
    const t0 = Date.now()
    await Promise.all(Array.from({ length: SOCKETS }, async (_, lane) => {
      let ws = null
      let closed = null
      for (let i = lane; i < frames.length; i += SOCKETS) {
        for (let attempt = 0; !ws; attempt++) {
          try {
            ws = await withTimeout(open(), 10000, 'raw socket to open')
            stats.sockets++
            const sock = ws
            closed = new Promise((resolve) => sock.once('close', () => resolve()))
            closed.then(() => { if (ws === sock) ws = null })
          } catch (e) {
            stats.refusedOpen++
            if (attempt > 20) throw e
            await sleep(50)
          }
        }
        ws.send(frames[i])
        stats.sent++
        // let the server judge the frame before the next one
        await Promise.race([closed, sleep(5)])
      }
      if (ws) ws.terminate()
    }))
    const codes = [...stats.codes].sort((a, b) => a[0] - b[0]).map(([c, n]) => `${c}x${n}`).join(' ')
    t.diagnostic(`sent ${stats.sent} frames on ${stats.sockets} sockets in ${Date.now() - t0} ms; server close codes: ${codes}`)
    assert.equal(stats.sent, FRAMES)
    assert.deepEqual(stats.bad, [], 'the server closed fuzz sockets only with 4400-4499 (or lost the close frame: 1006, or asked for a resync: 1013)')
  }

  it(`2 x ${FRAMES} mutated y-websocket frames: the server survives, the stream holds only what npm yjs applies, a fresh client equals the live ones`, { timeout: Math.max(200000, FRAMES * 50) }, h.wrap(async (t) => {
    const [s1] = h.servers
    const room = `fuzz-${randomHex(3)}`
    const clients = [h.client(s1, room, { name: 'n1' }), h.client(s1, room, { name: 'n2' })]
    await Promise.all(clients.map((c) => c.synced()))
    clients[0].awareness.setLocalStateField('user', { name: 'n1' })
    const editors = new Editors(clients, { interval: 40 }).start()
    t.diagnostic(`random seed 0x${RANDOM_SEED.toString(16)} (replay: E2E_FUZZ_SEED=${RANDOM_SEED})`)
    for (const [seed, idBase] of [[FIXED_SEED, 100000], [RANDOM_SEED, 100000 + 4 * FRAMES]]) {
      await fuzz(t, `${s1.url}/${room}`, seed, idBase)
      assert.ok(s1.running, `server still running after the fuzz (${s1.describe()})`)
      assert.equal((await fetch(`http://127.0.0.1:${s1.port}/healthz`)).status, 200, '/healthz after the fuzz')
    }

    await sleep(500)
    await editors.stop()
    await sleep(500)
    // every stream entry is a valid message; in order, the updates are the clients' document
    const entries = await xrangeRaw(h.redis, h.roomKey(room))
    const streamDoc = new Y.Doc()
    let updates = 0
    let awareness = 0
    /** entries npm yjs rejects: alone (strict decoder) or applied in order */
    const poison = []
    for (const e of entries) {
      const m = e.fields[e.fields.findIndex((f, i) => i % 2 === 0 && f.toString() === 'm') + 1]
      let d
      try { d = decodeStreamMessage(m) } catch (err) {
        poison.push(`${e.id} (${m.length} bytes ${m.toString('hex')}): alone: ${String(err.message).split('\n')[0]} at ${String(err.stack).split('\n')[2]?.trim()}`)
        continue
      }
      if (d.type === 'update') {
        updates++
        try { Y.applyUpdate(streamDoc, d.update) } catch (err) {
          poison.push(`${e.id} (${m.length} bytes ${m.toString('hex')}): after the ${updates - 1} updates before it: ${String(err.message).split('\n')[0]} at ${String(err.stack).split('\n')[2]?.trim()}`)
        }
      } else awareness++
    }
    // normal clients kept working and converge; a fresh client (the server's
    // own assembly of the stream, as storage would get it) gets the same
    let liveErr = null
    let freshErr = null
    let final = null
    try { final = await waitConverged(clients, editors, { timeout: 15000 }) } catch (e) { liveErr = e }
    if (final) {
      const fresh = h.client(s1, room, { name: 'fresh' })
      try {
        await fresh.synced()
        await waitFor(() => sameContent(fresh.snapshot(), final), { timeout: 5000, message: () => `a fresh client to get the live clients' content: want ${fingerprint(final)} got ${fingerprint(fresh.snapshot())}` })
      } catch (e) { freshErr = e }
    }
    const status = `live clients ${liveErr ? 'did NOT converge' : 'converged'}; fresh client ${freshErr ? 'DIFFERS from them' : liveErr ? 'not checked' : 'matches them'}`
    t.diagnostic(`room stream: ${entries.length} entries (${updates} updates, ${awareness} awareness), ${poison.length} that npm yjs rejects; ${status}`)
    const malformed = entries
      .map((e) => e.fields[e.fields.findIndex((f, i) => i % 2 === 0 && f.toString() === 'm') + 1])
      .filter((m) => !wellFormed(m))
      .map((m) => m.toString('hex'))
    assert.deepEqual(malformed, [], 'every room stream entry is a y-websocket update (decoded by npm yjs) or awareness message')
    assert.deepEqual(poison, [], `${poison.length} room stream entries are messages npm yjs cannot apply (${status})`)
    if (liveErr) throw liveErr
    if (freshErr) throw freshErr
    const fromStream = { text: streamDoc.getText('text').toString(), map: streamDoc.getMap('map').toJSON() }
    streamDoc.destroy()
    assert.ok(sameContent(fromStream, final), `the stream's updates in order give the clients' content (stream ${fingerprint(fromStream)}, clients ${fingerprint(final)})`)
    assert.ok(s1.running, 'server still running at the end')
  }))
})
