// Where node's time went, from a `node --cpu-prof` profile: self time by
// category (garbage collection, socket writes, node-postgres, Fastify,
// this service's code…) and the functions that took most, as shares of
// the busy (not idle) time. BENCHMARKS.md's profile table is made of these.
//
//   node bench/profile-summary.js <file.cpuprofile> [functions to list, default 25]
import { readFileSync } from 'node:fs'

const [file, listed = '25'] = process.argv.slice(2)
if (file === undefined) {
  console.error('usage: node bench/profile-summary.js <file.cpuprofile> [functions to list]')
  process.exit(2)
}
const profile = JSON.parse(readFileSync(file, 'utf8'))
const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]))

/** The category a function's self time counts under. */
function categoryOf ({ functionName, url }) {
  if (functionName === '(idle)') return 'idle'
  if (functionName === '(garbage collector)') return 'garbage collection'
  if (functionName === 'writev' || functionName === 'writeUtf8String' || functionName === 'writeBuffer') return 'socket writes'
  if (functionName === 'utf8Slice' || (functionName === 'slice' && url === 'node:buffer')) return 'UTF-8 decoding'
  const folder = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1]
  if (folder === 'pg' || folder === 'pg-protocol' || folder === 'pg-pool' || folder === 'pg-types') return 'node-postgres'
  if (folder === 'fastify' || folder === 'find-my-way' || folder === 'avvio' || folder === 'light-my-request') return 'Fastify'
  if (folder !== undefined) return folder
  if (url.includes('/dist/')) return 'the service'
  return url.startsWith('node:') ? 'node itself' : functionName
}

const selfTime = new Map()
profile.samples.forEach((id, index) => selfTime.set(id, (selfTime.get(id) ?? 0) + (profile.timeDeltas[index] ?? 0)))
const byCategory = new Map()
const byFunction = new Map()
let busy = 0
for (const [id, time] of selfTime) {
  const frame = frames.get(id)
  const category = categoryOf(frame)
  if (category === 'idle') continue
  busy += time
  byCategory.set(category, (byCategory.get(category) ?? 0) + time)
  const name = `${frame.functionName || '(anonymous)'} ${frame.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/dist\//, 'dist/')}:${frame.lineNumber + 1}`
  byFunction.set(name, (byFunction.get(name) ?? 0) + time)
}
const share = (time) => `${(100 * time / busy).toFixed(1).padStart(5)}%`
const largest = (map, count) => [...map].sort((a, b) => b[1] - a[1]).slice(0, count)
console.log(`${file}: ${(busy / 1e6).toFixed(2)} s busy`)
console.log('\nby category')
for (const [category, time] of largest(byCategory, 20)) console.log(`${share(time)}  ${category}`)
console.log('\nby function')
for (const [name, time] of largest(byFunction, Number(listed))) console.log(`${share(time)}  ${name}`)
