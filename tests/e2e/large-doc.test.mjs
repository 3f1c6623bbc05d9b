// e. A ~2 MB Y.Text written in chunks (frames larger than 64 KiB) reaches a
//    client on the other server, live and as a late joiner; edits that build
//    on a large update as soon as it arrives pass (the servers check large
//    updates off their socket threads, in order).
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { Harness, waitFor, randomHex, pseudoText, sleep } from './harness.mjs'

const h = new Harness('large')
const room = `large-${randomHex(4)}`
const TOTAL = 2 * 1024 * 1024
const CHUNK = 128 * 1024

describe('large document', { timeout: 120000 }, () => {
  before(async () => { await h.setup(2) })
  after(async () => { await h.teardown() })

  it('a 2 MB Y.Text reaches clients on the other server', { timeout: 60000 }, h.wrap(async () => {
    const [s1, s2] = h.servers
    const writer = h.client(s1, room, { name: 'writer' })
    const watcher = h.client(s2, room, { name: 'watcher' })
    await Promise.all([writer.synced(), watcher.synced()])
    const content = pseudoText(TOTAL, 12345)
    const t0 = Date.now()
    for (let off = 0; off < TOTAL; off += CHUNK) {
      writer.text.insert(writer.text.length, content.slice(off, off + CHUNK))
      await sleep(10)
    }
    assert.equal(writer.text.length, TOTAL)
    const progress = (c) => () => `${c.name} has ${c.text.length}/${TOTAL} chars after ${Date.now() - t0} ms; ` +
      `closeEvents=${JSON.stringify(c.closeEvents)} writer closeEvents=${JSON.stringify(writer.closeEvents)}`

    await waitFor(() => watcher.text.length === TOTAL, { timeout: 40000, interval: 100, message: progress(watcher) })
    assert.ok(watcher.text.toString() === content, 'watcher content differs from what was written')

    const late = h.client(s2, room, { name: 'late' })
    await late.synced(40000)
    await waitFor(() => late.text.length === TOTAL, { timeout: 10000, interval: 100, message: progress(late) })
    assert.ok(late.text.toString() === content, 'late joiner content differs from what was written')
    assert.equal(writer.closeEvents.length, 0, `writer was disconnected: ${JSON.stringify(writer.closeEvents)}`)
  }))

  it('edits that build on a large update as soon as it arrives pass while the servers still check it', { timeout: 60000 }, h.wrap(async (t) => {
    const [s1, s2] = h.servers
    const name = `${room}-build-on`
    const writer = h.client(s1, name, { name: 'writer' })
    const editor = h.client(s2, name, { name: 'editor' })
    await Promise.all([writer.synced(), editor.synced()])
    // Each round: one transaction of 4,000 separate insertions (an update of
    // about 100 KB that takes a while to check), and the editor's edit
    // inside it the moment it arrives, judged against a view that may not
    // have taken the large update yet.
    const rounds = 5
    const waits = []
    for (let r = 0; r < rounds; r++) {
      const base = writer.text.length
      writer.doc.transact(() => {
        for (let i = 0; i < 4000; i++) writer.text.insert(base + 2 * i, `${r}${i % 10}`.slice(0, 1))
      })
      const length = writer.text.length
      await waitFor(() => editor.text.length >= length, { timeout: 20000, interval: 1, message: () => `editor to get round ${r}` })
      const mark = `<${r}>`
      editor.text.insert(base + 1, mark)
      const t0 = performance.now()
      await waitFor(() => writer.text.toString().includes(mark), { timeout: 8000, interval: 5, message: () => `the editor's edit of round ${r} to reach the writer; editor closeEvents=${JSON.stringify(editor.closeEvents)}` })
      waits.push(performance.now() - t0)
    }
    t.diagnostic(`edits inside ~100 KB updates reached the other server's client after ${waits.map((w) => w.toFixed(0)).join(', ')} ms`)
    assert.equal(editor.closeEvents.length, 0, `editor was disconnected: ${JSON.stringify(editor.closeEvents)}`)
    assert.deepEqual(editor.snapshot(), writer.snapshot())
  }))
})
