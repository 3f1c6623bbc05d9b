// YDOC_UPDATE_CALLBACK (README, "Configuration"): after persisting a changed document the
// worker PUTs multipart/form-data with one field `ydoc` (the document as an
// update v2) to `<url>/<room>`. A callback that refuses connections or never
// answers must not hold up persistence nor stop the worker.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import { Harness, Y, waitFor, sleep, randomHex, canonicalJSON, fingerprint, freePort, grepLog } from './harness.mjs'
import { useBackend, decodeStored } from './storage.mjs'

const same = (a, b) => a.text === b.text && canonicalJSON(a.map) === canonicalJSON(b.map)

/**
 * Minimal multipart/form-data parser: [{ name, filename, headers, data }].
 * @param {Buffer} body @param {string} contentType
 */
export function parseMultipart (body, contentType) {
  const m = /^multipart\/form-data\s*;(?:.*;)?\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType || '')
  if (!m) throw new Error(`not multipart/form-data with a boundary: ${JSON.stringify(contentType)}`)
  const delim = Buffer.from(`--${m[1] || m[2]}`)
  const parts = []
  let pos = body.indexOf(delim)
  if (pos < 0) throw new Error('no opening boundary')
  for (;;) {
    pos += delim.length
    if (body.subarray(pos, pos + 2).toString() === '--') return parts // closing boundary
    if (body.subarray(pos, pos + 2).toString() !== '\r\n') throw new Error(`malformed boundary line at ${pos}`)
    pos += 2
    const headEnd = body.indexOf('\r\n\r\n', pos)
    if (headEnd < 0) throw new Error('part without header end')
    const headers = {}
    for (const line of body.subarray(pos, headEnd).toString('utf8').split('\r\n')) {
      const i = line.indexOf(':')
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim()
    }
    const next = body.indexOf(Buffer.concat([Buffer.from('\r\n'), delim]), headEnd + 4)
    if (next < 0) throw new Error('part without closing boundary')
    const disp = headers['content-disposition'] || ''
    parts.push({
      name: /\bname="([^"]*)"/.exec(disp)?.[1],
      filename: /\bfilename="([^"]*)"/.exec(disp)?.[1],
      headers,
      data: body.subarray(headEnd + 4, next)
    })
    pos = next + 2
  }
}

function decodeV2 (update) {
  const d = new Y.Doc()
  Y.applyUpdateV2(d, new Uint8Array(update))
  const s = { text: d.getText('text').toString(), map: d.getMap('map').toJSON() }
  d.destroy()
  return s
}

async function editRound (clients, tag, n = 8) {
  for (let k = 0; k < n; k++) {
    const c = clients[k % clients.length]
    c.text.insert(c.text.length, `[${tag}${k}]`)
    c.map.set(`${tag}${k}`, k)
    await sleep(5)
  }
  await waitFor(() => clients.every((c) => same(c.snapshot(), clients[0].snapshot())) &&
    clients[0].text.toString().includes(`[${tag}${n - 1}]`), { message: `clients to converge after round ${tag}` })
  return clients[0].snapshot()
}

async function waitStored (backend, room, want, what) {
  await waitFor(async () => {
    const pieces = await backend.pieces(room)
    return pieces.length > 0 && same(decodeStored(pieces), want)
  }, { timeout: 15000, message: () => `${what}: storage to hold room ${room} = ${fingerprint(want)}` })
}

