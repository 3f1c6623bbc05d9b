// Idle memory per connection of one release `y-redis server`.
//
// Opens CONNS y-websocket WebsocketProvider connections spread over ROOMS rooms,
// each client makes one small edit, waits until every client is synced and has
// every edit of its room, then idles IDLE_MS and reads the server's VmRSS.
// Prints RSS at start, with the idle connections, and (delta / CONNS) in KiB.
//
//   bash -c 'ulimit -n 4096; node idle-memory.mjs'
//
// Both this Node process and the server (which inherits its limits) need more
// than CONNS file descriptors; the script refuses to start when the soft limit
// is too low.
//
// Environment: CONNS (1000), ROOMS (100), IDLE_MS (5000), CLOSED_MS (35000),
// SAMPLE_MS (0: when set, RSS is also printed every SAMPLE_MS while idle, to
// show whether it stays flat over a long idle time),
// ROUNDS (1: more rounds of connect, idle and close on the same server, each
// with rooms of its own, show whether memory kept after closing grows),
// Y_REDIS_BIN, REDIS.

import fs from 'node:fs'
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import {
  startServer, procStatus, waitFor, sleep, randomHex, scratchDir, deletePrefix, removeDir, mib, binaryPath
} from './common.mjs'

const CONNS = Number(process.env.CONNS || 1000)
const ROOMS = Number(process.env.ROOMS || 100)
const IDLE_MS = Number(process.env.IDLE_MS || 5000)
// the server gives freed memory back to the OS every 30 s
const CLOSED_MS = Number(process.env.CLOSED_MS || 35000)
const PER_ROOM = Math.ceil(CONNS / ROOMS)
const BATCH = 50
const ROUNDS = Number(process.env.ROUNDS || 1)
const SAMPLE_MS = Number(process.env.SAMPLE_MS || 0)

// every provider adds a process 'exit' listener
process.setMaxListeners(CONNS + 50)

const prefix = `bench-${randomHex(6)}`
const dir = scratchDir('idle')
let server = null
const clients = []

function openFilesLimit (pid = 'self') {
  const m = fs.readFileSync(`/proc/${pid}/limits`, 'utf8').match(/^Max open files\s+(\S+)/m)
  return m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity
}

async function main () {
  const need = CONNS + 200
  if (openFilesLimit() < need) {
    throw new Error(`open files limit is ${openFilesLimit()}, need at least ${need}; ` +
      "run as: bash -c 'ulimit -n 4096; node idle-memory.mjs'")
  }
  server = await startServer({ prefix, dir })
  const pid = server.proc.pid
  await sleep(500)
  const atStart = procStatus(pid)

  const first = await round(pid, 1)
  const { connectMs, peakDuringConnect, idle, stillConnected, afterClose, settled } = first
  // More rounds on the same server: memory kept after closing should not
  // grow round after round (a leak would).
  const later = []
  for (let r = 2; r <= ROUNDS; r++) later.push(await round(pid, r))
  const deltaKiB = idle.rssKiB - atStart.rssKiB
  const kib = (s) => `${s.rssKiB} KiB (${mib(s.rssKiB)}; allocated ${s.anonKiB}, binary and libraries ${s.fileKiB})`
  const rows = [
    ['server binary', binaryPath()],
    ['connections', `${CONNS} in ${ROOMS} rooms (${PER_ROOM} per room), one edit each`],
    ['connect + sync + converge', `${connectMs} ms (batches of ${BATCH})`],
    ['still connected after idle', `${stillConnected}/${CONNS}`],
    ['RSS at start', `${kib(atStart)}, ${atStart.threads} threads`],
    ['RSS right after all converged', kib(peakDuringConnect)],
    [`RSS with ${CONNS} idle conns`, `${kib(idle)} after ${IDLE_MS} ms idle, ${idle.threads} threads`],
    ['peak RSS (VmHWM)', `${idle.hwmKiB} KiB (${mib(idle.hwmKiB)})`],
    [`(idle - start) / ${CONNS}`, `${(deltaKiB / CONNS).toFixed(1)} KiB per connection (allocated: ${((idle.anonKiB - atStart.anonKiB) / CONNS).toFixed(1)})`],
    ['RSS 3 s after all closed', kib(afterClose)],
    [`RSS ${CLOSED_MS / 1000} s after all closed`, `${kib(settled)} (${(100 * settled.rssKiB / atStart.rssKiB - 100).toFixed(0)}% over the start; allocated ${(100 * settled.anonKiB / atStart.anonKiB - 100).toFixed(0)}%)`]
  ]
  const w = Math.max(...rows.map(([k]) => k.length)) + 1
  console.log('y-redis idle memory')
  for (const [k, v] of rows) console.log(`  ${(k + ':').padEnd(w)} ${v}`)
  later.forEach((r, i) => console.log(`  round ${i + 2}: allocated ${r.idle.anonKiB} KiB with ${CONNS} idle conns, ${r.settled.anonKiB} KiB ${CLOSED_MS / 1000} s after all closed (RSS ${r.settled.rssKiB} KiB)`))
}

