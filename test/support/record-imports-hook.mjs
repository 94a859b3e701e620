// The module hook of record-imports.mjs (it runs on the loader's thread).
import { appendFileSync } from 'node:fs'

let file

export function initialize (data) {
  file = data.file
}

export async function resolve (specifier, context, nextResolve) {
  const resolved = await nextResolve(specifier, context)
  if (file !== undefined) appendFileSync(file, `${resolved.url}\n`)
  return resolved
}
