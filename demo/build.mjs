// Builds the demo into dist/: app.js (src/main.js bundled with yjs,
// y-websocket, CodeMirror 6 and y-codemirror.next), index.html and style.css.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const here = path.dirname(fileURLToPath(import.meta.url))
const dist = path.join(here, 'dist')

fs.rmSync(dist, { recursive: true, force: true })
fs.mkdirSync(dist, { recursive: true })

await esbuild.build({
  entryPoints: [path.join(here, 'src', 'main.js')],
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['es2020'],
  minify: true,
  sourcemap: true,
  outfile: path.join(dist, 'app.js'),
  logLevel: 'warning'
})
for (const f of ['index.html', 'style.css']) fs.copyFileSync(path.join(here, f), path.join(dist, f))
console.log(`demo built into ${path.relative(process.cwd(), dist) || '.'}`)
