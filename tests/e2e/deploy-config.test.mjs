// The deployment files agree with the binary: docker-compose.yml,
// .env.template, the Helm chart (deploy/helm/y-redis), deploy/nginx.conf and
// the Dockerfile. Every subcommand they run exists (`y-redis <cmd> --help`
// exits 0), every variable they give y-redis is one it reads
// (`y-redis variables`), ports match the defaults or the env given, and the
// image builds the binary CI builds. No Docker needed: the files are parsed
// (helm.test.mjs renders the chart with a real helm); Compose v2
// (tests/install-tools.sh; no engine needed) validates the compose file and
// shows what it makes of the profiles and dependencies.

import { test, before } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import YAML from 'yaml'
import { REPO_ROOT, assertBinary } from './harness.mjs'
import { findCompose } from './tools.mjs'

const read = (rel) => fs.readFileSync(path.join(REPO_ROOT, rel), 'utf8')
const CHART = 'deploy/helm/y-redis'

/** Defaults of the binary (README.md; `y-redis help` for auth-example). */
const DEFAULT_PORTS = { PORT: 3002, WORKER_PORT: 3003, AUTH_EXAMPLE_PORT: 5173 }
/** Which variable sets the listening port of each subcommand. */
const PORT_VAR = { server: 'PORT', all: 'PORT', worker: 'WORKER_PORT', 'auth-example': 'AUTH_EXAMPLE_PORT' }
/** Subcommands that run once and exit (no port, no health check). */
const ONE_SHOT = new Set(['migrate'])
/** Variables Compose itself reads from .env (not interpolated in the file). */
const COMPOSE_OWN = new Set(['COMPOSE_PROFILES'])

let bin = ''
/** @type {Set<string>} */
let variables = new Set()

function runBin (args) {
  return spawnSync(bin, args, { encoding: 'utf8', timeout: 30000, cwd: path.join(REPO_ROOT, 'tests', 'e2e') })
}

before(() => {
  bin = assertBinary()
  const r = runBin(['variables'])
  assert.equal(r.status, 0, `y-redis variables: ${r.stderr}`)
  variables = new Set(r.stdout.split('\n').map((l) => l.trim()).filter(Boolean))
  assert.ok(variables.has('PORT') && variables.has('REDIS'), `y-redis variables printed: ${r.stdout}`)
})

const checkedCommands = new Map()
/** Asserts `y-redis <cmd> --help` exits 0 (cached per command). */
function assertSubcommand (cmd, where) {
  if (!checkedCommands.has(cmd)) {
    const r = runBin([cmd, '--help'])
    checkedCommands.set(cmd, r)
  }
  const r = checkedCommands.get(cmd)
  assert.equal(r.status, 0, `${where}: \`y-redis ${cmd} --help\` exited ${r.status}: ${r.stderr}`)
}

function assertVariable (name, where) {
  assert.ok(variables.has(name), `${where}: ${name} is not a variable y-redis reads (\`y-redis variables\`)`)
}

// ---------------------------------------------------------------------------
// docker-compose.yml and .env.template

function loadCompose () {
  const doc = YAML.parseDocument(read('docker-compose.yml'), { merge: true })
  assert.deepEqual(doc.errors.map(String), [], 'docker-compose.yml is valid YAML')
  return doc.toJS({ maxAliasCount: 1000 })
}

/** Variables interpolated in a compose string: ${NAME}, ${NAME:-x}, ${NAME-x}, ${NAME:?x}. */
const interpolated = (s) => [...String(s).matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)].map((m) => m[1])

function envOf (service) {
  const env = service.environment || {}
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map((e) => { const i = e.indexOf('='); return i < 0 ? [e, ''] : [e.slice(0, i), e.slice(i + 1)] }))
  }
  return env
}

/** Services that run our image: built from the repository's Dockerfile. */
function ourServices (compose) {
  return Object.entries(compose.services).filter(([, s]) => {
    const ctx = typeof s.build === 'string' ? s.build : s.build?.context
    return ctx === '.' || ctx === './'
  })
}

