// y-redis demo: a CodeMirror 6 editor on a shared Y.Text (y-codemirror.next
// draws the other users' cursors and selections in their colours), a list of
// who is here, and the connection status.
//
// URL options (query string; the room may also be the #hash):
//   room  document to edit (default: the #hash, else "demo")
//   user  your name (default: remembered or random)
//   ws    websocket base URL of y-redis (default: this page's host, ws:// or wss://,
//         so behind the load balancer page, token and websocket share one origin)
//   auth  base URL of the auth backend; the token comes from <auth>/auth/token?user=<name>
//         (default: this page's origin, where the load balancer forwards /auth/token)

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { EditorState } from '@codemirror/state'
import {
  EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter, drawSelection, placeholder
} from '@codemirror/view'
import { defaultKeymap } from '@codemirror/commands'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'

const query = new URLSearchParams(window.location.search)
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id))

const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#9a6324', '#800000', '#808000', '#000075']

/** A user's colour follows from the name, so it stays the same across reloads. */
function userFor (name) {
  // FNV-1a
  let h = 2166136261
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619) >>> 0
  const color = COLORS[h % COLORS.length]
  // colorLight: the same colour, translucent, for selections others see
  return { name, color, colorLight: color + '33' }
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

// Connection status: `connection` is the provider's last `status` event
// (connecting / connected / disconnected); `synced` is its `sync` event.
const status = { connection: 'connecting', synced: false, detail: '' }
function showStatus (change) {
  Object.assign(status, change)
  const el = $('status')
  el.dataset.status = status.connection
  el.dataset.synced = String(status.synced)
  const syncing = status.connection === 'connected' && !status.synced ? ' (syncing)' : ''
  el.textContent = status.connection + syncing + (status.detail ? ` (${status.detail})` : '')
}

async function fetchToken () {
  // The URL names the user but never carries a token, so it may be shown.
  const url = `${authBase}/auth/token?user=${encodeURIComponent(userName)}`
  for (let attempt = 1; ; attempt++) {
    try {
      const res = await fetch(url, { credentials: 'include' })
      if (!res.ok) throw new Error(`HTTP ${res.status}`)
      const token = (await res.text()).trim()
      if (!token) throw new Error('empty token')
      return token
    } catch (e) {
      showStatus({ detail: `no token from ${url}: ${e.message}, retrying` })
      await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 500 * attempt)))
    }
  }
}

function renderPresence (awareness) {
  const entries = []
  awareness.getStates().forEach((state, clientID) => {
    if (state && state.user && typeof state.user.name === 'string') {
      entries.push({ clientID, name: state.user.name, color: String(state.user.color || '#888') })
    }
  })
  entries.sort((a, b) => a.name.localeCompare(b.name) || a.clientID - b.clientID)
  $('presence').replaceChildren(...entries.map(({ clientID, name, color }) => {
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

  const ydoc = new Y.Doc()
  const ytext = ydoc.getText('text')
  // Created unconnected: the editor works at once, and the socket opens when
  // the token is there. disableBc: every tab talks to the server, so the demo
  // shows the backend at work rather than tabs syncing with each other locally.
  const provider = new WebsocketProvider(wsBase, encodeURIComponent(room), ydoc, { connect: false, disableBc: true })
  const awareness = provider.awareness
  awareness.setLocalStateField('user', userFor(userName))
  awareness.on('change', () => renderPresence(awareness))
  renderPresence(awareness)

  const view = new EditorView({
    parent: $('editor'),
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        // undo/redo of y-codemirror.next: undoes only this user's edits
        keymap.of([...yUndoManagerKeymap, ...defaultKeymap]),
        lineNumbers(),
        highlightActiveLineGutter(),
        highlightActiveLine(),
        drawSelection(),
        EditorView.lineWrapping,
        placeholder('Type here. Open this page in a second window to edit together.'),
        yCollab(ytext, awareness)
      ]
    })
  })

  provider.on('status', ({ status: connection }) => showStatus({ connection, synced: provider.synced, detail: '' }))
  // When a connection ends, the server tells the others that this user left,
  // stamped with the last awareness clock it saw + 1. On reconnecting,
  // y-websocket sends the local state again with an unchanged clock, which
  // the others ignore as stale, so this user would stay missing from their
  // lists and cursors until awareness renews itself (15 s). Moving the clock
  // two past the last one sent puts the reconnect ahead of that goodbye.
  provider.on('status', ({ status: connection }) => {
    const state = awareness.getLocalState()
    if (connection === 'disconnected' && state) {
      awareness.setLocalState({ ...state })
      awareness.setLocalState({ ...state })
    }
  })
  provider.on('sync', (synced) => showStatus({ synced }))
  // y-websocket stops reconnecting on close codes 4400-4499.
  provider.on('closed', async ({ code, reason }) => {
    if (code === 4401) {
      // the token expired: fetch a new one and go on
      showStatus({ connection: 'connecting', detail: 'token refused, fetching a new one' })
      provider.params.yauth = await fetchToken()
      provider.connect()
    } else {
      showStatus({ connection: 'disconnected', detail: `${code} ${reason || ''}`.trim() })
    }
  })

  showStatus({ connection: 'connecting', detail: 'fetching a token' })
  provider.params.yauth = await fetchToken()
  provider.connect()
  // Tokens expire after an hour: keep a fresh one for the next reconnect.
  setInterval(async () => { provider.params.yauth = await fetchToken() }, 20 * 60 * 1000)

  nameInput.addEventListener('change', () => {
    const name = nameInput.value.trim()
    if (!name) return
    userName = name
    try { window.localStorage.setItem('y-redis-demo-user', name) } catch {}
    awareness.setLocalStateField('user', userFor(name))
  })
  window.addEventListener('hashchange', () => window.location.reload())
  // Leaving the page says goodbye at once, so the others' presence lists drop
  // this user now rather than after awareness's 30 s timeout; a page restored
  // from the back/forward cache connects again.
  window.addEventListener('pagehide', () => provider.disconnect())
  window.addEventListener('pageshow', (event) => { if (event.persisted) provider.connect() })

  // for debugging from the console
  window.yredisDemo = { Y, ydoc, ytext, provider, awareness, view, room, wsBase, authBase }
}

main().catch((e) => {
  showStatus({ connection: 'disconnected', detail: `error: ${e.message}` })
  console.error(e)
})
