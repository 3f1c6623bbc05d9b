// Worker throughput and Redis memory before/after compaction, with Postgres
// storage. Prints figures; asserts nothing.
//
// One release `y-redis server` (AUTH_DISABLED) receives every edit through raw
// `ws` sockets sending y-websocket sync Update frames (type 0, subtype 2,
// varUint8Array(update v1), each update made with yjs). Each socket waits for
// the server's SyncStep2 before sending and closes once the server has echoed
// all its updates back (so they are in the room stream). No worker runs while
// input is produced; then one `y-redis worker` process is started per phase
// and timed (Postgres polled every POLL_MS):
//
//   1. ROOMS rooms x UPDATES small Y.Text updates: time until yredis_docs_v1
//      holds all ROOMS rooms; the worker's yredis_worker_persist_seconds;
//      Redis memory of the room streams (sum of MEMORY USAGE) and INFO
//      used_memory before the worker and after it trimmed/deleted the streams.
//   2. one room with SMALL_ROOM_UPDATES small updates: MEMORY USAGE of its
//      stream before, after the first compaction and after the later rounds.
//   3. one room of BIG_UPDATES updates of BIG_UPDATE_KB KB of Y.Text each
//      (~5 MB): time until its row appears, stored row size, MEMORY USAGE
//      before/after.
//
//   node worker-throughput.mjs
//
// Environment: ROOMS (1000), UPDATES (10), SMALL_ROOM_UPDATES (200),
// BIG_UPDATES (50), BIG_UPDATE_KB (100), DEBOUNCE_MS (REDIS_TASK_DEBOUNCE,
// 0), LIFETIME_MS (REDIS_MIN_MESSAGE_LIFETIME, 1000), WORKER_IDLE_MS (50),
// WORKER_CONCURRENCY (worker default 4), WS_PARALLEL (sockets pushing at
// once, 50), POLL_MS (100), TRIM_TIMEOUT_MS (60000), BENCH_LOG (warn: server and worker LOG),
// BENCH_POSTGRES (postgres://postgres@127.0.0.1:5432), Y_REDIS_BIN, REDIS,
// BENCH_KEEP=1 keeps the scratch dir with the server/worker logs.

import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { performance } from 'node:perf_hooks'
import * as Y from 'yjs'
import WebSocket from 'ws'
import * as encoding from 'lib0/encoding'
import pg from 'pg'
import {
  startServer, freePort, sleep, randomHex, scratchDir, deletePrefix, removeDir, binaryPath, MiniRedis, REDIS_URL
} from './common.mjs'

const num = (k, d) => (process.env[k] === undefined || process.env[k] === '' ? d : Number(process.env[k]))
const ROOMS = num('ROOMS', 1000)
const UPDATES = num('UPDATES', 10)
const SMALL_ROOM_UPDATES = num('SMALL_ROOM_UPDATES', 200)
const BIG_UPDATES = num('BIG_UPDATES', 50)
const BIG_UPDATE_KB = num('BIG_UPDATE_KB', 100)
const DEBOUNCE_MS = num('DEBOUNCE_MS', 0)
const LIFETIME_MS = num('LIFETIME_MS', 1000)
const WORKER_IDLE_MS = num('WORKER_IDLE_MS', 50)
const WS_PARALLEL = num('WS_PARALLEL', 50)
const POLL_MS = num('POLL_MS', 100)
const TRIM_TIMEOUT_MS = num('TRIM_TIMEOUT_MS', 60000)
const PG_BASE = process.env.BENCH_POSTGRES || 'postgres://postgres@127.0.0.1:5432'

const prefix = `bench-${randomHex(6)}`
const dbName = `ybench_wt_${randomHex(5)}`
const dir = scratchDir('worker')
const POSTGRES = `${PG_BASE}/${dbName}`