const commandOf = (s) => Array.isArray(s.command) ? s.command : String(s.command ?? '').split(/\s+/).filter(Boolean)

/** Names in .env.template: `NAME=value` and commented-out `# NAME=value`. */
function templateVariables () {
  const names = new Set()
  for (const line of read('.env.template').split('\n')) {
    const m = /^#?\s*([A-Z][A-Z0-9_]*)=/.exec(line)
    if (m) names.add(m[1])
  }
  return names
}

test('docker-compose.yml: our services run real subcommands', () => {
  const compose = loadCompose()
  const ours = ourServices(compose)
  assert.deepEqual(ours.map(([n]) => n).sort(), ['auth', 'migrate', 'server', 'worker'])
  for (const [name, s] of ours) {
    const cmd = commandOf(s)
    assert.ok(cmd.length > 0, `service ${name} names its subcommand`)
    assertSubcommand(cmd[0], `docker-compose.yml service ${name}`)
  }
  assert.equal(commandOf(compose.services.server)[0], 'server')
  assert.equal(commandOf(compose.services.worker)[0], 'worker')
  assert.equal(commandOf(compose.services.auth)[0], 'auth-example')
  assert.equal(commandOf(compose.services.migrate)[0], 'migrate')
  // the check above means something: an unknown subcommand fails
  assert.notEqual(runBin(['no-such-command', '--help']).status, 0)
})

test('docker-compose.yml: every variable given to y-redis is one it reads', () => {
  const compose = loadCompose()
  for (const [name, s] of ourServices(compose)) {
    for (const [key, value] of Object.entries(envOf(s))) {
      assertVariable(key, `docker-compose.yml service ${name}`)
      // a pass-through from .env keeps its name: KEY: ${KEY...}
      const refs = interpolated(value)
      for (const ref of refs) assert.equal(ref, key, `service ${name}: ${key} is set from \${${ref}}`)
    }
  }
})

test('.env.template: documents every compose variable, and y-redis knows each one it passes on', () => {
  const compose = loadCompose()
  const raw = read('docker-compose.yml')
  const usedInCompose = new Set(interpolated(raw))
  const usedForOurImage = new Set()
  for (const [, s] of ourServices(compose)) {
    for (const value of Object.values(envOf(s))) interpolated(value).forEach((v) => usedForOurImage.add(v))
  }
  const template = templateVariables()
  for (const v of usedInCompose) assert.ok(template.has(v), `.env.template documents ${v} (used in docker-compose.yml)`)
  for (const v of template) {
    if (COMPOSE_OWN.has(v)) continue
    assert.ok(usedInCompose.has(v), `.env.template's ${v} is used by docker-compose.yml (else setting it does nothing)`)
    if (usedForOurImage.has(v)) assertVariable(v, '.env.template')
    else assert.ok(!variables.has(v) || usedForOurImage.has(v), `${v} is a y-redis variable but no y-redis service gets it`)
  }
  // every setting line has a comment right above it (or belongs to a commented block)
  const lines = read('.env.template').split('\n')
  lines.forEach((line, i) => {
    if (/^[A-Z][A-Z0-9_]*=/.test(line)) {
      let j = i - 1
      while (j >= 0 && /^[A-Z][A-Z0-9_]*=/.test(lines[j])) j--
      assert.ok(j >= 0 && lines[j].startsWith('#'), `.env.template line ${i + 1} (${line.split('=')[0]}) has a comment`)
    }
  })
  // the auth keys are what `y-redis keygen` prints
  const keys = runBin(['keygen']).stdout
  for (const k of ['AUTH_PUBLIC_KEY', 'AUTH_PRIVATE_KEY']) {
    assert.match(keys, new RegExp(`^${k}='\\{`, 'm'))
    assert.ok(template.has(k))
  }
})

