// Preloaded into a spawned server (NODE_OPTIONS=--import …) to list every
// module it imports, one resolved URL a line, in RECORD_IMPORTS_TO: how a
// test proves what a configuration does not load.
import { register } from 'node:module'

register('./record-imports-hook.mjs', import.meta.url, { data: { file: process.env.RECORD_IMPORTS_TO } })
