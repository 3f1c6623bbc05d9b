// `y-redis keygen >> .env` (the quick start) must give the same two JWKs to
// the three readers of a .env file: y-redis's own (dotenvy), a shell
// (`set -a; . ./.env`, a bare-metal start script) and Docker Compose v2's
// parser (`docker compose config`, no engine needed). The keygen output goes
// through each of them for real:
//   dotenvy  `y-redis auth-example` and `y-redis server` started in a folder
//            whose .env holds only that output (no AUTH_* in their
//            environment): the server accepts a websocket with a token the
//            example backend signed, so both keys arrived intact
//   bash     the quick-start .env (.env.template + keygen output) sourced
//   compose  the same .env given to `docker compose config` with the
//            committed docker-compose.yml
// The bare JSON keygen used to print is shown to break dotenvy.

import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { Harness, REPO_ROOT, WebSocket, assertBinary, freePort, startServer, withTimeout } from './harness.mjs'
import { findCompose } from './tools.mjs'

const h = new Harness('keygen-env')
after(async () => { await h.teardown() })

const NAMES = ['AUTH_PUBLIC_KEY', 'AUTH_PRIVATE_KEY']

/** keygen's stdout and the JSON each line carries between its single quotes. */
function keygen () {
  const r = spawnSync(assertBinary(), ['keygen'], { encoding: 'utf8', timeout: 30000 })
  assert.equal(r.status, 0, `keygen: ${r.stderr}`)
  const values = {}
  for (const name of NAMES) {
    const m = new RegExp(`^${name}='([^']*)'$`, 'm').exec(r.stdout)
    assert.ok(m, `keygen prints ${name}='<json>': ${r.stdout}`)
    values[name] = m[1]
  }
  const pub = JSON.parse(values.AUTH_PUBLIC_KEY)
  const priv = JSON.parse(values.AUTH_PRIVATE_KEY)
  assert.equal(pub.kty, 'EC')
  assert.equal(pub.d, undefined)
  assert.ok(priv.d, 'the private JWK carries d')
  assert.deepEqual([pub.x, pub.y], [priv.x, priv.y], 'one key pair')
  return { stdout: r.stdout, values }
}

/** A scratch folder holding `.env` with `text`. */
function envDir (name, text) {
  const dir = path.join(h.workDir, name)
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, '.env'), text)
  return dir
}

/** Upgrade status of ws://127.0.0.1:port/room?yauth=token: 101 or the refusal's status. */
function upgradeStatus (port, room, token) {
  return withTimeout(new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/${room}?yauth=${token}`)
    ws.once('open', () => { ws.terminate(); resolve(101) })
    ws.once('unexpected-response', (_req, res) => { resolve(res.statusCode); ws.terminate() })
    ws.once('error', (e) => resolve(`error ${e.message}`))
  }), 10000, 'websocket upgrade')
}

test('dotenvy: y-redis reads both keys from a .env holding keygen output', h.wrap(async () => {
  await h.setup(0)
  const { stdout } = keygen()
  const dir = envDir('dotenvy', stdout)
  // The harness drops AUTH_* from the children's environment, so the keys
  // can only come from ./.env.
  const authPort = await freePort()
  const auth = await startServer({
    prefix: h.prefix,
    name: 'auth',
    tag: h.tag,
    workDir: dir,
    subcommand: 'auth-example',
    readyLog: /example auth backend listening/,
    env: { AUTH_EXAMPLE_PORT: String(authPort) }
  })
  h.servers.push(auth)
  const token = await (async () => {
    for (let i = 0; i < 100; i++) {
      try {
        const res = await fetch(`http://127.0.0.1:${authPort}/auth/token?user=dot`)
        if (res.ok) return (await res.text()).trim()
      } catch {}
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    throw new Error('auth-example (AUTH_PRIVATE_KEY from .env) issued no token')
  })()
  const server = await startServer({
    prefix: h.prefix,
    name: 'server',
    tag: h.tag,
    workDir: dir,
    env: { AUTH_DISABLED: 'false', AUTH_PERM_CALLBACK: `http://127.0.0.1:${authPort}/auth/perm` }
  })
  h.servers.push(server)
  assert.equal(await upgradeStatus(server.port, 'dotenv-room', token), 101,
    'the server (AUTH_PUBLIC_KEY from .env) accepts a token signed with AUTH_PRIVATE_KEY from .env')
  assert.equal(await upgradeStatus(server.port, 'dotenv-room', token.slice(0, -4) + 'AAAA'), 401, 'and checks signatures')
}))

test('dotenvy: the bare JSON keygen used to print is refused (why the quotes)', h.wrap(async () => {
  const { values } = keygen()
  const dir = envDir('bare', `AUTH_PUBLIC_KEY=${values.AUTH_PUBLIC_KEY}\n`)
  const env = { PATH: process.env.PATH, PORT: String(await freePort()), AUTH_PERM_CALLBACK: 'http://127.0.0.1:9/auth/perm' }
  const r = spawnSync(assertBinary(), ['server'], { encoding: 'utf8', timeout: 15000, cwd: dir, env })
  assert.equal(r.status, 2, `server with an unquoted JWK in .env: exit ${r.status}, ${r.stderr}`)
  assert.match(r.stderr, /AUTH_PUBLIC_KEY/)
}))

test('bash: `set -a; . ./.env` of the quick-start .env gives the same JSON', () => {
  const { stdout, values } = keygen()
  const dir = envDir('bash', fs.readFileSync(path.join(REPO_ROOT, '.env.template'), 'utf8') + stdout)
  const r = spawnSync('bash', ['-c', 'set -euo pipefail; set -a; . ./.env; printf "%s\\n%s\\n" "$AUTH_PUBLIC_KEY" "$AUTH_PRIVATE_KEY"'],
    { encoding: 'utf8', cwd: dir, env: { PATH: process.env.PATH } })
  assert.equal(r.status, 0, `bash sourcing .env: ${r.stderr}`)
  assert.deepEqual(r.stdout.split('\n').slice(0, 2), [values.AUTH_PUBLIC_KEY, values.AUTH_PRIVATE_KEY])
})

const compose = findCompose()
test('docker compose: the quick-start .env gives the same JSON to server and auth', { skip: compose.missing }, () => {
  const { stdout, values } = keygen()
  const dir = envDir('compose', fs.readFileSync(path.join(REPO_ROOT, '.env.template'), 'utf8') + stdout)
  const r = spawnSync(compose.cmd[0], [...compose.cmd.slice(1),
    '--project-directory', REPO_ROOT, '-f', path.join(REPO_ROOT, 'docker-compose.yml'),
    '--env-file', path.join(dir, '.env'), 'config', '--format', 'json'],
  { encoding: 'utf8', timeout: 60000, cwd: dir })
  assert.equal(r.status, 0, `${compose.cmd.join(' ')} config: ${r.stderr}`)
  const services = JSON.parse(r.stdout).services
  assert.equal(services.server.environment.AUTH_PUBLIC_KEY, values.AUTH_PUBLIC_KEY)
  assert.equal(services.auth.environment.AUTH_PRIVATE_KEY, values.AUTH_PRIVATE_KEY)
  // the servers need only the public key
  assert.equal(services.server.environment.AUTH_PRIVATE_KEY, undefined)
  assert.equal(services.worker.environment.AUTH_PRIVATE_KEY, undefined)
})
