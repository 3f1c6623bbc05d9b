// Run before the suite (npm "pretest"): fail fast with one clear message when
// the server binary, Redis, Postgres or moto (S3) is missing, instead of every
// file failing its hook.
import { execFileSync } from 'node:child_process'
import pg from 'pg'
import { assertBinary, connectRedis, REDIS_URL, withTimeout } from './harness.mjs'
import { PG_ADMIN_URL } from './storage.mjs'

try {
  const bin = assertBinary()
  const redis = await connectRedis()
  await redis.ping()
  await redis.quit()

  const admin = new pg.Client({ connectionString: PG_ADMIN_URL })
  try {
    await withTimeout(admin.connect(), 5000, 'connect')
    await admin.query('SELECT 1')
  } catch (e) {
    throw new Error(`cannot reach Postgres at ${PG_ADMIN_URL} (set E2E_POSTGRES=postgres://...): ${e.message}`)
  } finally {
    try { await admin.end() } catch {}
  }

  const python = process.env.E2E_PYTHON || 'python3'
  try {
    execFileSync(python, ['-c', 'import moto.server'], { stdio: 'pipe', timeout: 30000 })
  } catch (e) {
    throw new Error(`${python} cannot import moto.server (S3 tests): pip install 'moto[server]' or set E2E_PYTHON\n${e.stderr || e.message}`)
  }
  console.log(`e2e: using ${bin}, Redis at ${REDIS_URL}, Postgres at ${PG_ADMIN_URL}, ${python} with moto`)
} catch (e) {
  console.error(`e2e preflight failed: ${e.message}`)
  process.exit(1)
}
