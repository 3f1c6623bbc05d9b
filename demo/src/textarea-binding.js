// Binds a <textarea> to a Y.Text.
//
// Local edits: the textarea's new value is compared with the Y.Text (they are
// equal between edits), and the one changed span becomes a Y.Text delete +
// insert. Remote edits: the textarea is rewritten from the Y.Text and the
// selection is moved through the change, so a remote insert before the cursor
// does not make the cursor jump back.

/** Origin of transactions made by this binding. */
const LOCAL = Symbol('textarea-binding')

const isHighSurrogate = (code) => code >= 0xd800 && code <= 0xdbff

/**
 * The single changed span between two strings: `index`, the number of UTF-16
 * code units removed from `before`, and the text inserted from `after`.
 * Never splits a surrogate pair.
 * @param {string} before
 * @param {string} after
 * @param {number} [cursorHint] where the edit most likely ended (selectionEnd),
 *   to pick the right place when the change is ambiguous ("aa" -> "aaa")
 */
export function diffText (before, after, cursorHint = after.length) {
  const maxPrefix = Math.min(before.length, after.length)
  // The common prefix may not reach past the cursor: typing "a" after the
  // first "a" of "aa" inserts at 1, not at 2.
  const grown = Math.max(0, after.length - before.length)
  const prefixLimit = Math.min(maxPrefix, Math.max(0, cursorHint - grown))
  let prefix = 0
  while (prefix < prefixLimit && before.charCodeAt(prefix) === after.charCodeAt(prefix)) prefix++
  if (prefix > 0 && isHighSurrogate(before.charCodeAt(prefix - 1))) prefix--
  let suffix = 0
  const maxSuffix = Math.min(before.length, after.length) - prefix
  while (suffix < maxSuffix &&
    before.charCodeAt(before.length - 1 - suffix) === after.charCodeAt(after.length - 1 - suffix)) suffix++
  // do not start the common suffix with the low half of a pair
  if (suffix > 0 && isHighSurrogate(before.charCodeAt(before.length - suffix - 1))) suffix--
  return {
    index: prefix,
    remove: before.length - prefix - suffix,
    insert: after.slice(prefix, after.length - suffix)
  }
}

/**
 * Moves a position through a Y.Text change delta.
 * @param {number} pos
 * @param {Array<{retain?: number, insert?: string|object, delete?: number}>} delta
 * @param {boolean} stickToEnd insertions exactly at `pos` push it forward
 */
export function transformPosition (pos, delta, stickToEnd) {
  let index = 0
  let result = pos
  for (const op of delta) {
    if (index > pos || (index === pos && !stickToEnd)) break
    if (op.retain != null) {
      index += op.retain
    } else if (op.insert != null) {
      const len = typeof op.insert === 'string' ? op.insert.length : 1
      result += len
    } else if (op.delete != null) {
      // positions inside the deleted span collapse to its start
      result -= Math.min(op.delete, pos - index)
      index += op.delete
    }
  }
  return result
}

/**
 * @param {import('yjs').Text} ytext
 * @param {HTMLTextAreaElement} textarea
 * @return {() => void} unbind
 */
export function bindTextarea (ytext, textarea) {
  textarea.value = ytext.toString()

  const onInput = () => {
    const before = ytext.toString()
    const after = textarea.value
    if (before === after) return
    const { index, remove, insert } = diffText(before, after, textarea.selectionEnd)
    ytext.doc.transact(() => {
      if (remove > 0) ytext.delete(index, remove)
      if (insert.length > 0) ytext.insert(index, insert)
    }, LOCAL)
  }

  /** @param {import('yjs').YTextEvent} event */
  const onRemote = (event) => {
    if (event.transaction.origin === LOCAL) return
    const focused = document.activeElement === textarea
    const { selectionStart, selectionEnd, selectionDirection } = textarea
    const delta = event.delta
    const collapsed = selectionStart === selectionEnd
    const start = transformPosition(selectionStart, delta, false)
    const end = collapsed ? start : transformPosition(selectionEnd, delta, true)
    const scrollTop = textarea.scrollTop
    textarea.value = ytext.toString()
    if (focused) textarea.setSelectionRange(start, end, selectionDirection)
    textarea.scrollTop = scrollTop
  }

  textarea.addEventListener('input', onInput)
  ytext.observe(onRemote)
  return () => {
    textarea.removeEventListener('input', onInput)
    ytext.unobserve(onRemote)
  }
}
