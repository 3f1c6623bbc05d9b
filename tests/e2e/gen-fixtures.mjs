#!/usr/bin/env node
// Generates tests/fixtures/protocol_vectors.json with byte vectors produced by
// the real npm packages (yjs, y-protocols, lib0). The Rust side decodes and
// re-encodes these to prove wire compatibility with y-websocket clients.
//
//   cd tests/e2e && npm ci && node gen-fixtures.mjs
//
// Output is deterministic: client ids are fixed, no timestamps are written.

import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as authProtocol from 'y-protocols/auth'

const here = path.dirname(fileURLToPath(import.meta.url))
const outFile = path.resolve(here, '../fixtures/protocol_vectors.json')
const require = createRequire(import.meta.url)

const hex = (u8) => Buffer.from(u8).toString('hex')
const svToObject = (sv) => {
  const m = Y.decodeStateVector(sv)
  return Object.fromEntries([...m.entries()].sort((a, b) => a[0] - b[0]).map(([k, v]) => [String(k), v]))
}
const pkgVersion = (name) => require(`${name}/package.json`).version

/** @param {number} clientID */
const newDoc = (clientID) => {
  const doc = new Y.Doc()
  doc.clientID = clientID
  return doc
}

const vectors = []
/**
 * @param {string} name
 * @param {string} description
 * @param {Uint8Array} bytes
 * @param {object} [extra]
 */
const add = (name, description, bytes, extra = {}) => {
  vectors.push({ name, description, hex: hex(bytes), ...extra })
}

// ---------------------------------------------------------------------------
// The reference document: Y.Text "text" = "hello", Y.Map "map" with entries.
const DOC_CLIENT = 1001
const doc = newDoc(DOC_CLIENT)
doc.getText('text').insert(0, 'hello')
const map = doc.getMap('map')
doc.transact(() => {
  map.set('name', 'y-redis')
  map.set('count', 42)
  map.set('flag', true)
  map.set('nested', { a: [1, 2, 3], b: null })
})
const docExpected = { texts: { text: 'hello' }, maps: { map: map.toJSON() } }
const updateV1 = Y.encodeStateAsUpdate(doc)
const updateV2 = Y.encodeStateAsUpdateV2(doc)
const stateVector = Y.encodeStateVector(doc)

// sanity: round trips through the real library
{
  const d1 = new Y.Doc(); Y.applyUpdate(d1, updateV1)
  const d2 = new Y.Doc(); Y.applyUpdateV2(d2, updateV2)
  for (const d of [d1, d2]) {
    if (d.getText('text').toString() !== 'hello') throw new Error('round trip text')
    if (JSON.stringify(d.getMap('map').toJSON()) !== JSON.stringify(map.toJSON())) throw new Error('round trip map')
  }
  if (hex(Y.convertUpdateFormatV2ToV1(updateV2)) !== hex(updateV1)) {
    // not guaranteed byte-identical in general; record but do not fail
    console.warn('note: convertUpdateFormatV2ToV1(updateV2) differs from updateV1 byte-wise')
  }
}

add('doc_update_v1',
  'Y.encodeStateAsUpdate (update v1) of a doc (clientID 1001) with Y.Text "text" = "hello" and Y.Map "map" = {name:"y-redis",count:42,flag:true,nested:{a:[1,2,3],b:null}}',
  updateV1, { client_id: DOC_CLIENT, expected: docExpected })
add('doc_update_v2',
  'Y.encodeStateAsUpdateV2 (update v2, the storage format) of the same doc as doc_update_v1',
  updateV2, { client_id: DOC_CLIENT, expected: docExpected })
add('doc_state_vector',
  'Y.encodeStateVector (v1) of the same doc as doc_update_v1; decoded is clientID -> clock',
  stateVector, { client_id: DOC_CLIENT, decoded: svToObject(stateVector) })

