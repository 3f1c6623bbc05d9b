// y-redis demo: a shared <textarea> and a list of who is here.
//
// URL options (query string; the room may also be the #hash):
//   room  document to edit (default: the #hash, else "demo")
//   user  your name in the presence list (default: remembered or random)
//   ws    websocket base URL of y-redis (default: this page's host, ws:// or wss://)
//   auth  base URL of the auth backend; the token comes from <auth>/auth/token?user=<name>
//         (default: this page's origin, where the load balancer forwards /auth/token)

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { bindTextarea } from './textarea-binding.js'

const query = new URLSearchParams(window.location.search)
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#9a6324', '#800000', '#808000', '#000075']

function colorFor (name) {
  // FNV-1a
  let h = 2166136261
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619) >>> 0
  return COLORS[h % COLORS.length]
}

function safeDecode (s) {
  try { return decodeURIComponent(s) } catch { return s }
}

function chooseRoom () {
  const fromHash = safeDecode(window.location.hash.replace(/^#/, ''))
  const room = fromHash || query.get('room') || 'demo'
  if (!fromHash) window.history.replaceState(null, '', '#' + encodeURIComponent(room))
  return room
}

function chooseName () {
  const fromQuery = query.get('user')
  if (fromQuery) return fromQuery
  let stored = null
  try { stored = window.localStorage.getItem('y-redis-demo-user') } catch {}
  if (stored) return stored
  const name = 'guest-' + Math.random().toString(36).slice(2, 6)
  try { window.localStorage.setItem('y-redis-demo-user', name) } catch {}
  return name
}

const defaultWs = (window.location.protocol === 'https:' ? 'wss://' : 'ws://') + window.location.host
const wsBase = (query.get('ws') || defaultWs).replace(/\/+$/, '')
const authBase = (query.get('auth') || window.location.origin).replace(/\/+$/, '')
const room = chooseRoom()
let userName = chooseName()

const ydoc = new Y.Doc()
const ytext = ydoc.getText('text')

function setStatus (status, detail = '') {
  const el = $('status')
  el.textContent = detail ? `${status}: ${detail}` : status
  el.dataset.status = status
  document.body.dataset.status = status
}

async function fetchToken () {
  const url = `${authBase}/auth/token?user=${encodeURIComponent(userName)}`
  for (let attempt = 1; ; attempt++) {
    try {
      const res = await fetch(url, { credentials: 'include' })
      if (!res.ok) throw new Error(`HTTP ${res.status}`)
      const token = (await res.text()).trim()
      if (!token) throw new Error('empty token')
      return token
    } catch (e) {
      setStatus('no token', `${url}: ${e.message} (retrying)`)
      await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 500 * attempt)))
    }
  }
}

function renderPresence (awareness) {
  const list = $('presence')
  const entries = []
  awareness.getStates().forEach((state, clientID) => {
    if (state && state.user && typeof state.user.name === 'string') {
      entries.push({ clientID, name: state.user.name, color: String(state.user.color || '#888') })
    }
  })
  entries.sort((a, b) => a.name.localeCompare(b.name) || a.clientID - b.clientID)
  list.replaceChildren(...entries.map(({ clientID, name, color }) => {
    const li = document.createElement('li')
    li.dataset.clientId = String(clientID)
    li.dataset.name = name
    const dot = document.createElement('span')
    dot.className = 'dot'
    dot.style.background = color
    const label = document.createElement('span')
    label.className = 'name'
    label.textContent = name
    li.append(dot, label)
    if (clientID === awareness.clientID) {
      li.classList.add('self')
      const you = document.createElement('span')
      you.className = 'you'
      you.textContent = '(you)'
      li.append(you)
    }
    return li
  }))
  $('count').textContent = String(entries.length)
}

async function main () {
  $('room').textContent = room
  const nameInput = /** @type {HTMLInputElement} */ ($('name'))
  nameInput.value = userName
  const editor = /** @type {HTMLTextAreaElement} */ ($('editor'))
  bindTextarea(ytext, editor)

  setStatus('connecting', 'fetching a token')
  const token = await fetchToken()
  setStatus('connecting')
  // disableBc: every tab talks to the server, so the demo shows the backend
  // at work rather than tabs syncing with each other locally.
  const provider = new WebsocketProvider(wsBase, encodeURIComponent(room), ydoc, {
    params: { yauth: token },
    disableBc: true
  })
  const awareness = provider.awareness
  awareness.setLocalStateField('user', { name: userName, color: colorFor(userName) })
  awareness.on('change', () => renderPresence(awareness))
  renderPresence(awareness)

  provider.on('status', ({ status }) => setStatus(status === 'connected' && provider.synced ? 'synced' : status))
  provider.on('sync', (synced) => setStatus(synced ? 'synced' : (provider.wsconnected ? 'connected' : 'connecting')))
  provider.on('connection-close', async (event) => {
    // 4401: the token was refused (expired); 4403: permission lost.
    if (event && event.code === 4401) {
      setStatus('reconnecting', 'token refused, fetching a new one')
      provider.params.yauth = await fetchToken()
      provider.connect()
    } else if (event && event.code >= 4400 && event.code < 4500) {
      setStatus('closed', `${event.code} ${event.reason || ''}`.trim())
    }
  })
  // Tokens expire: keep a fresh one for the next reconnect.
  setInterval(async () => { provider.params.yauth = await fetchToken() }, 20 * 60 * 1000)

  nameInput.addEventListener('change', () => {
    const name = nameInput.value.trim()
    if (!name) return
    userName = name
    try { window.localStorage.setItem('y-redis-demo-user', name) } catch {}
    awareness.setLocalStateField('user', { name, color: colorFor(name) })
  })
  window.addEventListener('hashchange', () => window.location.reload())

  // for debugging from the console
  window.yredisDemo = { Y, ydoc, ytext, provider, awareness, room, wsBase, authBase }
}

main().catch((e) => {
  setStatus('error', e.message)
  console.error(e)
})