const streamKey = (room) => `${prefix}:room:${encodeURIComponent(room)}:index`
const ms = (x) => `${x.toFixed(0)} ms`
const kib = (b) => `${(b / 1024).toFixed(1)} KiB`
const mibB = (b) => `${(b / 1048576).toFixed(2)} MiB`

async function usedMemory (redis) {
  const info = await redis.cmd(['INFO', 'memory'])
  return Number(/used_memory:(\d+)/.exec(info)[1])
}
const memUsage = async (redis, key) => (await redis.cmd(['MEMORY', 'USAGE', key, 'SAMPLES', '0'])) ?? 0
const sum = (xs) => xs.reduce((s, x) => s + x, 0)

// ---------------------------------------------------------------------------
// Input: yjs updates sent as sync Update frames over raw websockets.

function updateFrame (update) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 0) // sync
  encoding.writeVarUint(enc, 2) // Update
  encoding.writeVarUint8Array(enc, update)
  return encoding.toUint8Array(enc)
}

/** `count` Y.Text updates (v1) of one fresh Y.Doc; makeText(i) is the inserted string. */
function textUpdates (count, makeText) {
  const doc = new Y.Doc()
  const updates = []
  doc.on('update', (u) => updates.push(u))
  const text = doc.getText('text')
  for (let i = 0; i < count; i++) text.insert(text.length, makeText(i))
  const content = text.toString()
  doc.destroy()
  return { updates, content }
}

/**
 * Connects to the room, waits for the server's SyncStep2 (so its subscription
 * starts after the current stream end), sends every update, and resolves once
 * the server echoed all of them back (they are in the Redis stream).
 */
function pushRoom (url, room, updates, timeout = 60000) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}/${room}`)
    ws.binaryType = 'nodebuffer'
    let sent = false
    let echoed = 0
    const timer = setTimeout(() => { ws.terminate(); reject(new Error(`${room}: ${echoed}/${updates.length} updates echoed within ${timeout} ms`)) }, timeout)
    ws.on('message', (data) => {
      if (data[0] !== 0) return
      if (data[1] === 1 && !sent) {
        sent = true
        for (const u of updates) ws.send(updateFrame(u))
      } else if (data[1] === 2 && sent && ++echoed === updates.length) {
        clearTimeout(timer)
        ws.close()
        resolve()
      }
    })
    ws.on('error', (e) => { clearTimeout(timer); reject(e) })
    ws.on('close', (code) => { if (echoed < updates.length) { clearTimeout(timer); reject(new Error(`${room}: closed with ${code} after ${echoed} echoes`)) } })
  })
}

async function pool (items, parallel, fn) {
  let next = 0
  const run = async () => { while (next < items.length) { const i = next++; await fn(items[i], i) } }
  await Promise.all(Array.from({ length: Math.min(parallel, items.length) }, run))
}

// ---------------------------------------------------------------------------
// Worker process.

async function startWorker (name) {
  const bin = binaryPath()
  const port = await freePort()
  const logPath = path.join(dir, `${name}.log`)
  const fd = fs.openSync(logPath, 'a')
  const env = { ...process.env }
  for (const k of Object.keys(env)) {
    if (/^(S3_|POSTGRES|AUTH_|YDOC_UPDATE_CALLBACK|REDIS_|STORAGE_DIR|HOST$|PORT$|WS_|WORKER_|LOG)/.test(k)) delete env[k]
  }
  Object.assign(env, {
    HOST: '127.0.0.1',
    REDIS: REDIS_URL,
    REDIS_PREFIX: prefix,
    POSTGRES,
    REDIS_TASK_DEBOUNCE: String(DEBOUNCE_MS),
    REDIS_MIN_MESSAGE_LIFETIME: String(LIFETIME_MS),
    WORKER_IDLE_MS: String(WORKER_IDLE_MS),
    WORKER_PORT: String(port),
    LOG: process.env.BENCH_LOG || 'warn'
  })
  if (process.env.WORKER_CONCURRENCY) env.WORKER_CONCURRENCY = process.env.WORKER_CONCURRENCY
  const t0 = performance.now()
  const proc = spawn(bin, ['worker'], { env, cwd: dir, stdio: ['ignore', fd, fd] })
  fs.closeSync(fd)
  let exited = null
  proc.once('exit', (code, signal) => { exited = { code, signal } })
  process.on('exit', () => { if (!exited) { try { proc.kill('SIGKILL') } catch {} } })
  const worker = {
    proc,
    t0,
    readyAt: null,
    base: `http://127.0.0.1:${port}`,
    get exited () { return exited },
    async metrics () {
      const text = await (await fetch(`${worker.base}/metrics`)).text()
      const get = (n) => { const m = new RegExp(`^${n}(?:\\{\\})? (\\S+)$`, 'm').exec(text); return m ? Number(m[1]) : NaN }
      return {
        persistSum: get('yredis_worker_persist_seconds_sum'),
        persistCount: get('yredis_worker_persist_seconds_count'),
        tasks: get('yredis_worker_tasks_total'),
        persists: get('yredis_worker_persists_total'),
        errors: get('yredis_errors_total')
      }
    },
    async stop () {
      if (exited) return exited
      const done = new Promise((resolve) => proc.once('exit', resolve))
      proc.kill('SIGTERM')
      const t = setTimeout(() => { try { proc.kill('SIGKILL') } catch {} }, 5000)
      await done
      clearTimeout(t)
      return exited
    }
  }
  // Readiness is watched in the background so it never delays the timed polling.
  ;(async () => {
    while (!exited && worker.readyAt === null) {
      try {
        const res = await fetch(`${worker.base}/readyz`)
        if (res.ok) { worker.readyAt = performance.now(); return }
      } catch {}
      await sleep(10)
    }
  })()
  return worker
}

