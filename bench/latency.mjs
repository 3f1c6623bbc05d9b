// Update latency through release `y-redis server` processes sharing one Redis.
//
// Client A makes EDITS Y.Text inserts (one marker "<i>" each, INTERVAL_MS apart);
// client B in the same room records, in its Y.Text observe handler, when each
// marker arrives. Latency = B observes marker i - A made edit i (both clients
// live in this Node process, so they share one clock). Two runs:
//   cross-server: A on server 1, B on server 2
//   same-server:  A and B on server 1
// Prints min, median, p90, p99, max and mean in ms for each run.
//
//   node latency.mjs
//
// Environment: EDITS (500), INTERVAL_MS (10), WARMUP (20 unmeasured edits first),
// Y_REDIS_BIN, REDIS.

import { performance } from 'node:perf_hooks'
import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import {
  startServer, waitFor, sleep, randomHex, scratchDir, deletePrefix, removeDir, percentile, binaryPath
} from './common.mjs'

const EDITS = Number(process.env.EDITS || 500)
const INTERVAL_MS = Number(process.env.INTERVAL_MS || 10)
const WARMUP = Number(process.env.WARMUP || 20)

const prefix = `bench-${randomHex(6)}`
const dir = scratchDir('latency')
const servers = []
const providers = []

function client (server, room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server.url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  providers.push(provider)
  return { doc, provider, text: doc.getText('text') }
}

async function run (label, serverA, serverB) {
  const room = `latency-${randomHex(4)}`
  const a = client(serverA, room)
  const b = client(serverB, room)
  await waitFor(() => a.provider.synced && b.provider.synced, { message: `${label}: both clients synced` })

  const total = WARMUP + EDITS
  const sentAt = new Array(total).fill(NaN)
  const seenAt = new Array(total).fill(NaN)
  let seen = 0
  b.text.observe((event) => {
    const now = performance.now()
    for (const d of event.delta) {
      if (typeof d.insert !== 'string') continue
      for (const m of d.insert.matchAll(/<(\d+)>/g)) {
        const i = Number(m[1])
        if (Number.isNaN(seenAt[i])) { seenAt[i] = now; seen++ }
      }
    }
  })

  const t0 = performance.now()
  for (let i = 0; i < total; i++) {
    sentAt[i] = performance.now()
    a.text.insert(a.text.length, `<${i}>`)
    await sleep(INTERVAL_MS)
  }
  const sendMs = performance.now() - t0
  await waitFor(() => seen === total, { timeout: 30000, message: () => `${label}: B saw ${seen}/${total} edits` })

  const lat = []
  for (let i = WARMUP; i < total; i++) lat.push(seenAt[i] - sentAt[i])
  lat.sort((x, y) => x - y)
  const mean = lat.reduce((s, x) => s + x, 0) / lat.length
  const f = (x) => x.toFixed(2)
  console.log(`${label}: ${EDITS} edits (after ${WARMUP} warm-up), one every ~${INTERVAL_MS} ms (${(sendMs / total).toFixed(1)} ms actual)`)
  console.log(`  min ${f(lat[0])}  median ${f(percentile(lat, 50))}  p90 ${f(percentile(lat, 90))}  ` +
    `p99 ${f(percentile(lat, 99))}  max ${f(lat[lat.length - 1])}  mean ${f(mean)}  (ms)`)
  if (a.text.toString() !== b.text.toString()) console.log('  WARNING: A and B texts differ at the end')

  a.provider.destroy(); b.provider.destroy()
  a.doc.destroy(); b.doc.destroy()
}

async function main () {
  servers.push(await startServer({ prefix, dir, name: 's1' }))
  servers.push(await startServer({ prefix, dir, name: 's2' }))
  console.log(`y-redis update latency (${binaryPath()}), A's local edit -> B's observe handler`)
  await run('cross-server (A on s1, B on s2)', servers[0], servers[1])
  await run('same-server  (A and B on s1)', servers[0], servers[0])
}

async function cleanup () {
  for (const p of providers) { try { p.destroy() } catch {} }
  await Promise.all(servers.map((s) => s.stop()))
  try { await deletePrefix(prefix) } catch (e) { console.error(`could not delete Redis keys ${prefix}*: ${e.message}`) }
  removeDir(dir)
}

let code = 0
try { await main() } catch (e) { console.error(e.stack || e); code = 1 }
await cleanup()
process.exit(code)