describe('update callback receives the persisted document', { timeout: 120000 }, () => {
  const h = new Harness('callback')
  let backend
  /** @type {Array<{ method: string, url: string, headers: http.IncomingHttpHeaders, body: Buffer, storedAtArrival: any }>} */
  const received = []
  let server
  before(async () => {
    backend = await useBackend('fs', h)
    server = http.createServer((req, res) => {
      const chunks = []
      req.on('data', (c) => chunks.push(c))
      req.on('end', async () => {
        const url = req.url
        // what storage holds when the callback arrives (it comes after persisting)
        const room = url.startsWith('/ydoc/') ? url.slice('/ydoc/'.length) : null
        let storedAtArrival = null
        try { if (room) storedAtArrival = decodeStored(await backend.pieces(room)) } catch {}
        received.push({ method: req.method, url, headers: req.headers, body: Buffer.concat(chunks), storedAtArrival })
        res.writeHead(200, { 'content-type': 'text/plain' })
        res.end('ok')
      })
    })
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    await h.setup(2)
    await h.startWorker('w1', { YDOC_UPDATE_CALLBACK: `http://127.0.0.1:${server.address().port}/ydoc` })
  })
  after(async () => {
    await h.teardown()
    server.closeAllConnections?.()
    await new Promise((resolve) => server.close(resolve))
  })

  it('PUT <url>/<room>, multipart/form-data, field ydoc = update v2 of the document', { timeout: 60000 }, h.wrap(async () => {
    const [s1, s2] = h.servers
    const rooms = [`cb-${randomHex(4)}`, `cb%20x-${randomHex(4)}`]
    for (const room of rooms) {
      const clients = [h.client(s1, room, { name: 'a' }), h.client(s2, room, { name: 'b' })]
      await Promise.all(clients.map((c) => c.synced()))
      await editRound(clients, 'x')
      const want = await editRound(clients, 'y')
      const match = await waitFor(() => received.find((r) => {
        if (r.url !== `/ydoc/${room}`) return false
        try {
          const part = parseMultipart(r.body, r.headers['content-type']).find((p) => p.name === 'ydoc')
          return part && same(decodeV2(part.data), want) ? r : false
        } catch { return false }
      }), {
        timeout: 15000,
        message: () => `a PUT /ydoc/${room} carrying ${fingerprint(want)}; received: ` +
          JSON.stringify(received.map((r) => ({ method: r.method, url: r.url, type: r.headers['content-type'], bytes: r.body.length })))
      })
      assert.equal(match.method, 'PUT')
      assert.match(match.headers['content-type'], /^multipart\/form-data;\s*boundary=/)
      const parts = parseMultipart(match.body, match.headers['content-type'])
      assert.deepEqual(parts.map((p) => p.name), ['ydoc'], 'exactly one field, named ydoc')
      // the worker persisted before calling back
      assert.ok(match.storedAtArrival && same(match.storedAtArrival, want),
        `storage held the document when the callback arrived (got ${match.storedAtArrival && fingerprint(match.storedAtArrival)})`)
      for (const c of clients) c.destroy()
    }
    // every callback was a well-formed PUT to a known room
    for (const r of received) {
      assert.equal(r.method, 'PUT', `method of ${r.url}`)
      assert.ok(rooms.some((room) => r.url === `/ydoc/${room}`), `callback path ${r.url} is /ydoc/<room>`)
      const part = parseMultipart(r.body, r.headers['content-type']).find((p) => p.name === 'ydoc')
      assert.ok(part, `callback to ${r.url} has a ydoc field`)
      decodeV2(part.data)
    }
  }))
})

/**
 * A broken callback: persistence goes on, the worker keeps running.
 * @param {string} title
 * @param {() => Promise<{ url: string, requests: () => number, close: () => Promise<void> }>} makeTarget
 */
function brokenCallbackSuite (title, tag, makeTarget, workerEnv = {}) {
  describe(title, { timeout: 120000 }, () => {
    const h = new Harness(tag)
    let backend
    let target
    before(async () => {
      backend = await useBackend('fs', h)
      target = await makeTarget()
      await h.setup(1)
      await h.startWorker('w1', { YDOC_UPDATE_CALLBACK: target.url, ...workerEnv })
    })
    after(async () => {
      await h.teardown()
      await target.close()
    })

    it('documents are still persisted, again and again, and the worker keeps running', { timeout: 60000 }, h.wrap(async (t) => {
      const [s1] = h.servers
      const room = `${tag}-${randomHex(4)}`
      const clients = [h.client(s1, room, { name: 'a' }), h.client(s1, room, { name: 'b' })]
      await Promise.all(clients.map((c) => c.synced()))
      const w = h.workers[0]
      let want = await editRound(clients, 'p')
      await waitStored(backend, room, want, 'round 1')
      // the next persists happen while the first callback has not finished (or failed)
      want = await editRound(clients, 'q')
      await waitStored(backend, room, want, 'round 2')
      await sleep(2500)
      want = await editRound(clients, 'r')
      await waitStored(backend, room, want, 'round 3, after callback timeouts')
      assert.ok(w.running, `worker still running: ${w.describe()}`)
      t.diagnostic(`callback requests seen by the target: ${target.requests()}; worker callback warnings: ${grepLog(w, /callback/i).length}`)
      if (target.seesRequests) assert.ok(target.requests() > 0, 'the worker did call the (hanging) callback')
      for (const c of clients) c.destroy()
    }))
  })
}

brokenCallbackSuite('update callback on a closed port', 'cb-closed', async () => {
  const port = await freePort() // nothing listens there
  return { url: `http://127.0.0.1:${port}/ydoc`, requests: () => 0, close: async () => {} }
})

brokenCallbackSuite('update callback that never answers', 'cb-hang', async () => {
  const sockets = new Set()
  let requests = 0
  const srv = net.createServer((sock) => {
    sockets.add(sock)
    sock.on('data', (d) => { requests += (d.toString('latin1').match(/^PUT /gm) || []).length })
    sock.on('error', () => {})
    sock.on('close', () => sockets.delete(sock))
  })
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${srv.address().port}/ydoc`,
    seesRequests: true,
    requests: () => requests,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise((resolve) => srv.close(resolve))
    }
  }
}, { YDOC_UPDATE_CALLBACK_TIMEOUT_MS: '1500' })
