// Run before the suite (npm "pretest"): fail fast with one clear message when
// the server binary or Redis is missing, instead of every file failing its hook.
import { assertBinary, connectRedis, REDIS_URL } from './harness.mjs'

try {
  const bin = assertBinary()
  const redis = await connectRedis()
  await redis.ping()
  await redis.quit()
  console.log(`e2e: using ${bin} and Redis at ${REDIS_URL}`)
} catch (e) {
  console.error(`e2e preflight failed: ${e.message}`)
  process.exit(1)
}
