// The committed load balancer config (deploy/nginx.conf) in a real nginx on
// this machine. The only place that knows the config's shape: localNginxConfig
// swaps Docker's service names for local addresses and changes nothing else,
// so a test through it tests the file as committed. When the config changes
// shape (a new upstream, another way of naming the servers), it throws a
// message saying what it did not recognise instead of testing something else.
//
// Needs nginx (Debian: apt-get install -y nginx); NGINX_BIN overrides the path.

import fs from 'node:fs'
import path from 'node:path'
import { spawn, spawnSync } from 'node:child_process'
import { REPO_ROOT, freePort, tailFile, waitFor, withTimeout } from './harness.mjs'

export const NGINX_CONF = path.join(REPO_ROOT, 'deploy', 'nginx.conf')
export const NGINX_BIN = process.env.NGINX_BIN ||
  ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => fs.existsSync(p)) || null

/** Docker service names in deploy/nginx.conf (docker-compose.yml's services and ports). */
export const SERVICE_NAMES = Object.freeze({ server: 'server:3002', auth: 'auth:5173', demo: 'demo:80' })
const PUBLIC_PORT = 8080
/** Name of the upstream group that stands for the `server` replicas here. */
const LOCAL_REPLICAS = 'yredis_local_replicas'

const stripComment = (line) => line.replace(/(^|\s)#.*$/, '')
const configError = (msg) => new Error(`deploy/nginx.conf changed shape: ${msg}\n` +
  'Teach localNginxConfig (tests/e2e/nginx.mjs) the new shape; it may only swap Docker service names for local addresses.')

/**
 * The committed config with Docker's service names pointed at local ports.
 *
 * `server:3002` is one name for every replica: Docker's DNS answers with one
 * address per replica and nginx takes them round-robin. Here the replicas are
 * local ports, which one name cannot resolve to, so the name becomes an
 * upstream group of those ports (nginx looks a proxy_pass host up among its
 * upstream groups before it asks a resolver); inside an `upstream` block a
 * `server server:3002 ...;` line becomes one line per port.
 *
 * @param {string} src the text of deploy/nginx.conf
 * @param {{ listen: number, servers: number[], auth: number, demo: number }} ports
 * @return {string} the config to include in nginx's http block
 */
export function localNginxConfig (src, { listen, servers, auth, demo }) {
  if (!servers.length) throw new Error('localNginxConfig: no server ports')
  const found = { listen: 0, server: 0, auth: 0, demo: 0 }
  let inUpstream = false
  let usesGroup = false
  const out = []
  for (const line of src.split('\n')) {
    const code = stripComment(line)
    if (!code.trim()) { out.push(line); continue }
    if (/^\s*upstream\s+\S+\s*\{/.test(code)) inUpstream = true
    else if (inUpstream && /^\s*\}/.test(code)) inUpstream = false

    let m = /^(\s*)listen\s+(\S+)([^;]*);\s*$/.exec(code)
    if (m) {
      if (m[2] !== String(PUBLIC_PORT)) throw configError(`listen ${m[2]} (expected "listen ${PUBLIC_PORT}")`)
      out.push(`${m[1]}listen 127.0.0.1:${listen}${m[3]};`)
      found.listen++
      continue
    }
    m = new RegExp(`^(\\s*)server\\s+${SERVICE_NAMES.server}(\\s[^;]*)?;\\s*$`).exec(code)
    if (m && inUpstream) {
      // `resolve` asks nginx to re-resolve a name; the local ports are addresses
      const params = (m[2] || '').split(/\s+/).filter((p) => p && p !== 'resolve').join(' ')
      for (const port of servers) out.push(`${m[1]}server 127.0.0.1:${port}${params ? ' ' + params : ''};`)
      found.server++
      continue
    }
    let swapped = line
    const swap = (key, to) => {
      const re = new RegExp(`(?<![\\w.-])${SERVICE_NAMES[key]}(?!\\w)`, 'g')
      const n = (code.match(re) || []).length
      if (n) { swapped = swapped.replace(re, to); found[key] += n }
      return n
    }
    if (swap('server', LOCAL_REPLICAS)) usesGroup = true
    swap('auth', `127.0.0.1:${auth}`)
    swap('demo', `127.0.0.1:${demo}`)
    out.push(swapped)
  }
  for (const [key, n] of Object.entries(found)) {
    if (!n) {
      throw configError(key === 'listen'
        ? `no "listen ${PUBLIC_PORT};" directive`
        : `${SERVICE_NAMES[key]} does not appear in any directive`)
    }
  }
  let config = out.join('\n')
  if (usesGroup) {
    config = `# test stand-in for the Docker name ${SERVICE_NAMES.server}: one server per local replica\n` +
      `upstream ${LOCAL_REPLICAS} {\n${servers.map((p) => `    server 127.0.0.1:${p};\n`).join('')}}\n\n${config}`
  }
  // Every address nginx may connect to must now be local: an unknown name
  // would make nginx ask Docker's resolver here and fail at request time.
  const statements = config.split('\n').map(stripComment).join('\n')
    .split(/[;{}]/).map((st) => st.trim().split(/\s+/)).filter((w) => w[0])
  const local = (addr) => /^127\.0\.0\.1:\d+$/.test(addr)
  const bareNames = Object.values(SERVICE_NAMES).map((n) => n.split(':')[0])
  for (const [word, ...args] of statements) {
    const text = [word, ...args].join(' ')
    let addr = null
    if (/^(proxy|grpc|fastcgi|uwsgi|scgi)_pass$/.test(word)) {
      const host = args[0].replace(/^\w+:\/\//, '').split('/')[0]
      // a variable is checked where it is set; a bare word names an upstream group
      if (host.startsWith('$') || (/^[\w-]+$/.test(host) && !bareNames.includes(host))) continue
      addr = host
    } else if (word === 'set' && /^[\w.-]+(:\d+)?$/.test(args[1] || '') && /[.:]/.test(args[1])) {
      addr = args[1]
    } else if (word === 'server' && args.length) {
      addr = args[0]
    } else {
      continue
    }
    if (bareNames.includes(addr)) throw configError(`service name "${addr}" without its port in: ${text}`)
    if (!local(addr) && !addr.startsWith('unix:')) {
      throw configError(`unrecognised ${word === 'server' ? 'upstream server' : word === 'set' ? 'address' : 'upstream address'} "${addr}" in: ${text}`)
    }
  }
  return config
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

/**
 * Start nginx with the committed config (as docker-compose.yml mounts it:
 * conf.d/default.conf inside the http block) in front of local processes.
 * One worker process, so round-robin is one sequence over all connections.
 * @param {{ dir: string, servers: number[], auth: number, demo: number }} opts
 * @return {Promise<{ port: number, url: string, dir: string, stop: () => Promise<void>, logs: () => string }>}
 */
export async function startNginx ({ dir, servers, auth, demo }) {
  if (!NGINX_BIN) throw new Error('nginx is not installed (Debian: apt-get install -y nginx, or set NGINX_BIN)')
  fs.mkdirSync(path.join(dir, 'tmp'), { recursive: true })
  const port = await freePort()
  const site = localNginxConfig(fs.readFileSync(NGINX_CONF, 'utf8'), { listen: port, servers, auth, demo })
  fs.writeFileSync(path.join(dir, 'default.conf'), site)
  fs.writeFileSync(path.join(dir, 'nginx.conf'), mainConfig(dir))
  const args = ['-p', dir + '/', '-c', path.join(dir, 'nginx.conf')]
  // The config logs to /dev/stdout, which nginx opens by path: give it a
  // file it can open (a pipe would be a socket here, and refused).
  const check = spawnSync(NGINX_BIN, ['-t', ...args], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] })
  if (check.status !== 0) throw new Error(`nginx -t rejects deploy/nginx.conf (local copy ${dir}/default.conf):\n${check.stderr}`)
  const proc = spawn(NGINX_BIN, [...args, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  proc.stderr.on('data', (d) => { stderr += d })
  const exited = new Promise((resolve) => proc.once('exit', resolve))
  const logs = () => `nginx stderr: ${stderr}\n${dir}/error.log:\n${tailFile(path.join(dir, 'error.log'))}`
  const stop = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return
    proc.kill('SIGQUIT')
    await withTimeout(exited, 5000, 'nginx to stop').catch(() => proc.kill('SIGKILL'))
  }
  const url = `http://127.0.0.1:${port}`
  try {
    await waitFor(async () => (await fetch(`${url}/lb-healthz`)).ok, {
      timeout: 10000,
      message: () => `nginx on ${port} to answer /lb-healthz\n${logs()}`
    })
  } catch (e) {
    await stop()
    throw e
  }
  return { port, url, dir, stop, logs }
}
