// Auth (ARCHITECTURE.md, "Auth") with lib0's own token code: tokens via ?yauth= and the
// yauth-<jwt> subprotocol, exact HTTP statuses of refused upgrades, read-only
// users, token expiry (4401), live revocation (4403) and downgrade/upgrade via
// POST /admin/recheck and the PREFIX:recheck channel, and the keygen /
// auth-example subcommands. Servers run with auth on (AUTH_DISABLED unset) and
// a permission callback served by this file (PermServer).
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  Harness, Y, WebsocketProvider, WebSocket, waitFor, randomHex, sleep, xrangeRaw, decodeStreamMessage, REDIS_URL
} from './harness.mjs'
import {
  lib0KeyPair, signToken, tamperPayload, nowMs, jwt, ecdsa, PermServer, tryUpgrade, closeRaw, postJSON, httpUrl,
  updateStructs, syncPayload, watchReceivedStructs, runBin, startListening, freePort
} from './auth-helpers.mjs'

const h = new Harness('auth')
const perm = new PermServer()
const ADMIN_SECRET = `admin-${randomHex(8)}`
/** @type {Awaited<ReturnType<typeof lib0KeyPair>>} */
let keys
/** @type {Awaited<ReturnType<typeof lib0KeyPair>>} */
let otherKeys

const HOUR = 3600 * 1000
const authEnv = () => ({
  AUTH_DISABLED: undefined, // harness default is 'true'; undefined drops it from the child env
  AUTH_PUBLIC_KEY: keys.publicJwk,
  AUTH_PERM_CALLBACK: perm.url,
  AUTH_PERM_CALLBACK_TIMEOUT_MS: '1000',
  ADMIN_SECRET
})
/** a lib0 token for `user`, exp one hour ahead in milliseconds (as lib0's getUnixTime) */
const tok = (user, claims = {}) => signToken(keys.privateKey, { exp: nowMs() + HOUR, yuserid: user, ...claims })
const wsUrl = (server, room, token) => `${server.url}/${room}` + (token == null ? '' : `?yauth=${encodeURIComponent(token)}`)
const authed = async (server, room, user, opts = {}) =>
  h.client(server, room, { name: user, ...opts, params: { yauth: await tok(user) } })

const describeUpgrade = (r) => `HTTP ${r.status}${r.body ? ` body=${JSON.stringify(r.body.slice(0, 200))}` : ''}${r.error ? ` error=${r.error.message}` : ''} after ${r.ms} ms`

/** Try an upgrade and assert its HTTP status; closes the socket if it opened. */
async function expectStatus (url, expected, what, opts = {}) {
  const r = await tryUpgrade(url, opts)
  if (r.ws) await closeRaw(r.ws)
  assert.equal(r.status, expected, `${what}: expected HTTP ${expected}, got ${describeUpgrade(r)}`)
  return r
}

/** Every Yjs struct in the room's Redis stream, plus the awareness client ids. */
async function streamContent (room) {
  const entries = await xrangeRaw(h.redis, h.roomKey(room))
  const structs = []
  const awarenessClients = new Set()
  for (const e of entries) {
    const m = decodeStreamMessage(new Uint8Array(e.fields[1]))
    if (m.type === 'update') structs.push(...updateStructs(m.update))
    else for (const c of m.clients) awarenessClients.add(c.clientID)
  }
  return { entries: entries.length, structs, awarenessClients }
}

const recheck = (server, body, secret = ADMIN_SECRET) =>
  postJSON(`${httpUrl(server)}/admin/recheck`, body, secret == null ? {} : { authorization: `Bearer ${secret}` })

/** Wait until the permission server has answered a request for (room, user) made after `n` earlier ones. */
async function permAnsweredAfter (room, user, n, timeout = 5000) {
  await waitFor(() => perm.requestsFor(room, user).slice(n).some((r) => r.answered), {
    timeout, message: () => `the servers to re-ask the permission callback about ${user} in ${room} (requests: ${JSON.stringify(perm.requestsFor(room, user))})`
  })
}

const closeCodes = (c) => JSON.stringify(c.closeEvents)

