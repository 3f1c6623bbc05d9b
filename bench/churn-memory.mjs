// Memory of one release `y-redis server` under connection churn.
//
// A room holds a ~1 MB document (Y.Text written by a y-websocket client in
// 64 KiB edits). Then CYCLES connect / full sync / disconnect cycles run,
// PARALLEL at a time, on raw `ws` sockets: each opens the room, reads frames
// until the server's SyncStep2 (the whole document) has arrived, checks its
// size, and closes. The server assembles the document for every sync and must
// drop it afterwards (ARCHITECTURE.md, "Processes"), so RSS should level off, not grow with
// the number of cycles.
//
// Prints VmRSS at start, after loading the document, after 1,000 cycles and
// after CYCLES cycles (each read after SETTLE_MS without traffic), the
// percent changes, VmHWM (peak) and the cycle rate. No assertions.
//
//   node churn-memory.mjs
//
// Environment: CYCLES (10000), PARALLEL (20), DOC_BYTES (1048576),
// SETTLE_MS (2000), Y_REDIS_BIN (default target/release/y-redis), REDIS.

import * as Y from 'yjs'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import {
  startServer, procStatus, waitFor, sleep, randomHex, scratchDir, deletePrefix, removeDir, mib, binaryPath
} from './common.mjs'

const CYCLES = Number(process.env.CYCLES || 10000)
const PARALLEL = Number(process.env.PARALLEL || 20)
const DOC_BYTES = Number(process.env.DOC_BYTES || 1024 * 1024)
const SETTLE_MS = Number(process.env.SETTLE_MS || 2000)
const FIRST_MARK = Math.min(1000, CYCLES)

const prefix = `bench-${randomHex(6)}`
const dir = scratchDir('churn')
const room = `churn-${randomHex(3)}`
let server = null

/** Deterministic printable text of n bytes. */
function text (n, seed) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,\n'
  let x = seed >>> 0 || 1
  const out = Buffer.alloc(n)
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
    out[i] = alphabet.charCodeAt(x % alphabet.length)
  }
  return out.toString('latin1')
}

/** varUint at `pos` → [value, next pos] */
function readVarUint (buf, pos) {
  let n = 0
  let mult = 1
  for (;;) {
    const b = buf[pos++]
    n += (b & 0x7f) * mult
    if (b < 0x80) return [n, pos]
    mult *= 128
  }
}

/**
 * One cycle: connect, wait for the SyncStep2 frame (type 0, subtype 1),
 * close, wait for the close. Resolves with the size of the document update.
 */
function cycle (url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    ws.binaryType = 'nodebuffer'
    let size = -1
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('cycle timed out after 30 s')) }, 30000)
    ws.on('message', (data) => {
      if (size >= 0) return
      const [type, p1] = readVarUint(data, 0)
      if (type !== 0) return
      const [sub, p2] = readVarUint(data, p1)
      if (sub !== 1) return
      size = readVarUint(data, p2)[0]
      ws.close()
    })
    ws.on('error', () => {})
    ws.on('close', (code) => {
      clearTimeout(timer)
      if (size >= 0) resolve(size)
      else reject(new Error(`closed with ${code} before the document arrived`))
    })
  })
}

async function runCycles (url, n, minSize) {
  let next = 0
  let failures = 0
  const t0 = Date.now()
  await Promise.all(Array.from({ length: PARALLEL }, async () => {
    while (next < n) {
      next++
      try {
        const size = await cycle(url)
        if (size < minSize) throw new Error(`SyncStep2 carried ${size} bytes, expected at least ${minSize}`)
      } catch (e) {
        failures++
        if (failures <= 5) console.error(`cycle failed: ${e.message}`)
        if (failures > 100) throw new Error('more than 100 failed cycles; giving up')
      }
    }
  }))
  return { ms: Date.now() - t0, failures }
}

const row = (label, st) => console.log(`${label.padEnd(28)} VmRSS ${mib(st.rssKiB).padStart(10)}   VmHWM ${mib(st.hwmKiB).padStart(10)}   threads ${st.threads}`)
const pct = (from, to) => `${to >= from ? '+' : ''}${(((to - from) / from) * 100).toFixed(1)} %`

try {
  console.log(`y-redis churn memory: ${binaryPath()}, ${CYCLES} connect/sync/disconnect cycles, ${PARALLEL} at a time, ` +
    `document ${(DOC_BYTES / 1024).toFixed(0)} KiB`)
  server = await startServer({ prefix, dir })
  const pid = server.proc.pid
  await sleep(SETTLE_MS)
  const start = procStatus(pid)
  row('start', start)

  // the document: 64 KiB edits by one y-websocket client
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server.url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  await waitFor(() => provider.synced, { message: 'writer to sync' })
  const ytext = doc.getText('text')
  const CHUNK = 64 * 1024
  for (let off = 0; off < DOC_BYTES; off += CHUNK) {
    ytext.insert(ytext.length, text(Math.min(CHUNK, DOC_BYTES - off), off + 1))
    await sleep(5)
  }
  const docUpdate = Y.encodeStateAsUpdate(doc)
  // the server has it all once a fresh sync returns the whole document
  const url = `${server.url}/${room}`
  await waitFor(async () => (await cycle(url)) >= docUpdate.length, { timeout: 60000, interval: 200, message: 'the document to be served whole' })
  provider.destroy()
  doc.destroy()
  await sleep(SETTLE_MS)
  const loaded = procStatus(pid)
  row(`document loaded (${(docUpdate.length / 1024).toFixed(0)} KiB)`, loaded)

  const minSize = docUpdate.length
  const first = await runCycles(url, FIRST_MARK, minSize)
  await sleep(SETTLE_MS)
  const after1k = procStatus(pid)
  row(`after ${FIRST_MARK} cycles`, after1k)
  let rest = { ms: 0, failures: 0 }
  if (CYCLES > FIRST_MARK) rest = await runCycles(url, CYCLES - FIRST_MARK, minSize)
  await sleep(SETTLE_MS)
  const end = procStatus(pid)
  row(`after ${CYCLES} cycles`, end)

  const ms = first.ms + rest.ms
  console.log('')
  console.log(`cycles: ${CYCLES} in ${(ms / 1000).toFixed(1)} s (${(CYCLES / (ms / 1000)).toFixed(0)} /s, ` +
    `${((CYCLES * minSize) / (ms / 1000) / 1048576).toFixed(0)} MiB/s of sync), ${first.failures + rest.failures} failed`)
  console.log(`RSS change: document loaded -> after ${FIRST_MARK} cycles ${pct(loaded.rssKiB, after1k.rssKiB)}; ` +
    `after ${FIRST_MARK} -> after ${CYCLES} cycles ${pct(after1k.rssKiB, end.rssKiB)}; ` +
    `document loaded -> after ${CYCLES} cycles ${pct(loaded.rssKiB, end.rssKiB)}; start -> end ${pct(start.rssKiB, end.rssKiB)}`)
  if (!server.running) console.log('SERVER EXITED during the run')
} finally {
  if (server) await server.stop()
  try { console.log(`deleted ${await deletePrefix(prefix)} Redis keys`) } catch (e) { console.error(`cleanup: ${e.message}`) }
  removeDir(dir)
}
process.exit(0)
