// S3 without S3_ACCESS_KEY / S3_SECRET_KEY: y-redis falls back to the
// standard AWS credential chain, as on EKS with IRSA or an instance role.
// Here the chain's first link, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in
// the process environment, against a moto S3 server (which accepts any key),
// with S3_REGION=eu-central-1: `y-redis migrate` creates the bucket in that
// region, and a server + worker persist a document there. Without keys and
// without any AWS credentials the same processes refuse to start, naming
// what is missing; half a key pair is a configuration error.
// (Web identity and instance metadata need AWS's STS or an EC2 host: not
// reachable here.)

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { Harness, assertBinary, randomHex, waitFor } from './harness.mjs'
import { MotoS3, decodeStored } from './storage.mjs'

const REGION = 'eu-central-1'
const h = new Harness('s3-credentials')
let moto = null
let home = ''
let s3env = {}

before(async () => {
  moto = await MotoS3.start(`s3-credentials-${randomHex(4)}`)
  h.cleanups.push((failed) => moto.close(failed))
  // an empty HOME: no ~/.aws/credentials profile to fall back on
  home = path.join(h.workDir, 'home')
  fs.mkdirSync(home, { recursive: true })
  s3env = { S3_ENDPOINT: '127.0.0.1', S3_PORT: String(moto.port), S3_SSL: 'false', S3_BUCKET: moto.bucket, S3_REGION: REGION }
})

after(async () => { await h.teardown() })

/** `y-redis migrate` with only `env` (no inherited AWS_* or S3_* settings). */
function migrate (env) {
  return spawnSync(assertBinary(), ['migrate'], {
    encoding: 'utf8',
    timeout: 30000,
    cwd: h.workDir,
    env: { PATH: process.env.PATH, HOME: home, ...env }
  })
}

const chain = { AWS_ACCESS_KEY_ID: 'AKIAYREDISCHAINTEST', AWS_SECRET_ACCESS_KEY: 'chain-secret-from-environment' }

test('no keys and no AWS credentials: migrate refuses, naming both ways to give them', () => {
  const r = migrate(s3env)
  assert.equal(r.status, 1, `migrate without credentials: exit ${r.status}\n${r.stderr}`)
  assert.match(r.stderr, /S3_ACCESS_KEY/)
  assert.match(r.stderr, /AWS_ACCESS_KEY_ID/)
})

test('half a key pair is a configuration error', () => {
  const r = migrate({ ...s3env, ...chain, S3_ACCESS_KEY: 'only-the-id' })
  assert.equal(r.status, 2, `exit ${r.status}: ${r.stderr}`)
  assert.match(r.stderr, /S3_SECRET_KEY: required with S3_ACCESS_KEY/)
})

test('AWS_* from the environment: the bucket is created in S3_REGION and documents persist there', h.wrap(async () => {
  const r = migrate({ ...s3env, ...chain, LOG: 'info' })
  assert.equal(r.status, 0, `migrate with AWS_* credentials: exit ${r.status}\n${r.stdout}\n${r.stderr}`)
  assert.match(r.stdout + r.stderr, new RegExp(`region ${REGION}`))
  assert.ok(!(r.stdout + r.stderr).includes(chain.AWS_SECRET_ACCESS_KEY), 'the secret is not logged')
  // moto keeps the region the creating request was signed for
  const res = await fetch(`${moto.base}/${moto.bucket}?location`, {
    headers: { authorization: `AWS4-HMAC-SHA256 Credential=x/20240101/${REGION}/s3/aws4_request, SignedHeaders=host, Signature=0` }
  })
  const body = await res.text()
  assert.equal(res.status, 200, body)
  assert.match(body, new RegExp(`>${REGION}</LocationConstraint>`))

  const env = { ...s3env, ...chain, HOME: home }
  await h.setup(0)
  const server = await h.startServer('s1', env)
  await h.startWorker('w1', env)
  const room = `creds-${randomHex(4)}`
  const c = h.client(server, room)
  await c.synced()
  c.text.insert(0, 'stored with chain credentials')
  const pieces = await waitFor(async () => {
    const p = await moto.pieces(room)
    return p.length > 0 && decodeStored(p).text === 'stored with chain credentials' ? p : null
  }, { timeout: 20000, message: () => `the worker to store ${room} in ${moto.describe()}` })
  assert.equal(pieces.length, 1)
}))