test('docker-compose.yml: ports, health checks, scaling and the load balancer', () => {
  const compose = loadCompose()
  const { services } = compose
  for (const [name, s] of ourServices(compose)) {
    const sub = commandOf(s)[0]
    if (ONE_SHOT.has(sub)) continue
    const portVar = PORT_VAR[sub]
    assert.ok(portVar, `service ${name}: known port variable for ${sub}`)
    const env = envOf(s)
    const port = Number(env[portVar] ?? DEFAULT_PORTS[portVar])
    assert.ok(Number.isInteger(port) && port > 0, `service ${name}: port ${env[portVar]}`)
    assert.equal(port, DEFAULT_PORTS[portVar], `service ${name} listens on the documented port`)
    assert.deepEqual((s.expose || []).map(String), [String(port)], `service ${name} exposes ${port}`)
    assert.equal(s.ports, undefined, `service ${name} publishes no host port (the load balancer does)`)
    const hc = (s.healthcheck?.test || []).join(' ')
    assert.ok(hc.includes(`/${port}`), `service ${name}: health check uses port ${port}: ${hc}`)
    if (sub !== 'auth-example') assert.ok(hc.includes('/healthz'), `service ${name}: health check calls /healthz`)
  }
  // server: replicas, no fixed name, so --scale works
  assert.equal(services.server.deploy?.replicas, 2)
  assert.equal(services.server.container_name, undefined)
  assert.equal(envOf(services.server).HOST, '0.0.0.0')
  assert.match(String(envOf(services.server).AUTH_PERM_CALLBACK), /http:\/\/auth:5173\/auth\/perm/)
  // the other services
  assert.match(String(services.redis.image), /^redis:7/)
  assert.deepEqual(services.redis.command, ['redis-server', '--appendonly', 'yes'])
  assert.ok(services.redis.volumes?.length, 'redis keeps its data in a volume')
  assert.match(String(services.postgres.image), /^postgres:16/)
  assert.ok(services.postgres.volumes?.length && services.minio.volumes?.length)
  // storage: Postgres by default (the postgres service); S3 only when .env sets S3_ENDPOINT
  assert.equal(envOf(services.server).S3_ENDPOINT, '${S3_ENDPOINT:-}')
  assert.match(envOf(services.server).POSTGRES, /^\$\{POSTGRES:-postgres:\/\/yredis:yredis@postgres:5432\/yredis\}$/)
  for (const name of Object.keys(compose.volumes)) {
    assert.ok(Object.values(services).some((s) => (s.volumes || []).some((v) => String(v).startsWith(name + ':'))), `volume ${name} is used`)
  }
  for (const [name, s] of Object.entries(services)) {
    if (ONE_SHOT.has(commandOf(s)[0])) continue
    assert.ok(s.healthcheck?.test, `service ${name} has a health check`)
  }
  // the load balancer: one published port, the committed config
  const lb = services.lb
  assert.match(String(lb.image), /^nginx:[\d.]+-alpine$/)
  assert.equal(lb.ports.length, 1)
  assert.ok(lb.volumes.some((v) => String(v).startsWith('./deploy/nginx.conf:')))
  const published = Object.entries(services).filter(([, s]) => s.ports)
  assert.deepEqual(published.map(([n]) => n), ['lb'], 'only the load balancer publishes a port')
  // the demo is built from demo/
  assert.ok(fs.existsSync(path.join(REPO_ROOT, services.demo.build.context, 'Dockerfile')))
})

const pick = (obj, keys) => Object.fromEntries(keys.map((k) => [k, obj[k]]))