/** Poll `probe` every POLL_MS until `done(value)`; throws if the worker died or on timeout. */
async function pollUntil (worker, probe, done, timeout, what) {
  const start = performance.now()
  for (;;) {
    const v = await probe()
    if (done(v)) return { value: v, at: performance.now() }
    if (worker.exited) throw new Error(`worker exited (${JSON.stringify(worker.exited)}) while waiting for ${what}; log: ${path.join(dir, 'worker*.log')}`)
    if (performance.now() - start > timeout) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(v)})`)
    await sleep(POLL_MS)
  }
}

/** XLEN / EXISTS / MEMORY USAGE of one stream key every POLL_MS until it is gone; returns the distinct states seen. */
async function watchStream (redis, worker, key, timeout) {
  const states = []
  const start = performance.now()
  for (;;) {
    const [exists, xlen, mem] = await Promise.all([redis.cmd(['EXISTS', key]), redis.cmd(['XLEN', key]), memUsage(redis, key)])
    const t = performance.now() - worker.t0
    const last = states[states.length - 1]
    if (!last || last.exists !== exists || last.xlen !== xlen) states.push({ t, exists, xlen, mem })
    if (!exists) return { states, gone: true }
    if (performance.now() - start > timeout) return { states, gone: false }
    await sleep(POLL_MS)
  }
}

function printStates (label, states) {
  for (const s of states) {
    console.log(`    ${label} at +${ms(s.t).padStart(8)} after worker spawn: EXISTS ${s.exists}  XLEN ${String(s.xlen).padStart(4)}  MEMORY USAGE ${s.exists ? kib(s.mem) : '-'}`)
  }
}

// ---------------------------------------------------------------------------

const admin = new pg.Client({ connectionString: `${PG_BASE}/postgres` })
let db = null
let redis = null
let server = null
let worker = null

async function main () {
  await admin.connect()
  await admin.query(`CREATE DATABASE ${dbName}`)
  db = new pg.Client({ connectionString: POSTGRES })
  await db.connect()
  redis = await MiniRedis.connect()

  server = await startServer({ prefix, dir, env: { POSTGRES } }) // migrates the table
  console.log(`worker throughput (release ${path.relative(process.cwd(), binaryPath()) || binaryPath()}; ${(await import('node:os')).cpus().length} CPUs)`)
  console.log(`  REDIS_PREFIX=${prefix}  POSTGRES=${POSTGRES}`)
  console.log(`  worker: REDIS_TASK_DEBOUNCE=${DEBOUNCE_MS} REDIS_MIN_MESSAGE_LIFETIME=${LIFETIME_MS} WORKER_IDLE_MS=${WORKER_IDLE_MS} ` +
    `WORKER_CONCURRENCY=${process.env.WORKER_CONCURRENCY || '4 (default)'}; Postgres polled every ${POLL_MS} ms`)

  // ---- 1. many small rooms -------------------------------------------------
  console.log(`\n1. ${ROOMS} rooms x ${UPDATES} small Y.Text updates`)
  const rooms = Array.from({ length: ROOMS }, (_, i) => `tp-${String(i).padStart(5, '0')}`)
  const inputs = rooms.map((room, r) => textUpdates(UPDATES, (i) => `r${r} edit ${i}; `))
  const updateBytes = sum(inputs.flatMap((x) => x.updates.map((u) => u.length)))
  const keys = rooms.map(streamKey)
  const memBaseline = await usedMemory(redis)
  let t = performance.now()
  await pool(rooms, WS_PARALLEL, (room, i) => pushRoom(server.url, room, inputs[i].updates))
  const pushMs = performance.now() - t
  const lastPush = performance.now()
  const xlens = await Promise.all(keys.map((k) => redis.cmd(['XLEN', k])))
  const streamMemBefore = sum(await Promise.all(keys.map((k) => memUsage(redis, k))))
  const queueKey = `${prefix}:worker`
  const memBefore = await usedMemory(redis)
  console.log(`  input: pushed ${ROOMS * UPDATES} updates (${kib(updateBytes)} of update v1, ${(updateBytes / (ROOMS * UPDATES)).toFixed(1)} B avg) ` +
    `through ${WS_PARALLEL} sockets at a time in ${ms(pushMs)}`)
  console.log(`  XLEN sum over the ${ROOMS} streams: ${sum(xlens)} (expected ${ROOMS * UPDATES}); worker queue XLEN ${await redis.cmd(['XLEN', queueKey])}`)
  console.log(`  Redis before the worker: room streams ${mibB(streamMemBefore)} by MEMORY USAGE (${(streamMemBefore / ROOMS).toFixed(0)} B per room); ` +
    `INFO used_memory ${mibB(memBefore)} (+${mibB(memBefore - memBaseline)} over the pre-push baseline; server-wide, other clients move it)`)

  // every task must be claimable when the worker starts (debounce elapsed)
  const wait = DEBOUNCE_MS - (performance.now() - lastPush)
  if (wait > 0) await sleep(wait + 50)

  worker = await startWorker('worker-1')
  let firstDocAt = null
  const docCount = async () => {
    const n = Number((await db.query('SELECT count(DISTINCT room) AS n FROM yredis_docs_v1 WHERE room LIKE $1', ['tp-%'])).rows[0].n)
    if (n > 0 && firstDocAt === null) firstDocAt = performance.now()
    return n
  }
  const { at: allAt } = await pollUntil(worker, docCount, (n) => n >= ROOMS, 600000, `${ROOMS} docs in yredis_docs_v1`)
  const total = allAt - worker.t0
  const m1 = await worker.metrics()
  const rows = (await db.query('SELECT count(*) AS n, sum(octet_length(update)) AS bytes FROM yredis_docs_v1 WHERE room LIKE $1', ['tp-%'])).rows[0]
  console.log(`  worker spawn -> all ${ROOMS} docs in Postgres: ${ms(total)}  (${(ROOMS / (total / 1000)).toFixed(0)} rooms/s)`)
  console.log(`    spawn -> /readyz ok: ${worker.readyAt ? ms(worker.readyAt - worker.t0) : 'n/a'}; ` +
    `spawn -> first doc: ${ms(firstDocAt - worker.t0)}; first doc -> all: ${ms(allAt - firstDocAt)}` +
    (worker.readyAt ? `; ready -> all: ${ms(allAt - worker.readyAt)} (${(ROOMS / ((allAt - worker.readyAt) / 1000)).toFixed(0)} rooms/s)` : ''))
  console.log(`    stored: ${rows.n} rows, ${kib(Number(rows.bytes))} of update v2 (${(Number(rows.bytes) / rows.n).toFixed(0)} B avg)`)
  console.log(`    worker /metrics then: yredis_worker_persist_seconds sum ${m1.persistSum.toFixed(3)} s, count ${m1.persistCount} ` +
    `(mean ${(1000 * m1.persistSum / m1.persistCount).toFixed(2)} ms per persist); tasks_total ${m1.tasks}, persists_total ${m1.persists}, errors_total ${m1.errors}`)

  // wait for the later rounds: streams trimmed, then deleted once empty
  t = performance.now()
  let queuePeak = 0
  const existing = async () => {
    const [n, q] = await Promise.all([
      Promise.all(keys.map((k) => redis.cmd(['EXISTS', k]))).then(sum),
      redis.cmd(['XLEN', queueKey])
    ])
    queuePeak = Math.max(queuePeak, q)
    return n
  }
  let left = await existing()
  let gone = true
  try {
    await pollUntil(worker, async () => { left = await existing(); return left }, (n) => n === 0, TRIM_TIMEOUT_MS, 'room streams deleted')
  } catch (e) { gone = false; console.log(`  (${e.message})`) }
  const goneAt = performance.now()
  const xlensAfter = await Promise.all(keys.map((k) => redis.cmd(['XLEN', k])))
  const streamMemAfter = sum(await Promise.all(keys.map((k) => memUsage(redis, k))))
  const memAfter = await usedMemory(redis)
  const m1b = await worker.metrics()
  console.log(`  trimming: ${gone ? `all ${ROOMS} streams deleted` : `${left} streams still exist`} ${ms(goneAt - allAt)} after the last doc landed ` +
    `(${ms(goneAt - worker.t0)} after spawn); EXISTS sum ${left}, XLEN sum ${sum(xlensAfter)}`)
  console.log(`  Redis after: room streams ${mibB(streamMemAfter)} by MEMORY USAGE; INFO used_memory ${mibB(memAfter)} ` +
    `(${memAfter >= memBefore ? '+' : '-'}${mibB(Math.abs(memAfter - memBefore))} vs before the worker, ${memAfter >= memBaseline ? '+' : '-'}${mibB(Math.abs(memAfter - memBaseline))} vs the pre-push baseline)`)
  console.log(`    worker queue ${queueKey}: XLEN ${await redis.cmd(['XLEN', queueKey])} (peak ${queuePeak} while trimming), MEMORY USAGE ${kib(await memUsage(redis, queueKey))}; ` +
    `worker metrics now: tasks_total ${m1b.tasks}, persists_total ${m1b.persists}, persist_seconds count ${m1b.persistCount}`)
  await worker.stop(); worker = null

  // ---- 2. one room with many small updates ---------------------------------
  const smallRoom = `mem-${SMALL_ROOM_UPDATES}`
  console.log(`\n2. one room, ${SMALL_ROOM_UPDATES} small updates`)
  const small = textUpdates(SMALL_ROOM_UPDATES, (i) => `edit ${i}; `)
  await pushRoom(server.url, smallRoom, small.updates)
  await memoryPhase(smallRoom, small, 'worker-2')

  // ---- 3. one ~5 MB document -----------------------------------------------
  const bigRoom = 'big-doc'
  console.log(`\n3. one room, ${BIG_UPDATES} updates x ${BIG_UPDATE_KB} KB of Y.Text`)
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 '
  const chunk = (i) => { let s = ''; for (let j = 0; j < BIG_UPDATE_KB * 1024; j++) s += alphabet[(j * 7 + i * 13 + (j >> 5)) % alphabet.length]; return s }
  const big = textUpdates(BIG_UPDATES, chunk)
  t = performance.now()
  await pushRoom(server.url, bigRoom, big.updates, 120000)
  console.log(`  input pushed in ${ms(performance.now() - t)}`)
  await memoryPhase(bigRoom, big, 'worker-3')
}

/** Persist + trim of one room by a fresh worker: timing, row size, stream memory over time. */
async function memoryPhase (room, input, name) {
  const key = streamKey(room)
  const bytes = sum(input.updates.map((u) => u.length))
  const xlen = await redis.cmd(['XLEN', key])
  const memBefore = await memUsage(redis, key)
  console.log(`  input: ${input.updates.length} updates, ${bytes >= 1048576 ? mibB(bytes) : kib(bytes)} of update v1; XLEN ${xlen} (expected ${input.updates.length})`)
  console.log(`  before the worker: EXISTS ${await redis.cmd(['EXISTS', key])}  MEMORY USAGE ${kib(memBefore)}`)
  const firstEntryMs = Number((await redis.cmd(['XRANGE', key, '-', '+', 'COUNT', 1]))[0][0].split('-')[0])
  const wait = firstEntryMs + DEBOUNCE_MS - Date.now()
  if (wait > 0) await sleep(wait + 50)

  worker = await startWorker(name)
  const rowProbe = async () => (await db.query('SELECT octet_length(update) AS u, octet_length(sv) AS sv FROM yredis_docs_v1 WHERE room = $1', [room])).rows
  const { value: rowsNow, at } = await pollUntil(worker, rowProbe, (r) => r.length > 0, 600000, `row of ${room}`)
  const m = await worker.metrics()
  console.log(`  worker spawn -> row in Postgres: ${ms(at - worker.t0)}` +
    (worker.readyAt ? ` (spawn -> /readyz ok ${ms(worker.readyAt - worker.t0)}, ready -> row ${ms(at - worker.readyAt)})` : '') +
    `; yredis_worker_persist_seconds sum ${m.persistSum.toFixed(3)} s, count ${m.persistCount}`)
  console.log(`  stored: ${rowsNow.length} row(s), update v2 ${rowsNow.map((r) => kib(r.u)).join(', ')}, sv ${rowsNow.map((r) => r.sv + ' B').join(', ')}`)
  const { states, gone } = await watchStream(redis, worker, key, TRIM_TIMEOUT_MS)
  printStates('stream', states)
  if (!gone) console.log(`    (stream still exists after ${TRIM_TIMEOUT_MS} ms)`)
  // check the stored document is the whole input
  const doc = new Y.Doc()
  for (const r of (await db.query('SELECT update FROM yredis_docs_v1 WHERE room = $1', [room])).rows) Y.applyUpdateV2(doc, r.update)
  const ok = doc.getText('text').toString() === input.content
  console.log(`  stored document equals the input text: ${ok}`)
  await worker.stop(); worker = null
}

try {
  await main()
} catch (e) {
  console.error(e)
  process.exitCode = 1
} finally {
  if (worker) await worker.stop()
  if (server) await server.stop()
  if (redis) redis.close()
  if (db) await db.end()
  const n = await deletePrefix(prefix)
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
  } catch (e) { console.error(`could not drop ${dbName}: ${e.message}`) }
  await admin.end()
  console.log(`\ncleanup: deleted ${n} Redis keys with prefix ${prefix}, dropped database ${dbName}`)
  removeDir(dir)
}