// ---------------------------------------------------------------------------
// Sync protocol messages (message type 0), as y-websocket frames.
{
  const tdoc = newDoc(2002)
  tdoc.getText('text').insert(0, 'abc')
  tdoc.getText('text').insert(3, 'def')
  const sv = Y.encodeStateVector(tdoc)
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0) // messageSync
  syncProtocol.writeSyncStep1(enc, tdoc)
  add('sync_step1',
    'y-websocket frame: messageSync(0), SyncStep1(0), varUint8Array(state vector) of a doc (clientID 2002) whose Y.Text "text" = "abcdef"',
    encoding.toUint8Array(enc),
    { client_id: 2002, state_vector_hex: hex(sv), state_vector: svToObject(sv), expected: { texts: { text: 'abcdef' } } })
}
{
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  syncProtocol.writeSyncStep1(enc, new Y.Doc())
  add('sync_step1_empty',
    'y-websocket frame: SyncStep1 of an empty doc (state vector is the single byte 0)',
    encoding.toUint8Array(enc), { state_vector_hex: '00', state_vector: {} })
}
{
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  syncProtocol.writeSyncStep2(enc, doc)
  add('sync_step2',
    'y-websocket frame: messageSync(0), SyncStep2(1), varUint8Array(update v1) = the whole reference doc (same bytes as doc_update_v1)',
    encoding.toUint8Array(enc), { update_hex: hex(updateV1), client_id: DOC_CLIENT, expected: docExpected })
}
{
  // SyncStep2 answering a peer that already has part of the doc
  const a = newDoc(3003)
  a.getText('text').insert(0, 'first')
  const peerSv = Y.encodeStateVector(a)
  a.getText('text').insert(5, ' second')
  const diff = Y.encodeStateAsUpdate(a, peerSv)
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  syncProtocol.writeSyncStep2(enc, a, peerSv)
  add('sync_step2_diff',
    'y-websocket frame: SyncStep2 computed against a remote state vector {3003: 5}; applying it to a doc holding "first" (from client 3003) yields "first second"',
    encoding.toUint8Array(enc),
    { client_id: 3003, remote_state_vector_hex: hex(peerSv), update_hex: hex(diff), expected: { texts: { text: 'first second' } } })
}
{
  // An incremental update, as emitted by doc.on('update') when typing
  const d = newDoc(4004)
  d.getText('text').insert(0, 'hi')
  const base = Y.encodeStateAsUpdate(d)
  /** @type {Uint8Array|null} */
  let incr = null
  d.on('update', (u) => { incr = u })
  d.getText('text').insert(2, '!')
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  syncProtocol.writeUpdate(enc, /** @type {Uint8Array} */ (incr))
  add('sync_update',
    'y-websocket frame: messageSync(0), Update(2), varUint8Array(update v1): the incremental update inserting "!" at index 2 after "hi" (client 4004). Apply base_update_hex first; expected is the result after both. These are also exactly the bytes of a Redis stream entry field m.',
    encoding.toUint8Array(enc),
    { client_id: 4004, update_hex: hex(/** @type {Uint8Array} */ (incr)), base_update_hex: hex(base), expected: { texts: { text: 'hi!' } } })
}
{
  // A client's SyncStep2 as the server must store it in Redis: byte 1 rewritten to 2
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  syncProtocol.writeSyncStep2(enc, doc)
  const step2 = encoding.toUint8Array(enc)
  const asUpdate = Uint8Array.from(step2)
  asUpdate[1] = 2
  add('sync_step2_rewritten_as_update',
    'sync_step2 with byte 1 rewritten from 1 (SyncStep2) to 2 (Update): what a client SyncStep2 looks like in the Redis room stream',
    asUpdate, { update_hex: hex(updateV1), from_hex: hex(step2) })
}
{
  // The smallest SyncStep2 a client sends when it has nothing new: update of an empty doc.
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0)
  syncProtocol.writeSyncStep2(enc, new Y.Doc(), Y.encodeStateVector(new Y.Doc()))
  add('sync_step2_empty',
    'SyncStep2 carrying an empty update (update v1 of an empty doc is [0,0]); the server drops such a step 2 (< 4 bytes content)',
    encoding.toUint8Array(enc), { update_hex: hex(Y.encodeStateAsUpdate(new Y.Doc())) })
}