test('docker-compose.yml: MinIO only in profile s3; a one-shot migrate runs before servers and worker', () => {
  const { services } = loadCompose()
  // MinIO from quay.io (no longer published on Docker Hub), a pinned release
  assert.match(services.minio.image, /^\$\{MINIO_IMAGE:-quay\.io\/minio\/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ\}$/)
  assert.deepEqual(services.minio.profiles, ['s3'])
  // migrate: runs once (no restart), after Postgres is healthy and, with the s3 profile, MinIO
  const migrate = services.migrate
  assert.equal(migrate.restart, 'no')
  assert.deepEqual(migrate.depends_on.postgres, { condition: 'service_healthy' })
  assert.deepEqual(migrate.depends_on.minio, { condition: 'service_healthy', required: false })
  assert.deepEqual(envOf(migrate), pick(envOf(services.worker), Object.keys(envOf(migrate))),
    'migrate sees the storage settings the worker sees')
  for (const name of ['server', 'worker']) {
    const deps = services[name].depends_on
    assert.deepEqual(deps.migrate, { condition: 'service_completed_successfully' }, `${name} waits for migrate`)
    assert.deepEqual(deps.redis, { condition: 'service_healthy' })
  }
  // nothing else waits for MinIO, so the default profile starts without it
  for (const [name, s] of Object.entries(services)) {
    if (name === 'migrate') continue
    const deps = Array.isArray(s.depends_on) ? s.depends_on : Object.keys(s.depends_on || {})
    assert.ok(!deps.includes('minio'), `${name} does not depend on minio`)
  }
})

test('deploy/nginx.conf: websockets round-robin to every server replica, tokens to auth, no token in logs', () => {
  const conf = read('deploy/nginx.conf')
  const directives = conf.split('\n').filter((l) => !/^\s*#/.test(l)).join('\n')
  // Docker's DNS at http level (before any server block), where an upstream's `resolve` finds it
  const resolver = /^resolver 127\.0\.0\.11 valid=(\d+)s\b/m.exec(directives)
  assert.ok(resolver && directives.indexOf(resolver[0]) < directives.indexOf('server {'), "Docker's DNS at http level")
  assert.ok(Number(resolver[1]) <= 10, 'scaled replicas are seen within seconds')
  // one upstream group for every replica, re-resolved, in shared memory
  const upstream = /upstream (\w+) \{([^}]*)\}/.exec(directives)
  assert.ok(upstream, 'an upstream block')
  assert.match(upstream[2], /^\s*zone \w+ \d+k;/m)
  assert.match(upstream[2], /^\s*server server:3002 resolve\b[^;]*;/m)
  assert.match(directives, new RegExp(`location @\\w+ \\{[^}]*proxy_pass http://${upstream[1]};`))
  assert.match(directives, /set \$(\w+) auth:5173;[\s\S]*location = \/auth\/token[\s\S]*proxy_pass http:\/\/\$\1;/)
  assert.match(directives, /proxy_set_header Upgrade \$http_upgrade;/)
  assert.match(directives, /proxy_set_header Connection \$connection_upgrade;/)
  assert.match(directives, /listen 8080;/)
  // logs: a format without the query string, errors only from crit up
  const format = /log_format (\w+) ([^;]*);/.exec(directives)
  assert.ok(format, 'a log_format')
  assert.doesNotMatch(format[2], /\$(request|request_uri|query_string|args|arg_\w+|http_referer)\b/, 'no variable that holds the query')
  assert.match(directives, new RegExp(`access_log \\S+ ${format[1]};`))
  assert.match(directives, /error_log \S+ (crit|alert|emerg);/, 'error-level lines carry the request line')
  const compose = loadCompose()
  assert.match(String(compose.services.lb.ports[0]), /:8080$/, 'the published port maps to nginx\'s listen port')
  // `resolve` in an upstream needs nginx 1.27.3: the image must be that new
  const tag = /^nginx:(\d+)\.(\d+)(?:\.\d+)?-alpine$/.exec(compose.services.lb.image)
  assert.ok(tag && (Number(tag[1]) > 1 || Number(tag[2]) >= 28), `lb image ${compose.services.lb.image} is nginx >= 1.28`)
})

