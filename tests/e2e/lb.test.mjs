// The committed load balancer config (deploy/nginx.conf, used by
// docker-compose.yml) in a real nginx on this machine. Docker's service names
// are replaced by 127.0.0.1 ports (server:3002 -> a y-redis server with token
// auth, auth:5173 -> y-redis auth-example, demo:80 -> a static server of
// demo/dist); everything else is the file as committed. Checks: websocket
// upgrades reach y-redis with the raw room path and the token, /auth/token
// reaches the auth backend, the permission endpoint is not public, other
// paths serve the demo.
//
// Skipped when nginx is not installed (Debian: apt-get install -y nginx).

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { spawn, spawnSync } from 'node:child_process'
import {
  Harness, REPO_ROOT, WebSocket, freePort, waitFor, withTimeout, tailFile
} from './harness.mjs'
import { buildDemo, keygen, startAuthExample, startStaticServer } from './stack.mjs'

const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => fs.existsSync(p))
const CONF = path.join(REPO_ROOT, 'deploy', 'nginx.conf')
const skip = NGINX ? false : 'nginx is not installed (apt-get install -y nginx)'

const h = new Harness('lb')
let lbPort = 0
let nginx = null
let nginxDir = ''
let server = null
let auth = null
let web = null

/** The committed config with Docker service names pointed at local ports. */
function localConfig ({ listen, server, auth, demo }) {
  const src = fs.readFileSync(CONF, 'utf8')
  const swaps = [
    [/^(\s*)listen 8080;/m, (_, lead) => `${lead}listen 127.0.0.1:${listen};`],
    [/^(\s*set \$\w+ )server:3002;/m, (_, lead) => `${lead}127.0.0.1:${server};`],
    [/^(\s*set \$\w+ )auth:5173;/m, (_, lead) => `${lead}127.0.0.1:${auth};`],
    [/^(\s*set \$\w+ )demo:80;/m, (_, lead) => `${lead}127.0.0.1:${demo};`]
  ]
  let out = src
  for (const [re, to] of swaps) {
    assert.match(out, re, `deploy/nginx.conf should contain ${re}`)
    out = out.replace(re, to)
  }
  // no other Docker service name may remain in a directive
  const directives = out.split('\n').filter((l) => !/^\s*#/.test(l)).join('\n')
  assert.doesNotMatch(directives, /\b(server:3002|auth:5173|demo:80)\b/)
  return out
}

function mainConfig (dir) {
  return `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 256; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  include ${dir}/default.conf;
}
`
}

before(async () => {
  if (skip) return
  const dist = buildDemo()
  await h.setup(0)
  const keys = keygen()
  auth = await startAuthExample({ prefix: h.prefix, privateKey: keys.AUTH_PRIVATE_KEY, tag: h.tag, workDir: h.workDir })
  h.servers.push(auth.proc)
  server = await h.startServer('s1', {
    AUTH_DISABLED: 'false',
    AUTH_PUBLIC_KEY: keys.AUTH_PUBLIC_KEY,
    AUTH_PERM_CALLBACK: `${auth.url}/auth/perm`
  })
  web = await startStaticServer(dist, auth.url)
  h.cleanups.push(() => web.close())

  nginxDir = path.join(h.workDir, 'nginx')
  fs.mkdirSync(path.join(nginxDir, 'tmp'), { recursive: true })
  lbPort = await freePort()
  const webPort = Number(new URL(web.url).port)
  fs.writeFileSync(path.join(nginxDir, 'default.conf'), localConfig({ listen: lbPort, server: server.port, auth: auth.port, demo: webPort }))
  fs.writeFileSync(path.join(nginxDir, 'nginx.conf'), mainConfig(nginxDir))
  const check = spawnSync(NGINX, ['-t', '-p', nginxDir + '/', '-c', path.join(nginxDir, 'nginx.conf')], { encoding: 'utf8' })
  assert.equal(check.status, 0, `nginx -t rejects deploy/nginx.conf:\n${check.stderr}`)
  nginx = spawn(NGINX, ['-p', nginxDir + '/', '-c', path.join(nginxDir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  nginx.stderr.on('data', (d) => { stderr += d })
  const exited = new Promise((resolve) => nginx.once('exit', resolve))
  h.cleanups.push(async () => {
    if (nginx.exitCode === null) {
      nginx.kill('SIGQUIT')
      await withTimeout(exited, 5000, 'nginx to stop').catch(() => nginx.kill('SIGKILL'))
    }
  })
  await waitFor(async () => (await fetch(`http://127.0.0.1:${lbPort}/lb-healthz`)).ok, {
    timeout: 10000,
    message: () => `nginx on ${lbPort} to answer: ${stderr}\n${tailFile(path.join(nginxDir, 'error.log'))}`
  })
})

after(async () => { await h.teardown() })

/** Open a websocket through the LB; resolves with the HTTP status of a refusal, or the open socket. */
function upgrade (pathAndQuery) {
  return withTimeout(new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${lbPort}${pathAndQuery}`)
    ws.binaryType = 'nodebuffer'
    ws.once('open', () => resolve({ ws }))
    ws.once('unexpected-response', (_req, res) => { resolve({ status: res.statusCode }); ws.terminate() })
    ws.once('error', (e) => resolve({ error: e }))
  }), 10000, `websocket upgrade of ${pathAndQuery} through nginx`)
}

test('nginx.conf: plain requests get the demo, /auth/token the auth backend', { skip }, h.wrap(async () => {
  const index = await fetch(`http://127.0.0.1:${lbPort}/`)
  assert.equal(index.status, 200)
  assert.match(await index.text(), /y-redis demo/)
  const app = await fetch(`http://127.0.0.1:${lbPort}/app.js`)
  assert.equal(app.status, 200)

  const tok = await fetch(`http://127.0.0.1:${lbPort}/auth/token?user=carol`)
  assert.equal(tok.status, 200)
  const jwt = (await tok.text()).trim()
  const parts = jwt.split('.')
  assert.equal(parts.length, 3, `a JWT: ${jwt}`)
  assert.equal(JSON.parse(Buffer.from(parts[1], 'base64url').toString()).yuserid, 'carol', 'the query string reaches the auth backend')

  // the permission endpoint stays internal: the LB serves the demo's 404 there
  const perm = await fetch(`http://127.0.0.1:${lbPort}/auth/perm/room/carol`)
  assert.notEqual(perm.status, 200)
  // so do the server's own endpoints
  const metrics = await fetch(`http://127.0.0.1:${lbPort}/metrics`)
  assert.notEqual(metrics.status, 200)
}))

test('nginx.conf: websocket upgrades reach y-redis with the raw room and the token', { skip }, h.wrap(async () => {
  // no token: y-redis refuses the upgrade and nginx passes the status on
  const refused = await upgrade('/lb-room')
  assert.equal(refused.status, 401, `upgrade without a token: ${JSON.stringify(refused)}`)

  const jwt = (await (await fetch(`http://127.0.0.1:${lbPort}/auth/token?user=dave`)).text()).trim()
  const room = 'lb%20room'
  const viaLb = h.client({ url: `ws://127.0.0.1:${lbPort}`, describe: () => `lb :${lbPort}` }, room, { params: { yauth: jwt } })
  const direct = h.client(server, room, { params: { yauth: jwt } })
  await viaLb.synced()
  await direct.synced()
  viaLb.text.insert(0, 'through the load balancer')
  await waitFor(() => direct.text.toString() === 'through the load balancer', { message: 'text typed via nginx to reach a direct client' })
  direct.text.insert(0, '> ')
  await waitFor(() => viaLb.text.toString() === '> through the load balancer', { message: 'text typed directly to reach the client behind nginx' })

  // the path segment arrived undecoded: room "lb%20room" -> key ...:lb%2520room:index
  const keys = await h.redis.keys(`${h.prefix}:room:*`)
  assert.deepEqual(keys, [h.roomKey(room)], `room keys: ${keys}`)
  assert.ok(h.roomKey(room).endsWith(':lb%2520room:index'))
}))
