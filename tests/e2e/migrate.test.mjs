// Concurrent Postgres migrations: compose and Helm start servers, workers
// and a `migrate` job at once, and each of them migrates at start. Here
// 5 `y-redis migrate` processes run at the same moment against a fresh,
// empty database, 10 rounds (a new database each round): every one must
// exit 0 and the table must exist once. Without the advisory lock around
// the migrations, Postgres fails some of them (duplicate key in
// pg_type_typname_nsp_index, two CREATE TABLE IF NOT EXISTS racing).

import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import pg from 'pg'
import { LOG_DIR, REPO_ROOT, assertBinary, randomHex } from './harness.mjs'
import { createScratchDatabase } from './stack.mjs'

const PROCESSES = 5
const ROUNDS = 10
const workDir = path.join(LOG_DIR, `migrate-${randomHex(4)}`)
const databases = []
/** diesel's embedded migrations: one folder each under migrations/ */
const MIGRATION_COUNT = fs.readdirSync(path.join(REPO_ROOT, 'migrations'), { withFileTypes: true }).filter((d) => d.isDirectory()).length

after(async () => {
  for (const db of databases) {
    try { await db.drop() } catch (e) { console.error(`drop ${db.name}: ${e.message}`) }
  }
  fs.rmSync(workDir, { recursive: true, force: true })
})

/** `y-redis migrate` against `url`; resolves with its exit code and output. */
function migrate (bin, url) {
  // Only what migrate needs: no stray S3/.env settings from the developer.
  const env = { PATH: process.env.PATH, POSTGRES: url, LOG: 'info' }
  return new Promise((resolve) => {
    const p = spawn(bin, ['migrate'], { env, cwd: workDir, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    p.stdout.on('data', (d) => { out += d })
    p.stderr.on('data', (d) => { out += d })
    const timer = setTimeout(() => p.kill('SIGKILL'), 60000)
    p.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, out }) })
  })
}

test(`${PROCESSES} concurrent \`y-redis migrate\` on a fresh database all succeed, ${ROUNDS} rounds`, async () => {
  const bin = assertBinary()
  fs.mkdirSync(workDir, { recursive: true })
  const failures = []
  for (let round = 1; round <= ROUNDS; round++) {
    const db = await createScratchDatabase(`migrate_r${round}`)
    assert.ok(db, 'Postgres answers (E2E_POSTGRES)')
    databases.push(db)
    const results = await Promise.all(Array.from({ length: PROCESSES }, () => migrate(bin, db.url)))
    results.forEach((r, i) => {
      if (r.code !== 0) failures.push(`round ${round} process ${i + 1}: exit ${r.code} signal ${r.signal}\n${r.out.trim()}`)
    })
    // the schema is there, exactly once, and diesel recorded the migration once
    const c = new pg.Client({ connectionString: db.url })
    await c.connect()
    try {
      const t = await c.query("SELECT count(*)::int AS n FROM information_schema.tables WHERE table_name = 'yredis_docs_v1'")
      assert.equal(t.rows[0].n, 1, `round ${round}: table yredis_docs_v1 exists`)
      const m = await c.query('SELECT count(*)::int AS n FROM __diesel_schema_migrations')
      assert.equal(m.rows[0].n, MIGRATION_COUNT, `round ${round}: each migration recorded once`)
      // nobody is left holding a lock (each migrate closed its session)
      const locks = await c.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
      assert.equal(locks.rows[0].n, 0, `round ${round}: no advisory lock held after the processes exited`)
    } finally { await c.end() }
  }
  assert.deepEqual(failures, [], `every migrate exits 0:\n${failures.join('\n\n')}`)
})