test('.env.template: every variable it gives y-redis has a default or value that parses', () => {
  // The template's settings as a y-redis environment, as is and with the
  // commented S3 block switched on. `worker` reads every setting of the
  // servers (`migrate` only the storage ones) and checks them first (a bad
  // value exits 2 naming its variable), then fails to reach the compose
  // hosts (postgres, minio) that do not exist here: exit 1, after having
  // chosen the storage the template means.
  const text = read('.env.template')
  const s3Block = text.replace(/^# ((?:S3_[A-Z_]+|MINIO_IMAGE|COMPOSE_PROFILES)=)/gm, '$1')
  assert.notEqual(s3Block, text, 'the S3 block is there, commented out')
  for (const [variant, content, storage] of [['as is', text, /postgres/], ['S3 block on', s3Block, /minio/]]) {
    const env = { PATH: process.env.PATH, LOG: 'debug' }
    for (const line of content.split('\n')) {
      const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line)
      if (m && variables.has(m[1])) env[m[1]] = m[2]
    }
    const r = spawnSync(bin, ['worker'], { encoding: 'utf8', timeout: 60000, env, cwd: path.join(REPO_ROOT, 'tests', 'e2e') })
    assert.doesNotMatch(r.stderr, /invalid configuration/, `${variant}: y-redis rejects a .env.template value: ${r.stderr}`)
    assert.equal(r.status, 1, `${variant}: y-redis worker with .env.template settings: exit ${r.status}, ${r.stderr}`)
    assert.match(r.stderr, storage, `${variant}: the storage it tried`)
  }
})

// ---------------------------------------------------------------------------
// Helm chart: helm.test.mjs renders it with a real helm and checks the
// objects. Here, without helm: its values name only variables y-redis reads.

test('helm chart: values.yaml config and secrets are variables y-redis reads', (t) => {
  const dir = path.join(REPO_ROOT, CHART)
  const chart = YAML.parse(fs.readFileSync(path.join(dir, 'Chart.yaml'), 'utf8'))
  assert.equal(chart.apiVersion, 'v2')
  assert.equal(chart.name, 'y-redis')
  assert.ok(chart.version && chart.appVersion)
  const values = YAML.parse(fs.readFileSync(path.join(dir, 'values.yaml'), 'utf8'))
  for (const part of ['config', 'secrets']) {
    for (const key of Object.keys(values[part])) {
      assertVariable(key, `${CHART}/values.yaml ${part}`)
    }
  }
  // the signing key has no place among the servers' settings
  assert.ok(!('AUTH_PRIVATE_KEY' in values.secrets) && !('AUTH_PRIVATE_KEY' in values.config))
  // URLs that may hold a password are secrets, not ConfigMap entries
  for (const key of ['REDIS', 'POSTGRES', 'S3_ACCESS_KEY', 'S3_SECRET_KEY']) {
    assert.ok(key in values.secrets && !(key in values.config), `${key} is in secrets`)
  }
})

// ---------------------------------------------------------------------------
// Dockerfile

test('Dockerfile: builds the binary CI builds and runs it as a non-root user', () => {
  const df = read('Dockerfile')
  assert.ok(df.includes('cargo build --release --locked --bin y-redis'), 'Dockerfile runs cargo build --release --locked --bin y-redis')
  assert.match(read('Cargo.toml'), /\[\[bin\]\]\s*\nname = "y-redis"/, 'Cargo.toml has the y-redis binary target')
  assert.match(read('tests/run.sh'), /cargo build --locked --bins/, 'CI builds every binary target')
  assert.match(df, /^FROM rust:1-bookworm AS builder$/m)
  assert.match(df, /^FROM debian:bookworm-slim$/m)
  assert.match(df, /^USER (?!root|0\b)\S+$/m)
  assert.match(df, /^ENTRYPOINT \["y-redis"\]$/m)
  assert.match(df, /^CMD \["server"\]$/m)
  assert.match(df, /^EXPOSE 3002$/m)
  assert.match(df, /COPY --from=builder \S+ \/usr\/local\/bin\/y-redis/)
  assertSubcommand('server', 'Dockerfile CMD')
  // everything the build needs is in the context, nothing big is
  for (const need of ['Cargo.toml', 'Cargo.lock', 'src', 'migrations']) {
    const escaped = need.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
    assert.match(df, new RegExp(`^COPY (?!--from)[^\\n]*\\b${escaped}\\b`, 'm'), `Dockerfile copies ${need}`)
  }
  const ignore = read('.dockerignore').split('\n').map((l) => l.trim())
  for (const entry of ['target', 'node_modules', '.git', 'tests/e2e/node_modules']) {
    assert.ok(ignore.includes(entry), `.dockerignore lists ${entry}`)
  }
  for (const need of ['src', 'migrations', 'Cargo.toml', 'Cargo.lock']) {
    assert.ok(!ignore.includes(need), `.dockerignore keeps ${need}`)
  }
})

