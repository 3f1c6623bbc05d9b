// localNginxConfig (nginx.mjs), which lets tests run deploy/nginx.conf on
// this machine: it may only swap Docker service names for local addresses,
// must cover both ways the replicas can be named (a resolved variable, an
// upstream block), and must refuse a config it does not understand rather
// than test something else. No nginx needed; browser.test.mjs runs the result.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { NGINX_CONF, localNginxConfig } from './nginx.mjs'

const ports = { listen: 18080, servers: [13001, 13002], auth: 15173, demo: 18000 }
const directives = (conf) => conf.split('\n').map((l) => l.replace(/(^|\s)#.*$/, '')).filter((l) => l.trim())

test('the committed deploy/nginx.conf: only the service names change', () => {
  const src = fs.readFileSync(NGINX_CONF, 'utf8')
  const local = localNginxConfig(src, ports)
  const code = directives(local).join('\n')
  assert.doesNotMatch(code, /\b(server:3002|auth:5173|demo:80)\b/)
  assert.match(code, /listen 127\.0\.0\.1:18080\b/)
  assert.match(code, /127\.0\.0\.1:13001/)
  assert.match(code, /127\.0\.0\.1:13002/)
  assert.match(code, /127\.0\.0\.1:15173/)
  assert.match(code, /127\.0\.0\.1:18000/)
  // every directive of the original is still there, in order, apart from the swapped addresses
  const generic = (lines) => lines.map((l) => l.trim()
    .replace(/\b(server:3002|auth:5173|demo:80|yredis_local_replicas|127\.0\.0\.1:\d+)\b/g, 'ADDR')
    .replace(/^listen \S+/, 'listen ADDR')
    // `resolve` re-resolves a name; the local stand-ins are addresses
    .replace(/^(server ADDR) resolve\b/, '$1'))
  const original = generic(directives(src))
  const swapped = generic(directives(local))
  let i = 0
  for (const line of swapped) if (i < original.length && line === original[i]) i++
  assert.equal(i, original.length, `directive ${JSON.stringify(original[i])} of deploy/nginx.conf is missing or changed in the local copy`)
})

test('replicas named by a variable become an upstream group of the local ports', () => {
  const local = localNginxConfig(`server {
    listen 8080;
    resolver 127.0.0.11 valid=5s;
    set $s server:3002;
    set $a auth:5173;  # the auth backend
    set $d demo:80;
    location / { proxy_pass http://$s; }
}`, ports)
  assert.match(local, /upstream yredis_local_replicas \{\s*server 127\.0\.0\.1:13001;\s*server 127\.0\.0\.1:13002;\s*\}/)
  assert.match(local, /set \$s yredis_local_replicas;/)
  assert.match(local, /set \$a 127\.0\.0\.1:15173;/)
  assert.match(local, /set \$d 127\.0\.0\.1:18000;/)
})

test('replicas in an upstream block become one server line per local port, parameters kept', () => {
  const local = localNginxConfig(`upstream yredis {
    zone yredis 64k;
    server server:3002 resolve max_fails=2;
}
server {
    listen 8080 default_server;
    location / { proxy_pass http://yredis; }
    location = /auth/token { proxy_pass http://auth:5173; }
    location /demo { proxy_pass http://demo:80/; }
}`, ports)
  assert.match(local, /server 127\.0\.0\.1:13001 max_fails=2;\n\s*server 127\.0\.0\.1:13002 max_fails=2;/)
  assert.doesNotMatch(local, /yredis_local_replicas/)
  assert.match(local, /listen 127\.0\.0\.1:18080 default_server;/)
  assert.match(local, /proxy_pass http:\/\/127\.0\.0\.1:15173;/)
  assert.match(local, /proxy_pass http:\/\/127\.0\.0\.1:18000\/;/)
})

test('a config of another shape is refused with a message saying why', () => {
  const base = 'server {\n listen 8080;\n set $s server:3002;\n set $a auth:5173;\n set $d demo:80;\n'
  const bad = [
    [base + ' location /m { proxy_pass http://metrics:9090; }\n}', /unrecognised upstream address "metrics:9090"/],
    [base + ' location /x { proxy_pass http://server; }\n}', /service name "server" without its port/],
    [base.replace(' set $a auth:5173;\n', '') + '}', /auth:5173 does not appear/],
    [base.replace('listen 8080', 'listen 80') + '}', /listen 80 \(expected "listen 8080"\)/],
    [base + ' set $m metrics:9090;\n}', /unrecognised address "metrics:9090"/],
    ['upstream u {\n server server:3002;\n server other:3002;\n}\n' + base + '}', /unrecognised upstream server "other:3002"/]
  ]
  for (const [src, message] of bad) {
    assert.throws(() => localNginxConfig(src, ports), (e) => {
      assert.match(e.message, /deploy\/nginx\.conf changed shape/)
      assert.match(e.message, message)
      return true
    }, src)
  }
})