// ---------------------------------------------------------------------------
// Awareness (message type 1) and query awareness (message type 3).
/** @param {Uint8Array} update */
const awarenessFrame = (update) => {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 1)
  encoding.writeVarUint8Array(enc, update)
  return encoding.toUint8Array(enc)
}
{
  const d = newDoc(5005)
  const aw = new awarenessProtocol.Awareness(d) // local state {} at clock 0
  aw.setLocalState({ user: { name: 'alice', color: '#ff0000' } }) // clock 1
  const upd = awarenessProtocol.encodeAwarenessUpdate(aw, [d.clientID])
  add('awareness_one_client',
    'y-websocket frame: messageAwareness(1), varUint8Array(awareness update) for one client: count 1, clientID 5005, clock 1, JSON state',
    awarenessFrame(upd), {
      awareness_update_hex: hex(upd),
      clients: [{ client_id: 5005, clock: 1, state_json: JSON.stringify(aw.getLocalState()) }]
    })

  // same client leaves: state null, clock + 1
  aw.setLocalState(null) // clock 2
  const left = awarenessProtocol.encodeAwarenessUpdate(aw, [d.clientID])
  add('awareness_user_left',
    'awareness frame announcing that client 5005 left: state null (JSON "null"), clock 2 (previous clock 1 + 1)',
    awarenessFrame(left), {
      awareness_update_hex: hex(left),
      clients: [{ client_id: 5005, clock: 2, state_json: 'null' }]
    })
  aw.destroy()
}
{
  // Two clients: one local, one learned from a remote update; one with a clientID above 2^31.
  const bigId = 0xdeadbeef // 3735928559
  const d1 = newDoc(6006)
  const a1 = new awarenessProtocol.Awareness(d1)
  a1.setLocalState({ user: { name: 'bob' }, cursor: { anchor: 3, head: 7 } })
  const d2 = newDoc(bigId)
  const a2 = new awarenessProtocol.Awareness(d2)
  a2.setLocalState({ user: { name: 'carol ü ✓' } })
  a2.setLocalState({ user: { name: 'carol ü ✓' }, typing: true }) // clock 2
  awarenessProtocol.applyAwarenessUpdate(a1, awarenessProtocol.encodeAwarenessUpdate(a2, [bigId]), 'remote')
  const upd = awarenessProtocol.encodeAwarenessUpdate(a1, [6006, bigId])
  add('awareness_two_clients',
    'awareness frame with two clients: 6006 (clock 1) and 3735928559 = 0xdeadbeef (clock 2, state has non-ASCII UTF-8)',
    awarenessFrame(upd), {
      awareness_update_hex: hex(upd),
      clients: [
        { client_id: 6006, clock: 1, state_json: JSON.stringify(a1.getStates().get(6006)) },
        { client_id: bigId, clock: 2, state_json: JSON.stringify(a1.getStates().get(bigId)) }
      ]
    })
  a1.destroy(); a2.destroy()
}
{
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 3) // messageQueryAwareness
  add('query_awareness', 'y-websocket frame: messageQueryAwareness(3), no payload', encoding.toUint8Array(enc))
}
{
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 2) // messageAuth
  authProtocol.writePermissionDenied(enc, 'no access')
  add('auth_permission_denied',
    'y-websocket frame: messageAuth(2), permission denied (0), varString reason "no access"',
    encoding.toUint8Array(enc), { reason: 'no access' })
}

// ---------------------------------------------------------------------------
// mergeUpdates of two updates from different clients.
{
  const a = newDoc(7007)
  a.getText('text').insert(0, 'hello')
  const u1 = Y.encodeStateAsUpdate(a)
  const b = newDoc(8008)
  Y.applyUpdate(b, u1)
  /** @type {Uint8Array[]} */
  const incr = []
  b.on('update', (u) => incr.push(u))
  b.getText('text').insert(5, ' world')
  b.getMap('map').set('k', 'v')
  const u2 = Y.mergeUpdates(incr) // b's own changes as one update
  const merged = Y.mergeUpdates([u1, u2])
  const check = new Y.Doc()
  Y.applyUpdate(check, merged)
  if (check.getText('text').toString() !== 'hello world') throw new Error('merge check')
  const mergedV2 = Y.mergeUpdatesV2([Y.convertUpdateFormatV1ToV2(u1), Y.convertUpdateFormatV1ToV2(u2)])
  add('merge_updates',
    'Y.mergeUpdates([u1, u2]) (v1): u1 = client 7007 inserts "hello"; u2 = client 8008 appends " world" and sets map.k = "v". Applying the merge gives text "hello world", map {k:"v"}',
    merged, {
      inputs_hex: [hex(u1), hex(u2)],
      merged_v2_hex: hex(mergedV2),
      state_vector_hex: hex(Y.encodeStateVectorFromUpdate(merged)),
      state_vector: svToObject(Y.encodeStateVectorFromUpdate(merged)),
      expected: { texts: { text: 'hello world' }, maps: { map: { k: 'v' } } }
    })
}
{
  // A delete-only update (delete set, no structs)
  const d = newDoc(9009)
  d.getText('text').insert(0, 'abcdef')
  const base = Y.encodeStateAsUpdate(d)
  /** @type {Uint8Array|null} */
  let del = null
  d.on('update', (u) => { del = u })
  d.getText('text').delete(1, 3)
  add('delete_update_v1',
    'incremental update v1 that only deletes 3 chars at index 1 from "abcdef" (client 9009); apply base_update_hex first; result "aef"',
    /** @type {Uint8Array} */ (del), { client_id: 9009, base_update_hex: hex(base), expected: { texts: { text: 'aef' } } })
}

const out = {
  generated_by: 'tests/e2e/gen-fixtures.mjs',
  note: 'All byte strings are lowercase hex. Frames are complete y-websocket binary messages (lib0 varUint message type, then payload). "expected" has texts (root Y.Text name -> toString()) and maps (root Y.Map name -> toJSON()).',
  packages: { yjs: pkgVersion('yjs'), 'y-protocols': pkgVersion('y-protocols'), lib0: pkgVersion('lib0') },
  vectors
}
fs.mkdirSync(path.dirname(outFile), { recursive: true })
fs.writeFileSync(outFile, JSON.stringify(out, null, 2) + '\n')
console.log(`wrote ${vectors.length} vectors to ${path.relative(process.cwd(), outFile)}`)