/** One round: CONNS clients connect, converge, idle IDLE_MS, all close; memory read along the way. */
async function round (pid, n) {
  const t0 = Date.now()
  for (let i = 0; i < CONNS; i += BATCH) {
    const batch = []
    for (let j = i; j < Math.min(CONNS, i + BATCH); j++) {
      const room = `r${n}-room-${j % ROOMS}`
      const doc = new Y.Doc()
      const provider = new WebsocketProvider(server.url, room, doc, {
        WebSocketPolyfill: WebSocket,
        disableBc: true
      })
      const c = { doc, provider, text: doc.getText('text'), n: j }
      clients.push(c)
      batch.push(c)
    }
    await waitFor(() => batch.every((c) => c.provider.synced), {
      timeout: 60000,
      message: () => `batch at ${i}: ${batch.filter((c) => c.provider.synced).length}/${batch.length} synced`
    })
    for (const c of batch) c.text.insert(0, `[c${c.n}]`)
  }
  // every client has every room member's edit
  await waitFor(() => clients.every((c) => (c.text.toString().match(/\[c\d+\]/g) || []).length === PER_ROOM), {
    timeout: 60000,
    interval: 200,
    message: () => `${clients.filter((c) => (c.text.toString().match(/\[c\d+\]/g) || []).length === PER_ROOM).length}/${CONNS} clients converged`
  })
  const connectMs = Date.now() - t0
  const peakDuringConnect = procStatus(pid)
  await idleFor(pid, IDLE_MS)
  const idle = procStatus(pid)
  const stillConnected = clients.filter((c) => c.provider.wsconnected).length

  for (const c of clients) { c.provider.destroy(); c.doc.destroy() }
  clients.length = 0
  await sleep(3000)
  const afterClose = procStatus(pid)
  await sleep(Math.max(0, CLOSED_MS - 3000))
  const settled = procStatus(pid)
  return { connectMs, peakDuringConnect, idle, stillConnected, afterClose, settled }
}

/** Waits `ms`, printing the server's RSS every SAMPLE_MS if that is set. */
async function idleFor (pid, ms) {
  const start = Date.now()
  while (SAMPLE_MS > 0 && Date.now() - start + SAMPLE_MS <= ms) {
    await sleep(SAMPLE_MS)
    const s = procStatus(pid)
    console.log(`  idle ${((Date.now() - start) / 1000).toFixed(0)} s: RSS ${s.rssKiB} KiB (allocated ${s.anonKiB})`)
  }
  await sleep(Math.max(0, ms - (Date.now() - start)))
}

async function cleanup () {
  for (const c of clients) { try { c.provider.destroy() } catch {} }
  if (server) await server.stop()
  try { await deletePrefix(prefix) } catch (e) { console.error(`could not delete Redis keys ${prefix}*: ${e.message}`) }
  removeDir(dir)
}

let code = 0
try { await main() } catch (e) { console.error(e.stack || e); code = 1 }
await cleanup()
process.exit(code)
