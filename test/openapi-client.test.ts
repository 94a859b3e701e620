// A client generated from /docs/json (openapi-typescript, used through
// openapi-fetch) must compile when it sends headers as RFC 9110 and every
// HTTP library's documentation write them: If-Match, not if-match. A
// parameter's name in the document is the property name the generated types
// accept, and TypeScript refuses any other spelling (TS2353).
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import openapiTS, { astToString } from 'openapi-typescript'
import t from 'tap'
import ts from 'typescript'
import { buildTestApp } from './helper.js'

/** Where the generated files pretend to be, so that imports find the project's node_modules. */
const folder = join(dirname(fileURLToPath(import.meta.url)), 'generated-client')

const CLIENT = `import createClient from 'openapi-fetch'
import type { paths } from './schema.js'

const client = createClient<paths>({ baseUrl: 'http://localhost:3000' })

export async function createOnce (key: string, name: string): Promise<number | undefined> {
  const { data } = await client.POST('/api/users', { params: { header: { 'Idempotency-Key': key } }, body: { name } })
  return data?.id
}

export async function createOnceTheOldWay (key: string, name: string): Promise<number | undefined> {
  const { data } = await client.POST('/api/user', { params: { header: { 'Idempotency-Key': key } }, body: { name } })
  return data?.id
}

export async function readIfChanged (id: number, etag: string): Promise<string | undefined> {
  const { data, response } = await client.GET('/api/users/{id}', { params: { path: { id }, header: { 'If-None-Match': etag } } })
  return response.status === 304 ? undefined : data?.name
}

export async function renameIfUnchanged (id: number, etag: string, name: string): Promise<string | undefined> {
  const { data, error } = await client.PATCH('/api/users/{id}', { params: { path: { id }, header: { 'If-Match': etag } }, body: { name } })
  return error === undefined ? data?.name : error.message
}

export async function deleteIfUnchanged (id: number, etag: string): Promise<boolean> {
  const { response } = await client.DELETE('/api/users/{id}', { params: { path: { id }, header: { 'If-Match': etag } } })
  return response.status === 204
}
`

/** The compiler's complaints about `files` (name to text), each as "file(line,column): TScode message". */
function typeCheck (files: Record<string, string>): string[] {
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: true,
    noEmit: true,
    types: []
  }
  const virtual = new Map(Object.entries(files).map(([name, text]) => [join(folder, name), text]))
  const host = ts.createCompilerHost(options)
  const getSourceFile = host.getSourceFile.bind(host)
  host.getSourceFile = (fileName, language, ...rest) => {
    const text = virtual.get(fileName)
    return text === undefined ? getSourceFile(fileName, language, ...rest) : ts.createSourceFile(fileName, text, language)
  }
  host.fileExists = (fileName) => virtual.has(fileName) || ts.sys.fileExists(fileName)
  host.readFile = (fileName) => virtual.get(fileName) ?? ts.sys.readFile(fileName)
  host.directoryExists = (name) => name === folder || ts.sys.directoryExists(name)
  const program = ts.createProgram([...virtual.keys()], options, host)
  return ts.getPreEmitDiagnostics(program).map((diagnostic) => {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')
    if (diagnostic.file === undefined || diagnostic.start === undefined) return `TS${diagnostic.code} ${message}`
    const { line, character } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
    return `${diagnostic.file.fileName.slice(folder.length + 1)}(${line + 1},${character + 1}): TS${diagnostic.code} ${message}`
  })
}

t.test('a client generated from /docs/json sends If-Match, If-None-Match and Idempotency-Key as the RFCs spell them', async (t) => {
  const { app } = await buildTestApp(t)
  const document = (await app.inject({ url: '/docs/json' })).json()
  const schema = astToString(await openapiTS(document))
  t.match(schema, /export interface paths/, 'openapi-typescript generated the types')

  // And, to show the check can fail, the same client spelling If-Match in lower case.
  const misspelt = CLIENT.replaceAll("'If-Match'", "'if-match'")
  const diagnostics = typeCheck({ 'schema.ts': schema, 'client.ts': CLIENT, 'misspelt-client.ts': misspelt })
  t.same(diagnostics.filter((diagnostic) => !diagnostic.startsWith('misspelt-client.ts')), [], 'the client compiles with no diagnostic')
  t.match(diagnostics.filter((diagnostic) => diagnostic.startsWith('misspelt-client.ts')), [
    /^misspelt-client\.ts\(\d+,\d+\): TS2353 .*'if-match'/,
    /^misspelt-client\.ts\(\d+,\d+\): TS2353 .*'if-match'/
  ], 'the one spelling it otherwise does not: TS2353 on PATCH and DELETE')
})