describe('auth: lib0 tokens, permission callback, read-only, expiry, revocation', { timeout: 90000 }, () => {
  before(async () => {
    keys = await lib0KeyPair()
    otherKeys = await lib0KeyPair()
    await perm.start()
    h.cleanups.push(() => perm.close())
    await h.setup(2, authEnv())
  })
  after(async () => { await h.teardown() })

  it('rw users sync across servers with ?yauth=; the yauth-<jwt> subprotocol is accepted and echoed', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `auth-rw-${randomHex(4)}`
    for (const u of ['alice', 'bob', 'carol', 'dave']) perm.set(room, u, 'rw')
    const a = await authed(s1, room, 'alice')
    const b = await authed(s2, room, 'bob')
    await Promise.all([a.synced(), b.synced()])
    a.text.insert(0, 'from-alice ')
    b.map.set('bob', 1)
    await waitFor(() => b.text.toString().includes('from-alice') && a.map.get('bob') === 1, {
      timeout: 10000, message: () => `edits to cross servers: alice=${JSON.stringify(a.snapshot())} bob=${JSON.stringify(b.snapshot())}`
    })
    const asked = perm.requestsFor(room, 'alice')
    assert.ok(asked.length >= 1, 'the permission callback was asked about alice')
    assert.equal(asked[0].rawPath, `/auth/perm/${room}/alice`, 'callback URL is AUTH_PERM_CALLBACK/<room>/<yuserid>')

    // raw ws with the token as subprotocol: the server answers with that protocol
    const protocol = 'yauth-' + await tok('carol')
    const r = await tryUpgrade(wsUrl(s2, room), { protocols: [protocol] })
    try {
      assert.equal(r.status, 101, `subprotocol token: ${describeUpgrade(r)}`)
      assert.equal(r.protocol, protocol, 'the accepted subprotocol is echoed')
      // and it is a working y-websocket connection: the initial sync carries alice's text
      await waitFor(() => r.frames.some((f) => {
        const u = syncPayload(f)
        return u && updateStructs(u).some((s) => s.str?.includes('from-alice'))
      }), { timeout: 10000, message: () => `initial sync with alice's text on the subprotocol socket (${r.frames.length} frames)` })
    } finally { await closeRaw(r.ws) }
    assert.ok(perm.requestsFor(room, 'carol').length >= 1, 'carol (subprotocol token) was checked with the callback')

    // a real WebsocketProvider using the subprotocol option
    const doc = new Y.Doc()
    const p = new WebsocketProvider(s1.url, room, doc, {
      WebSocketPolyfill: /** @type {any} */ (WebSocket), disableBc: true, protocols: ['yauth-' + await tok('dave')]
    })
    try {
      await waitFor(() => p.synced && doc.getText('text').toString().includes('from-alice'), {
        timeout: 10000, message: () => `provider with protocols: [yauth-<jwt>] to sync (wsconnected=${p.wsconnected})`
      })
      doc.getText('text').insert(0, 'from-dave ')
      await waitFor(() => a.text.toString().includes('from-dave') && b.text.toString().includes('from-dave'), {
        timeout: 10000, message: () => `dave's (subprotocol) edit to reach alice and bob: ${a.text.toString()} / ${b.text.toString()}`
      })
    } finally { p.destroy(); doc.destroy() }
  }))

  it('refused upgrades get exact HTTP statuses; a burst of refusals does not hurt the server', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `auth-refuse-${randomHex(4)}`
    // every user below has rw on the room: only the token problem can refuse them
    for (const u of ['u1', 'admin', 'other', 'exp-ms', 'exp-s', 'fut-s', 'noid']) perm.set(room, u, 'rw')
    const valid = await tok('u1')

    await expectStatus(wsUrl(s1, room), 401, 'no token')
    await expectStatus(wsUrl(s1, room, ''), 401, 'empty ?yauth=')
    await expectStatus(wsUrl(s1, room, 'not.a.jwt'), 401, 'garbage token')
    await expectStatus(wsUrl(s1, room, await signToken(otherKeys.privateKey, { exp: nowMs() + HOUR, yuserid: 'other' })), 401,
      'token signed by another lib0 key')
    await expectStatus(wsUrl(s1, room, tamperPayload(valid, { yuserid: 'admin' })), 401, 'tampered payload (yuserid changed, signature kept)')
    await expectStatus(wsUrl(s1, room, await signToken(keys.privateKey, { exp: nowMs() + HOUR })), 401, 'token without yuserid')
    await expectStatus(wsUrl(s1, room, await tok('exp-ms', { exp: nowMs() - 60000 })), 401, 'expired token (exp in ms)')
    await expectStatus(wsUrl(s2, room, await tok('exp-s', { exp: Math.floor(nowMs() / 1000) - 60 })), 401, 'expired token (exp in seconds)')
    await expectStatus(wsUrl(s2, room), 401, 'bad subprotocol token', { protocols: ['yauth-' + tamperPayload(valid, { yuserid: 'admin' })] })
    assert.equal(perm.requestsFor(room, 'admin').length, 0, 'a forged token must not reach the permission callback')
    // controls: the same user with a good token (exp in ms, and exp in seconds in the future) gets in
    await expectStatus(wsUrl(s1, room, valid), 101, 'valid token (exp in ms)')
    await expectStatus(wsUrl(s1, room, await tok('fut-s', { exp: Math.floor(nowMs() / 1000) + 3600 })), 101, 'valid token (exp in seconds)')

    perm.set(room, 'p-none', 'none').set(room, 'p-404', '404').set(room, 'p-500', '500').set(room, 'p-hang', 'hang')
    await expectStatus(wsUrl(s1, room, await tok('p-none')), 403, 'callback says yaccess "none"')
    await expectStatus(wsUrl(s2, room, await tok('p-404')), 403, 'callback answers HTTP 404')
    await expectStatus(wsUrl(s1, room, await tok('p-500')), 502, 'callback answers HTTP 500')
    const hang = await expectStatus(wsUrl(s2, room, await tok('p-hang')), 503, 'callback never answers (timeout 1000 ms)', { timeout: 5000 })
    assert.ok(hang.ms >= 900 && hang.ms < 1800, `503 should arrive after the 1000 ms callback timeout, got it after ${hang.ms} ms`)
    assert.equal(perm.requestsFor(room, 'p-hang').length, 1, 'the hanging callback was asked once')

    // a server whose callback is a closed port
    const deadPort = await freePort()
    const s3 = await h.startServer('s3-deadcb', { ...authEnv(), AUTH_PERM_CALLBACK: `http://127.0.0.1:${deadPort}/auth/perm` })
    await expectStatus(wsUrl(s3, room, valid), 502, 'permission callback down (connection refused)')
    await s3.stop()

    // burst: 300 refused upgrades (bad tokens and denied users), 100 at a time
    const reasons = [
      { url: wsUrl(s1, room), status: 401 },
      { url: wsUrl(s1, room, tamperPayload(valid, { yuserid: 'admin' })), status: 401 },
      { url: wsUrl(s1, room, await tok('p-none')), status: 403 }
    ]
    const statuses = {}
    for (let batch = 0; batch < 3; batch++) {
      const results = await Promise.all(Array.from({ length: 100 }, (_, i) => {
        const r = reasons[(batch * 100 + i) % reasons.length]
        return tryUpgrade(r.url, { timeout: 15000 }).then((res) => ({ expected: r.status, res }))
      }))
      for (const { expected, res } of results) {
        if (res.ws) await closeRaw(res.ws)
        statuses[`${expected}->${res.status}`] = (statuses[`${expected}->${res.status}`] || 0) + 1
      }
    }
    assert.deepEqual(statuses, { '401->401': 200, '403->403': 100 }, 'every refused upgrade gets its status')
    assert.ok(s1.running, `server 1 still running after the burst: ${s1.describe()}`)
    const c = await authed(s1, room, 'u1')
    await c.synced(10000)
    c.text.insert(0, 'after burst')
    const d = await authed(s2, room, 'fut-s')
    await d.synced(10000)
    await waitFor(() => d.text.toString() === 'after burst', { timeout: 10000, message: () => `edit after the burst to reach server 2: ${JSON.stringify(d.text.toString())}` })
  }))

  it('read-only users receive everything, their edits are dropped, their awareness flows', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `auth-ro-${randomHex(4)}`
    perm.set(room, 'writer', 'rw').set(room, 'reader', 'r').set(room, 'late', 'rw')
    const w = await authed(s1, room, 'writer')
    await w.synced()
    w.text.insert(0, 'before-join ')
    await waitFor(async () => (await streamContent(room)).structs.some((s) => s.str?.includes('before-join')), {
      timeout: 10000, message: 'writer edit to reach the Redis stream'
    })
    const r = await authed(s2, room, 'reader')
    await r.synced()
    await waitFor(() => r.text.toString().includes('before-join'), {
      timeout: 10000, message: () => `read-only user to get the document on join: ${JSON.stringify(r.text.toString())}`
    })

    const seenByWriter = watchReceivedStructs(w)
    r.text.insert(0, 'READONLY-EDIT ')
    r.map.set('ro', true)
    r.awareness.setLocalState({ user: { name: 'reader' } })
    await waitFor(() => w.awareness.getStates().get(r.clientID)?.user?.name === 'reader', {
      timeout: 10000, message: () => `writer to see the read-only user's awareness; writer states: ${JSON.stringify([...w.awareness.getStates()])}`
    })
    w.text.insert(w.text.length, 'live-edit')
    await waitFor(() => r.text.toString().includes('live-edit'), {
      timeout: 10000, message: () => `read-only user to receive the writer's live edit: ${JSON.stringify(r.text.toString())}`
    })
    await sleep(1000) // the read-only edit was sent before both of the above; give it time to show up if it were forwarded

    assert.ok(!w.text.toString().includes('READONLY'), `read-only edit reached the writer: ${JSON.stringify(w.text.toString())}`)
    assert.equal(w.map.has('ro'), false, 'read-only map edit reached the writer')
    const leaked = seenByWriter.filter((s) => s.client === r.clientID)
    assert.deepEqual(leaked, [], 'the writer\'s socket received no struct created by the read-only user')
    const stream = await streamContent(room)
    assert.deepEqual(stream.structs.filter((s) => s.client === r.clientID), [], 'no struct of the read-only user in the Redis stream')
    assert.ok(stream.structs.some((s) => s.str?.includes('live-edit')), 'control: the writer\'s live edit is in the stream')
    assert.ok(stream.awarenessClients.has(r.clientID), 'the read-only user\'s awareness is in the stream')

    const late = await authed(s1, room, 'late')
    await late.synced()
    assert.ok(late.text.toString().includes('live-edit') && !late.text.toString().includes('READONLY'),
      `late joiner: ${JSON.stringify(late.text.toString())}`)
  }))

  it('a session whose token expires is closed with 4401 and does not reconnect', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `auth-exp-${randomHex(4)}`
    for (const u of ['eve-ms', 'eve-s', 'stay']) perm.set(room, u, 'rw')
    const expMs = nowMs() + 2000
    const expS = Math.floor(nowMs() / 1000) + 3 // seconds: expires 2-3 s from now
    const e1 = h.client(s1, room, { name: 'eve-ms', params: { yauth: await tok('eve-ms', { exp: expMs }) } })
    const e2 = h.client(s2, room, { name: 'eve-s', params: { yauth: await tok('eve-s', { exp: expS }) } })
    const stay = await authed(s1, room, 'stay')
    await Promise.all([e1.synced(), e2.synced(), stay.synced()])
    assert.ok(nowMs() < expMs, 'test setup too slow: the token expired before the client synced')
    const closedAt = {}
    for (const [c, exp] of [[e1, expMs], [e2, expS * 1000]]) {
      await waitFor(() => c.closeEvents.some((e) => e?.code === 4401), {
        timeout: Math.max(0, exp - nowMs()) + 2000, message: () => `${c.name} to be closed with 4401 after its token expired; closeEvents=${closeCodes(c)}`
      })
      closedAt[c.name] = nowMs()
      assert.ok(closedAt[c.name] >= exp - 250, `${c.name} closed ${exp - closedAt[c.name]} ms before its token expired`)
    }
    await sleep(1000)
    for (const c of [e1, e2]) {
      assert.equal(c.provider.wsconnected, false, `${c.name} reconnected after 4401`)
      assert.equal(c.closeEvents.length, 1, `${c.name} close events: ${closeCodes(c)}`)
    }
    assert.ok(stay.provider.wsconnected && stay.closeEvents.length === 0, `a client with a valid token stays: ${closeCodes(stay)}`)
  }))

  it('revocation: /admin/recheck on any server and PUBLISH PREFIX:recheck close lost sessions with 4403', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `auth-revoke-${randomHex(4)}`
    perm.set(room, 'U', 'rw').set(room, 'W', 'rw')
    const u = await authed(s2, room, 'U')
    const w = await authed(s2, room, 'W')
    await Promise.all([u.synced(), w.synced()])

    perm.set(room, 'U', 'none')
    const n0 = perm.requestsFor(room, 'U').length
    const wrong = await recheck(s1, { room, user: 'U' }, 'not-the-secret')
    assert.equal(wrong.status, 401, `wrong admin secret: ${JSON.stringify(wrong)}`)
    const missing = await recheck(s1, { room, user: 'U' }, null)
    assert.equal(missing.status, 401, `missing admin secret: ${JSON.stringify(missing)}`)
    await sleep(800)
    assert.equal(perm.requestsFor(room, 'U').length, n0, 'a refused /admin/recheck must not trigger a recheck')
    assert.ok(u.provider.wsconnected && u.closeEvents.length === 0, `U still connected: ${closeCodes(u)}`)

    const wBefore = perm.requestsFor(room, 'W').length
    const ok = await recheck(s1, { room, user: 'U' })
    assert.equal(ok.status, 202, `recheck with the admin secret: ${JSON.stringify(ok)}`)
    await waitFor(() => u.closeEvents.some((e) => e?.code === 4403), {
      timeout: 5000, message: () => `U (server 2) to be closed with 4403 after a recheck posted to server 1; closeEvents=${closeCodes(u)}`
    })
    const nClosed = perm.requestsFor(room, 'U').length
    await sleep(3000)
    assert.equal(u.provider.wsconnected, false, 'U reconnected after 4403')
    assert.equal(u.provider.shouldConnect, false, 'y-websocket gave up on 4403')
    assert.equal(u.closeEvents.length, 1, `U close events: ${closeCodes(u)}`)
    assert.equal(perm.requestsFor(room, 'U').length, nClosed, 'no new connection attempt by U reached the callback')
    assert.ok(w.provider.wsconnected && w.closeEvents.length === 0, `W (not targeted) stays: ${closeCodes(w)}`)
    assert.equal(perm.requestsFor(room, 'W').length, wBefore, 'a recheck for user U must not re-ask about W')

    // the application publishes on PREFIX:recheck itself: first for one user, then for the whole room
    const room2 = `auth-revoke-pub-${randomHex(4)}`
    perm.set(room2, 'P1', 'rw').set(room2, 'P2', 'rw').set(room2, 'Q', 'rw')
    const p1 = await authed(s1, room2, 'P1')
    const p2 = await authed(s2, room2, 'P2')
    const q = await authed(s1, room2, 'Q')
    await Promise.all([p1.synced(), p2.synced(), q.synced()])
    perm.set(room2, 'P1', 'none').set(room2, 'P2', 'none')
    const receivers1 = await h.redis.publish(`${h.prefix}:recheck`, JSON.stringify({ room: room2, user: 'P1' }))
    assert.ok(receivers1 >= 2, `both servers subscribe to ${h.prefix}:recheck (PUBLISH reached ${receivers1})`)
    await waitFor(() => p1.closeEvents.some((e) => e?.code === 4403), {
      timeout: 5000, message: () => `P1 to be closed with 4403 after PUBLISH; closeEvents=${closeCodes(p1)}`
    })
    await sleep(500)
    assert.ok(p2.provider.wsconnected && p2.closeEvents.length === 0, `P2 was not targeted yet: ${closeCodes(p2)}`)
    const qBefore = perm.requestsFor(room2, 'Q').length
    await h.redis.publish(`${h.prefix}:recheck`, JSON.stringify({ room: room2 }))
    await waitFor(() => p2.closeEvents.some((e) => e?.code === 4403), {
      timeout: 5000, message: () => `P2 (server 2) to be closed with 4403 after a room-wide PUBLISH; closeEvents=${closeCodes(p2)}`
    })
    await permAnsweredAfter(room2, 'Q', qBefore)
    await sleep(500)
    assert.ok(q.provider.wsconnected && q.closeEvents.length === 0, `Q (still rw) stays after the room-wide recheck: ${closeCodes(q)}`)
    assert.equal(p1.provider.wsconnected, false, 'P1 did not reconnect')
  }))

  it('downgrade rw -> r in place stops edits without reconnecting; r -> rw lets them through again', h.wrap(async () => {
    const [s1, s2] = h.servers
    const room = `auth-downgrade-${randomHex(4)}`
    perm.set(room, 'V', 'rw').set(room, 'X', 'rw')
    const v = await authed(s2, room, 'V')
    const x = await authed(s1, room, 'X')
    await Promise.all([v.synced(), x.synced()])
    v.text.insert(0, 'v-rw-1 ')
    await waitFor(() => x.text.toString().includes('v-rw-1'), { timeout: 10000, message: 'control: V\'s edit reaches X' })
    const vSocket = v.provider.ws
    const seenByX = watchReceivedStructs(x)

    perm.set(room, 'V', 'r')
    let n = perm.requestsFor(room, 'V').length
    assert.equal((await recheck(s1, { room, user: 'V' })).status, 202)
    await permAnsweredAfter(room, 'V', n)
    await sleep(300)
    v.text.insert(v.text.length, 'v-while-readonly')
    x.text.insert(0, 'x-after-downgrade ')
    await waitFor(() => v.text.toString().includes('x-after-downgrade'), {
      timeout: 10000, message: () => `downgraded V still receives X's edits: ${JSON.stringify(v.text.toString())}`
    })
    await sleep(1500)
    assert.ok(!x.text.toString().includes('v-while-readonly'), `downgraded V's edit reached X: ${JSON.stringify(x.text.toString())}`)
    assert.deepEqual(seenByX.filter((s) => s.str?.includes('v-while-readonly')), [], 'X received no frame with the downgraded edit')
    let stream = await streamContent(room)
    assert.deepEqual(stream.structs.filter((s) => s.str?.includes('v-while-readonly')), [], 'the downgraded edit is not in the Redis stream')
    assert.ok(v.provider.ws === vSocket && v.provider.wsconnected && v.closeEvents.length === 0,
      `V's socket stays open on downgrade (closeEvents=${closeCodes(v)})`)

    perm.set(room, 'V', 'rw')
    n = perm.requestsFor(room, 'V').length
    assert.equal((await recheck(s2, { room, user: 'V' })).status, 202)
    await permAnsweredAfter(room, 'V', n)
    await sleep(300)
    v.text.insert(v.text.length, 'v-rw-again')
    // The new edit builds on the one V made while read-only, which the room
    // never got: the server holds it and asks V (a SyncStep1 on the same
    // socket) for what the room lacks; V's answer brings both edits. What V
    // typed while read-only is V's content, published once V may write.
    await waitFor(() => x.text.toString().includes('v-rw-again') && x.text.toString().includes('v-while-readonly'), {
      timeout: 10000, message: () => `upgraded V's edits to reach X: ${JSON.stringify(x.text.toString())}`
    })
    stream = await streamContent(room)
    assert.ok(stream.structs.some((s) => s.client === v.clientID && s.str?.includes('v-rw-again')), 'the upgraded edit is in the stream')
    assert.ok(v.provider.ws === vSocket && v.closeEvents.length === 0, `V kept its socket through downgrade and upgrade: ${closeCodes(v)}`)
  }))

  it('server refuses to start without auth settings; keygen keys work with lib0; auth-example issues lib0-valid tokens', h.wrap(async () => {
    const cwd = h.workDir
    const base = { REDIS: REDIS_URL, REDIS_PREFIX: h.prefix, STORAGE_DIR: `${cwd}/data-cli` }
    for (const [env, variable] of [
      [{}, 'AUTH_PUBLIC_KEY'],
      [{ AUTH_DISABLED: 'false' }, 'AUTH_PUBLIC_KEY'],
      [{ AUTH_PUBLIC_KEY: keys.publicJwk }, 'AUTH_PERM_CALLBACK']
    ]) {
      const r = runBin(['server'], { env: { ...base, PORT: String(await freePort()), ...env }, cwd, timeout: 8000 })
      const what = `y-redis server with ${JSON.stringify(Object.keys(env))}`
      assert.equal(r.status, 2, `${what}: exit code (signal ${r.signal}) stderr=${JSON.stringify(r.stderr)}`)
      const lines = r.stderr.trim().split('\n')
      assert.equal(lines.length, 1, `${what}: one line on stderr, got ${JSON.stringify(r.stderr)}`)
      assert.match(lines[0], new RegExp(variable), `${what}: stderr names ${variable}`)
    }

    const kg = runBin(['keygen'], { cwd })
    assert.equal(kg.status, 0, `keygen failed: ${kg.stderr}`)
    const line = (name) => {
      // a .env line: the JSON single-quoted (keygen-env.test.mjs reads it as dotenvy, bash and compose do)
      const m = kg.stdout.match(new RegExp(`^${name}='(.+)'$`, 'm'))
      assert.ok(m, `keygen prints ${name}='...': ${JSON.stringify(kg.stdout)}`)
      return m[1]
    }
    const pubText = line('AUTH_PUBLIC_KEY')
    const privText = line('AUTH_PRIVATE_KEY')
    const pubJwk = JSON.parse(pubText)
    const privJwk = JSON.parse(privText)
    assert.equal(pubJwk.kty, 'EC'); assert.equal(pubJwk.crv, 'P-384')
    assert.equal(pubJwk.d, undefined, 'the public JWK must not carry the private scalar')
    assert.equal(typeof privJwk.d, 'string', 'the private JWK has d')
    const pub = await ecdsa.importKeyJwk(pubJwk)
    const priv = await ecdsa.importKeyJwk(privJwk)
    const kgToken = await jwt.encodeJwt(priv, { iss: 'keygen-test', exp: nowMs() + HOUR, yuserid: 'kg' })
    assert.equal((await jwt.verifyJwt(pub, kgToken)).payload.yuserid, 'kg', 'lib0 verifies its own token with the keygen pair')

    // the example auth backend, signing with the keygen private key
    const exPort = await freePort()
    const ex = await startListening({
      subcommand: 'auth-example', env: { AUTH_PRIVATE_KEY: privText, AUTH_EXAMPLE_PORT: String(exPort) }, port: exPort, name: 'auth-example', tag: `auth-${h.prefix}`, cwd
    })
    h.workers.push(ex) // stopped, log-tailed and cleaned up with the harness's processes
    const exUrl = `http://127.0.0.1:${exPort}`
    const tokenRes = await fetch(`${exUrl}/auth/token`, { signal: AbortSignal.timeout(5000) })
    assert.equal(tokenRes.status, 200)
    const exToken = (await tokenRes.text()).trim()
    const { payload } = await jwt.verifyJwt(pub, exToken)
    assert.equal(typeof payload.yuserid, 'string', `auth-example token has yuserid: ${JSON.stringify(payload)}`)
    assert.ok(payload.exp > nowMs(), `auth-example exp is lib0-style milliseconds in the future: ${payload.exp}`)
    const zed = await (await fetch(`${exUrl}/auth/token?user=zed`, { signal: AbortSignal.timeout(5000) })).text()
    assert.equal((await jwt.verifyJwt(pub, zed.trim())).payload.yuserid, 'zed')
    await assert.rejects(jwt.verifyJwt(keys.publicKey, exToken), 'the token is signed with the keygen key, not another one')
    const permRes = await fetch(`${exUrl}/auth/perm/r/u`, { signal: AbortSignal.timeout(5000) })
    assert.equal(permRes.status, 200)
    assert.equal((await permRes.json()).yaccess, 'rw')

    // a server with the keygen public key and the example's callback accepts both tokens
    const s = await h.startServer('s-keygen', { ...authEnv(), AUTH_PUBLIC_KEY: pubText, AUTH_PERM_CALLBACK: `${exUrl}/auth/perm` })
    const room = `auth-keygen-${randomHex(4)}`
    const c1 = h.client(s, room, { name: 'kg', params: { yauth: kgToken } })
    const c2 = h.client(s, room, { name: 'example', params: { yauth: exToken } })
    await Promise.all([c1.synced(), c2.synced()])
    c1.text.insert(0, 'keygen works')
    await waitFor(() => c2.text.toString() === 'keygen works', { timeout: 10000, message: 'edit between keygen/example clients' })
    await expectStatus(wsUrl(s, room, await tok('kg')), 401, 'a token of the test\'s lib0 key on the keygen-key server')
    await s.stop()
  }))
})
