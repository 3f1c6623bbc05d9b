// a. Convergence across two server processes sharing one Redis + prefix.
// b. Late joiners on each server receive the whole document.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, sleep, randomHex, canonicalJSON, fingerprint } from './harness.mjs'

const h = new Harness('convergence')
const room = `conv-${randomHex(4)}`
const N_CLIENTS = 6
const ROUNDS = 40

/** @type {import('./harness.mjs').Client[]} */
let clients = []

const describeState = (cs) => cs.map((c) => {
  const s = c.snapshot()
  return `  ${c.name}@${c.server.name}: ${fingerprint(s)} synced=${c.provider.synced}`
}).join('\n')

describe('convergence across two servers', { timeout: 120000 }, () => {
  before(async () => { await h.setup(2) })
  after(async () => { await h.teardown() })

  it('4+ clients on two servers converge after concurrent text and map edits', { timeout: 60000 }, h.wrap(async () => {
    const [s1, s2] = h.servers
    clients = []
    for (let i = 0; i < N_CLIENTS; i++) clients.push(h.client(i % 2 === 0 ? s1 : s2, room, { name: `c${i}` }))
    await Promise.all(clients.map((c) => c.synced()))

    /** every marker that must survive */
    const markers = []
    const expectedMapKeys = []
    // deterministic per-client randomness
    const rnd = (i) => { let x = 0x9e3779b9 ^ (i + 1); return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 0x100000000 } }

    const work = clients.map(async (c, i) => {
      const r = rnd(i)
      for (let k = 0; k < ROUNDS; k++) {
        const marker = `[c${i}:${k}]`
        markers.push(marker)
        const t = c.text
        const pos = Math.floor(r() * (t.length + 1))
        // insert between markers only (never inside another marker), so every marker stays intact
        const s = t.toString()
        let p = pos
        while (p > 0 && p < s.length && s[p - 1] !== ']') p--
        t.insert(p, marker)
        c.map.set(`c${i}-${k}`, { by: i, k })
        expectedMapKeys.push(`c${i}-${k}`)
        c.map.set('shared', `c${i}-${k}`) // concurrent writes to one key
        if (k % 5 === 0) {
          c.map.set(`tmp-c${i}`, k)
        } else if (k % 5 === 2) {
          c.map.delete(`tmp-c${i}`)
        }
        // mostly tiny delays; sometimes bursts with no await at all
        if (r() < 0.7) await sleep(Math.floor(r() * 8))
      }
      c.map.delete(`tmp-c${i}`)
    })
    // a fully concurrent burst: every client edits in the same tick
    for (let i = 0; i < clients.length; i++) {
      const m = `[burst${i}]`
      markers.push(m)
      clients[i].text.insert(0, m)
    }
    await Promise.all(work)

    await waitFor(() => {
      const snaps = clients.map((c) => c.snapshot())
      const t0 = snaps[0].text
      const m0 = canonicalJSON(snaps[0].map)
      return snaps.every((s) => s.text === t0 && canonicalJSON(s.map) === m0) &&
        markers.every((m) => t0.includes(m))
    }, {
      timeout: 30000,
      message: () => {
        const s0 = clients[0].snapshot().text
        const missing = markers.filter((m) => !s0.includes(m))
        return `all ${N_CLIENTS} clients to converge and contain all ${markers.length} markers\n` +
          describeState(clients) + `\n  markers missing in c0: ${missing.length} (e.g. ${missing.slice(0, 5).join(' ')})`
      }
    })

    const snap = clients[0].snapshot()
    for (const m of markers) {
      assert.equal(snap.text.split(m).length - 1, 1, `marker ${m} must appear exactly once`)
    }
    for (const k of expectedMapKeys) assert.ok(k in snap.map, `map key ${k} missing`)
    for (let i = 0; i < N_CLIENTS; i++) assert.ok(!(`tmp-c${i}` in snap.map), `deleted map key tmp-c${i} is present`)
    assert.match(String(snap.map.shared), /^c\d+-\d+$/)
    assert.equal(snap.text.length, markers.reduce((a, m) => a + m.length, 0), 'text has unexpected extra content')
  }))

  it('late joiners on each server receive the whole document', { timeout: 60000 }, h.wrap(async () => {
    assert.ok(clients.length > 0, 'the convergence test must have run first')
    const expected = clients[0].snapshot()
    assert.ok(expected.text.length > 0)
    const late = h.servers.map((s) => h.client(s, room, { name: `late@${s.name}` }))
    await Promise.all(late.map((c) => c.synced()))
    await waitFor(() => late.every((c) => {
      const s = c.snapshot()
      return s.text === expected.text && canonicalJSON(s.map) === canonicalJSON(expected.map)
    }), {
      timeout: 10000,
      message: () => `late joiners to hold the full doc (expected ${fingerprint(expected)})\n` + describeState(late)
    })
    // and they take part in further editing
    late[0].text.insert(0, '<late0>')
    late[1].map.set('late1', true)
    const all = [...clients, ...late]
    await waitFor(() => all.every((c) => c.text.toString().startsWith('<late0>') && c.map.get('late1') === true), {
      timeout: 10000,
      message: () => 'edits by late joiners to reach every client\n' + describeState(all)
    })
  }))
})