test('demo: built with a committed lock file, dist not committed', () => {
  const pkg = JSON.parse(read('demo/package.json'))
  assert.ok(pkg.scripts.build, 'demo has npm run build')
  for (const dep of ['yjs', 'y-websocket']) assert.ok(pkg.dependencies[dep], `demo depends on ${dep}`)
  assert.ok(pkg.devDependencies.esbuild)
  const lock = JSON.parse(read('demo/package-lock.json'))
  assert.ok(lock.packages['node_modules/yjs'] && lock.packages['node_modules/y-websocket'] && lock.packages['node_modules/esbuild'])
  assert.match(read('demo/.gitignore'), /^dist\/?$/m)
})

// ---------------------------------------------------------------------------
// Compose v2 itself: it parses the file and .env as `docker compose up`
// would (no engine needed for `config`)

const compose = findCompose()

/** `docker compose config` of the committed file with `envFile`, as JSON. */
function composeConfig (envFile, extra = []) {
  const r = spawnSync(compose.cmd[0], [...compose.cmd.slice(1), '--project-directory', REPO_ROOT,
    '--env-file', envFile, ...extra, 'config', '--format', 'json'], { encoding: 'utf8', timeout: 60000, cwd: REPO_ROOT })
  assert.equal(r.status, 0, `${compose.cmd.join(' ')} config: ${r.stderr}`)
  return JSON.parse(r.stdout)
}

test('docker compose config: default profile is Postgres without MinIO, --profile s3 adds it', { skip: compose.missing }, () => {
  const plain = composeConfig('.env.template')
  assert.deepEqual(Object.keys(plain.services).sort(), ['auth', 'demo', 'lb', 'migrate', 'postgres', 'redis', 'server', 'worker'])
  const env = plain.services.server.environment
  assert.equal(env.S3_ENDPOINT, '', 'no S3 endpoint: y-redis uses POSTGRES')
  assert.equal(env.POSTGRES, 'postgres://yredis:yredis@postgres:5432/yredis')
  // a dependency on a service outside the active profiles would be an error
  // unless optional; compose keeps migrate's optional one and drops nothing else
  for (const [name, s] of Object.entries(plain.services)) {
    for (const [dep, how] of Object.entries(s.depends_on || {})) {
      assert.ok(plain.services[dep] || how.required === false, `${name} waits for ${dep}, which the default profile does not run`)
    }
  }
  const s3 = composeConfig('.env.template', ['--profile', 's3'])
  assert.ok(s3.services.minio, '--profile s3 runs minio')
  assert.equal(s3.services.migrate.depends_on.minio.condition, 'service_healthy')
})

test('docker compose config: the S3 block of .env.template switches the profile and the storage', { skip: compose.missing }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'y-redis-compose-'))
  try {
    const envFile = path.join(dir, '.env')
    fs.writeFileSync(envFile, read('.env.template').replace(/^# ((?:S3_[A-Z_]+|MINIO_IMAGE|COMPOSE_PROFILES)=)/gm, '$1'))
    const c = composeConfig(envFile)
    assert.ok(c.services.minio, 'COMPOSE_PROFILES=s3 in .env runs minio')
    const env = c.services.worker.environment
    assert.equal(env.S3_ENDPOINT, 'minio')
    assert.equal(env.S3_PORT, '9000')
    // MinIO's root user is y-redis's S3 key pair
    assert.equal(c.services.minio.environment.MINIO_ROOT_USER, env.S3_ACCESS_KEY)
    assert.equal(c.services.minio.environment.MINIO_ROOT_PASSWORD, env.S3_SECRET_KEY)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
