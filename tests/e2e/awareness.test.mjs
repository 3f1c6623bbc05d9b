// c. Awareness flows across servers; joiners see present users; a client that
//    leaves (cleanly or by a dead socket) disappears from everyone's states
//    within a few seconds, long before the 30 s awareness timeout.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, randomHex } from './harness.mjs'

const h = new Harness('awareness')
const REMOVAL_TIMEOUT = 8000 // "a few seconds"; y-protocols' own timeout is 30 s

const statesOf = (c) => JSON.stringify(Object.fromEntries(c.awareness.getStates()))

describe('awareness across servers', { timeout: 120000 }, () => {
  before(async () => { await h.setup(2) })
  after(async () => { await h.teardown() })

  /**
   * @param {'destroy'|'terminate'} how
   */
  const scenario = async (how) => {
    const [s1, s2] = h.servers
    const room = `aw-${how}-${randomHex(4)}`
    const a = h.client(s1, room, { name: 'A' })
    const b = h.client(s2, room, { name: 'B' })
    await Promise.all([a.synced(), b.synced()])

    const alice = { user: { name: 'alice' } }
    a.awareness.setLocalState(alice)
    // (a state must have clock >= 1 to be accepted by a peer that never saw the
    // client: y-protocols ignores the initial clock-0 state of unknown clients)
    b.awareness.setLocalState({ user: { name: 'bob' } })
    await waitFor(() => {
      const st = b.awareness.getStates().get(a.clientID)
      return st && JSON.stringify(st) === JSON.stringify(alice)
    }, { timeout: 10000, message: () => `B (server 2) to see A's (server 1) awareness state; B states: ${statesOf(b)}, A id ${a.clientID}` })

    // a client joining later, on the other server than A, learns about A (and B) on connect
    const c = h.client(s2, room, { name: 'C' })
    await c.synced()
    await waitFor(() => {
      const st = c.awareness.getStates().get(a.clientID)
      return st && JSON.stringify(st) === JSON.stringify(alice) && c.awareness.getStates().has(b.clientID)
    }, { timeout: 10000, message: () => `late joiner C to see present users A (${a.clientID}) and B (${b.clientID}); C states: ${statesOf(c)}` })
    // also a late joiner on A's own server
    const d = h.client(s1, room, { name: 'D' })
    await d.synced()
    await waitFor(() => {
      const st = d.awareness.getStates().get(a.clientID)
      return st && JSON.stringify(st) === JSON.stringify(alice) && d.awareness.getStates().has(b.clientID)
    }, { timeout: 10000, message: () => `late joiner D (server 1) to see A and B; D states: ${statesOf(d)}` })

    c.awareness.setLocalState({ user: { name: 'carol' } })
    d.awareness.setLocalState({ user: { name: 'dave' } })
    await waitFor(() => b.awareness.getStates().get(c.clientID)?.user?.name === 'carol' &&
      b.awareness.getStates().get(d.clientID)?.user?.name === 'dave',
    { timeout: 10000, message: () => `B to see C (carol) and D (dave); B states: ${statesOf(b)}` })

    // B updates its state: A, C, D see it
    b.awareness.setLocalStateField('user', { name: 'bobby' })
    await waitFor(() => [a, c, d].every((x) => x.awareness.getStates().get(b.clientID)?.user?.name === 'bobby'),
      { timeout: 10000, message: () => `B's updated state (bobby) to reach A, C, D; A: ${statesOf(a)} C: ${statesOf(c)} D: ${statesOf(d)}` })

    const t0 = Date.now()
    if (how === 'destroy') a.destroy()
    else a.terminate()
    await waitFor(() => [b, c, d].every((x) => !x.awareness.getStates().has(a.clientID)), {
      timeout: REMOVAL_TIMEOUT,
      message: () => `A (${how}) to be removed from the awareness of B, C, D within ${REMOVAL_TIMEOUT} ms; ` +
        `B: ${statesOf(b)} C: ${statesOf(c)} D: ${statesOf(d)}`
    })
    const took = Date.now() - t0
    assert.ok(took < REMOVAL_TIMEOUT, `removal took ${took} ms`)
    // others are still there
    assert.ok(b.awareness.getStates().has(c.clientID), 'B still sees C')
    assert.ok(d.awareness.getStates().has(b.clientID), 'D still sees B')
    for (const x of [b, c, d]) x.destroy()
  }

  it('state propagates across servers; destroyed provider is removed promptly', { timeout: 60000 }, h.wrap(() => scenario('destroy')))

  it('abruptly terminated socket (no close frame, no null state) is removed promptly', { timeout: 60000 }, h.wrap(() => scenario('terminate')))
})
