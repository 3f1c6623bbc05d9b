// Servers and workers run with glibc's per-thread allocation caches off: the
// process restarts itself once (same pid) with GLIBC_TUNABLES naming
// glibc.malloc.tcache_count=0, adds it to tunables an operator set, and
// leaves alone a GLIBC_TUNABLES that already names the cache. What it buys
// (memory handed back after connections close) is measured by
// bench/idle-memory.mjs, not asserted here.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { Harness, randomHex, waitFor } from './harness.mjs'

const h = new Harness('allocator')

/**
 * GLIBC_TUNABLES a running process was started with: from /proc when it
 * names one tunable; glibc cuts a longer one short there when it reads it,
 * so then from the process's own log line.
 */
function tunablesOf (sp) {
  const environ = fs.readFileSync(`/proc/${sp.proc.pid}/environ`, 'latin1').split('\0')
  const entry = environ.find((e) => e.startsWith('GLIBC_TUNABLES='))
  return entry === undefined ? null : entry.slice('GLIBC_TUNABLES='.length)
}

/** What the process logs it runs with. */
function loggedTunables (sp) {
  const m = /allocator settings glibc_tunables=(\S+)/.exec(fs.readFileSync(sp.logPath, 'utf8'))
  return m ? m[1] : null
}

describe('glibc per-thread caches', { timeout: 90000 }, () => {
  before(async () => { await h.setup(0) })
  after(async () => { await h.teardown() })

  it('are turned off in a server and a worker started without GLIBC_TUNABLES', h.wrap(async () => {
    const plain = await h.startServer('plain', { GLIBC_TUNABLES: '' })
    assert.equal(tunablesOf(plain), 'glibc.malloc.tcache_count=0')
    assert.equal(loggedTunables(plain), 'glibc.malloc.tcache_count=0')
    const worker = await h.startWorker('w1', { GLIBC_TUNABLES: '' })
    await waitFor(() => tunablesOf(worker) === 'glibc.malloc.tcache_count=0', { message: 'worker restarted with the cache off' })
  }))

  it("are added to an operator's tunables, and an operator's cache setting stands", h.wrap(async () => {
    const other = await h.startServer('other', { GLIBC_TUNABLES: 'glibc.pthread.rseq=0' })
    assert.equal(loggedTunables(other), 'glibc.pthread.rseq=0:glibc.malloc.tcache_count=0')
    const chosen = await h.startServer('chosen', { GLIBC_TUNABLES: 'glibc.malloc.tcache_count=7' })
    assert.equal(tunablesOf(chosen), 'glibc.malloc.tcache_count=7')
    assert.equal(loggedTunables(chosen), 'glibc.malloc.tcache_count=7')
  }))

  it('the restarted servers serve: an edit reaches every one of them', h.wrap(async () => {
    const room = `alloc-${randomHex(4)}`
    const clients = h.servers.map((s) => h.client(s, room))
    await Promise.all(clients.map((c) => c.synced()))
    clients[0].text.insert(0, 'through every server')
    for (const c of clients) {
      await waitFor(() => c.text.toString() === 'through every server', { message: `edit on ${c.server?.name ?? 'a server'}` })
    }
  }))
})
