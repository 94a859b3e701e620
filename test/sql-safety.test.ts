// SQL is never built from strings: every statement in src/ is constant text
// and every value goes as a parameter ($1, $2 ...). A static check over the
// TypeScript of src/, through the compiler's own parser and symbol table:
//
// 1. A template literal that contains SQL may interpolate only a constant
//    declared in the same file as a plain string (a string literal, or a
//    template literal whose own interpolations are such constants), as
//    src/db/users.ts does with USER_COLUMNS (built from API_COLUMNS).
// 2. No `+` (or `+=`, or .concat) builds SQL text.
// 3. Every `.query(` call's first argument is a string literal, a constant,
//    or an object literal whose `text` is a constant (with `values` when the
//    text has $n placeholders). A method that is itself named `query` may
//    forward its own parameter: its callers are checked in its place.
//
// The checker is proved on small sources that must be flagged and others that
// must pass, so a checker that sees nothing cannot pass for a clean tree.
import { readdir, readFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import ts from 'typescript'

const root = fileURLToPath(new URL('../', import.meta.url))
const srcDir = join(root, 'src')

/** Upper-case SQL keywords, as this code base writes its SQL; and unmistakable phrases in any case. */
const SQL_KEYWORDS = /\b(?:SELECT|INSERT|UPDATE|DELETE|MERGE|WHERE|FROM|JOIN|VALUES|RETURNING|CREATE|DROP|ALTER|TRUNCATE|GRANT|REVOKE|UNION|ORDER BY|GROUP BY|HAVING|LIMIT|OFFSET|SET|BEGIN|COMMIT|ROLLBACK|EXECUTE|PREPARE|COPY|LISTEN|NOTIFY|VACUUM)\b/
const SQL_PHRASES = /\b(?:select\b[\s\S]*\bfrom|insert\s+into|delete\s+from|update\s+\S+\s+set|(?:create|drop|alter)\s+(?:table|database|index|role|user|schema))\b/i
const PLACEHOLDER = /\$\d+/

const looksLikeSql = (text: string): boolean => SQL_KEYWORDS.test(text) || SQL_PHRASES.test(text)

interface Finding {
  file: string
  line: number
  problem: string
}

interface Analysis {
  findings: Finding[]
  /** SQL template literals with interpolations that were checked, and the constants they interpolated. */
  sqlTemplates: number
  allowedInterpolations: string[]
  queryCalls: number
}

/** Looks through `(x)`, `x as const`, `x satisfies T` and `<T>x`. */
function unwrap (node: ts.Expression): ts.Expression {
  let current = node
  while (ts.isParenthesizedExpression(current) || ts.isAsExpression(current) || ts.isSatisfiesExpression(current) || ts.isTypeAssertionExpression(current)) {
    current = current.expression
  }
  return current
}

function isPlainString (node: ts.Expression): node is ts.StringLiteral | ts.NoSubstitutionTemplateLiteral {
  return ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)
}

function templateText (node: ts.TemplateExpression): string {
  return node.head.text + node.templateSpans.map((span) => span.literal.text).join(' ')
}

/** Runs the three rules over in-memory sources (path → text). */
function analyse (files: Record<string, string>, base = '/'): Analysis {
  const sources = new Map(Object.entries(files).map(([path, text]) => [path, ts.createSourceFile(path, text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS)]))
  const host: ts.CompilerHost = {
    getSourceFile: (path) => sources.get(path),
    getDefaultLibFileName: () => 'lib.d.ts',
    writeFile: () => {},
    getCurrentDirectory: () => base,
    getCanonicalFileName: (path) => path,
    useCaseSensitiveFileNames: () => true,
    getNewLine: () => '\n',
    fileExists: (path) => sources.has(path),
    readFile: (path) => files[path]
  }
  // Symbols only: no lib, no imports followed (an imported name is never "declared in the same file").
  const program = ts.createProgram([...sources.keys()], { noLib: true, noResolve: true, types: [], target: ts.ScriptTarget.ES2022 }, host)
  const checker = program.getTypeChecker()
  const analysis: Analysis = { findings: [], sqlTemplates: 0, allowedInterpolations: [], queryCalls: 0 }

  function report (node: ts.Node, problem: string): void {
    const file = node.getSourceFile()
    const { line } = file.getLineAndCharacterOfPosition(node.getStart())
    analysis.findings.push({ file: relative(base, file.fileName), line: line + 1, problem })
  }

  /** The `const` declaration, in `file`, that `identifier` names; undefined for anything else (let, parameter, import ...). */
  function variableOf (identifier: ts.Identifier): ts.VariableDeclaration | undefined {
    const parent = identifier.parent
    const symbol = ts.isShorthandPropertyAssignment(parent) && parent.name === identifier
      ? checker.getShorthandAssignmentValueSymbol(parent)
      : checker.getSymbolAtLocation(identifier)
    const declaration = symbol?.valueDeclaration ?? symbol?.declarations?.[0]
    return declaration !== undefined && ts.isVariableDeclaration(declaration) ? declaration : undefined
  }

  function sameFileConst (identifier: ts.Identifier, file: ts.SourceFile): ts.VariableDeclaration | undefined {
    const declaration = variableOf(identifier)
    if (declaration === undefined || declaration.getSourceFile() !== file) return undefined
    return (ts.getCombinedNodeFlags(declaration) & ts.NodeFlags.Const) === 0 ? undefined : declaration
  }

  /**
   * Rule 1's constants: a same-file const whose value is a plain string, or
   * a template that interpolates only such constants (columns built from
   * columns). Its text, or undefined.
   */
  function plainConstant (expression: ts.Expression, file: ts.SourceFile, depth = 0): string | undefined {
    const node = unwrap(expression)
    if (!ts.isIdentifier(node) || depth > 4) return undefined
    const initializer = sameFileConst(node, file)?.initializer
    if (initializer === undefined) return undefined
    const value = unwrap(initializer)
    if (isPlainString(value)) return value.text
    if (!ts.isTemplateExpression(value)) return undefined
    const parts = value.templateSpans.map((span) => plainConstant(span.expression, file, depth + 1))
    return parts.every((part) => part !== undefined) ? templateText(value) + parts.join(' ') : undefined
  }

  /**
   * The text of a constant SQL expression: a plain string, a template that
   * interpolates only plain constants, a same-file const holding either, or
   * a member of a same-file const object literal holding either. Undefined
   * for anything else.
   */
  function constantText (expression: ts.Expression, file: ts.SourceFile, depth = 0): string | undefined {
    const node = unwrap(expression)
    if (depth > 4) return undefined
    if (isPlainString(node)) return node.text
    if (ts.isTemplateExpression(node)) {
      const parts = node.templateSpans.map((span) => plainConstant(span.expression, file))
      return parts.every((part) => part !== undefined) ? templateText(node) + parts.join(' ') : undefined
    }
    if (ts.isIdentifier(node)) {
      const initializer = sameFileConst(node, file)?.initializer
      return initializer === undefined ? undefined : constantText(initializer, file, depth + 1)
    }
    if (ts.isPropertyAccessExpression(node) && ts.isIdentifier(node.expression)) {
      const holder = sameFileConst(node.expression, file)?.initializer
      const object = holder === undefined ? undefined : unwrap(holder)
      if (object === undefined || !ts.isObjectLiteralExpression(object)) return undefined
      const member = object.properties.find((property): property is ts.PropertyAssignment =>
        ts.isPropertyAssignment(property) && (ts.isIdentifier(property.name) || ts.isStringLiteral(property.name)) && property.name.text === node.name.text)
      return member === undefined ? undefined : constantText(member.initializer, file, depth + 1)
    }
    return undefined
  }

  /** Rule 3 for an object literal: `text` a constant, and `values` when it has placeholders. */
  function checkQueryObject (object: ts.ObjectLiteralExpression, file: ts.SourceFile, at: ts.Node): void {
    let text: string | undefined
    let hasText = false
    let hasValues = false
    for (const property of object.properties) {
      const name = property.name !== undefined && (ts.isIdentifier(property.name) || ts.isStringLiteral(property.name)) ? property.name.text : undefined
      if (ts.isSpreadAssignment(property)) {
        report(at, '.query() object spreads another object: its text cannot be seen to be constant')
        return
      }
      if (name === 'values') hasValues = true
      if (name !== 'text') continue
      hasText = true
      if (ts.isPropertyAssignment(property)) text = constantText(property.initializer, file)
      else if (ts.isShorthandPropertyAssignment(property)) text = constantText(property.name, file)
    }
    if (!hasText) report(at, '.query() object has no `text`')
    else if (text === undefined) report(at, '.query() object\'s `text` is not a constant')
    else if (PLACEHOLDER.test(text) && !hasValues) report(at, '.query() object\'s `text` has $n placeholders but no `values`')
  }

  /** A parameter of an enclosing function that is itself named `query`: a pass-through wrapper. */
  function forwardsOwnParameter (identifier: ts.Identifier): boolean {
    const declaration = checker.getSymbolAtLocation(identifier)?.valueDeclaration
    if (declaration === undefined || !ts.isParameter(declaration)) return false
    const owner = declaration.parent
    const name = ts.isMethodDeclaration(owner) || ts.isFunctionDeclaration(owner) ? owner.name : undefined
    return name !== undefined && ts.isIdentifier(name) && name.text === 'query'
  }

  function checkQueryCall (call: ts.CallExpression, file: ts.SourceFile): void {
    analysis.queryCalls++
    const [first] = call.arguments
    if (first === undefined) {
      report(call, '.query() without arguments')
      return
    }
    if (ts.isSpreadElement(first)) {
      report(call, '.query() with spread arguments: the SQL cannot be seen to be constant')
      return
    }
    const node = unwrap(first)
    if (ts.isObjectLiteralExpression(node)) return checkQueryObject(node, file, call)
    if (ts.isIdentifier(node)) {
      if (forwardsOwnParameter(node)) return
      const initializer = sameFileConst(node, file)?.initializer
      const value = initializer === undefined ? undefined : unwrap(initializer)
      if (value !== undefined && ts.isObjectLiteralExpression(value)) return checkQueryObject(value, file, call)
    }
    if (constantText(node, file) === undefined) {
      report(call, `.query() first argument \`${first.getText().slice(0, 60)}\` is not a string literal, a constant, or {text: constant, values}`)
    }
  }

  /** Rule 2: the operands of a `+` chain, flattened. */
  function operands (node: ts.Expression): ts.Expression[] {
    const inner = unwrap(node)
    if (ts.isBinaryExpression(inner) && inner.operatorToken.kind === ts.SyntaxKind.PlusToken) return [...operands(inner.left), ...operands(inner.right)]
    return [inner]
  }

  /** Text an operand of `+` may carry: a literal, or a variable (const or not) initialised with one. */
  function looseText (expression: ts.Expression, depth = 0): string | undefined {
    const node = unwrap(expression)
    if (isPlainString(node)) return node.text
    if (ts.isTemplateExpression(node)) return templateText(node)
    if (ts.isBinaryExpression(node) && node.operatorToken.kind === ts.SyntaxKind.PlusToken) {
      return operands(node).map((operand) => looseText(operand, depth + 1) ?? '').join(' ')
    }
    if (ts.isIdentifier(node) && depth < 4) {
      const initializer = variableOf(node)?.initializer
      return initializer === undefined ? undefined : looseText(initializer, depth + 1)
    }
    return undefined
  }

  function sqlOperand (node: ts.Expression): boolean {
    const text = looseText(node)
    return text !== undefined && looksLikeSql(text)
  }

  function visit (node: ts.Node, file: ts.SourceFile): void {
    // Rule 1: interpolations into SQL templates.
    if (ts.isTemplateExpression(node) && looksLikeSql(templateText(node))) {
      analysis.sqlTemplates++
      for (const span of node.templateSpans) {
        if (plainConstant(span.expression, file) === undefined) {
          report(span.expression, `SQL template interpolates \`${span.expression.getText().slice(0, 60)}\`, which is not a constant string declared in this file`)
        } else {
          analysis.allowedInterpolations.push(span.expression.getText())
        }
      }
    }
    // Rule 2: + and += building SQL (reported once per chain), and .concat on SQL.
    if (ts.isBinaryExpression(node)) {
      const kind = node.operatorToken.kind
      let parent = node.parent
      while (ts.isParenthesizedExpression(parent)) parent = parent.parent
      const outermost = !(ts.isBinaryExpression(parent) && parent.operatorToken.kind === ts.SyntaxKind.PlusToken)
      if (kind === ts.SyntaxKind.PlusToken && outermost && operands(node).some(sqlOperand)) {
        report(node, 'SQL text built with `+`')
      }
      if (kind === ts.SyntaxKind.PlusEqualsToken && (sqlOperand(node.right) || sqlOperand(node.left))) {
        report(node, 'SQL text built with `+=`')
      }
    }
    if (ts.isCallExpression(node) && ts.isPropertyAccessExpression(node.expression)) {
      const method = node.expression.name.text
      if (method === 'concat' && (sqlOperand(node.expression.expression) || node.arguments.some(sqlOperand))) {
        report(node, 'SQL text built with .concat()')
      }
      // Rule 3.
      if (method === 'query') checkQueryCall(node, file)
    }
    ts.forEachChild(node, (child) => visit(child, file))
  }

  for (const file of sources.values()) visit(file, file)
  return analysis
}

async function sourcesUnder (dir: string): Promise<Record<string, string>> {
  const files: Record<string, string> = {}
  for (const entry of await readdir(dir, { recursive: true })) {
    const name = String(entry)
    if (name.endsWith('.ts')) files[join(dir, name)] = await readFile(join(dir, name), 'utf8')
  }
  return files
}

t.test('src/ builds no SQL from strings', async (t) => {
  const files = await sourcesUnder(srcDir)
  t.ok(Object.keys(files).length > 10, `read ${Object.keys(files).length} .ts files under src/`)
  const { findings, sqlTemplates, allowedInterpolations, queryCalls } = analyse(files, root)
  for (const { file, line, problem } of findings) t.fail(`${file}:${line}: ${problem}`)
  if (findings.length === 0) t.pass('no SQL built from strings, and every .query() gets constant SQL')
  // Not vacuous: the SQL is there and was looked at.
  t.ok(sqlTemplates >= 3, `${sqlTemplates} SQL templates with interpolations checked`)
  t.ok(allowedInterpolations.includes('USER_COLUMNS'), 'USER_COLUMNS is allowed by the rule (a same-file constant string), not by name')
  t.ok(queryCalls >= 10, `${queryCalls} .query() calls checked`)
})

// ---------------------------------------------------------------------------
// The checker itself, on sources that must be flagged and sources that must pass.

interface Case {
  name: string
  code: string
  /** Each finding expected, as `line: problem pattern`; none for code that must pass. */
  flags: Array<[number, RegExp]>
}

// The samples are TypeScript source, `${…}` and all.
/* eslint-disable no-template-curly-in-string */
const MUST_FLAG: Case[] = [
  {
    name: 'a constant template that interpolates something not constant',
    code: [
      'let table = "users"',
      'const COLUMNS = `id FROM ${table}`',
      'export const f = (db: any) => db.query(`SELECT ${COLUMNS}`)'
    ].join('\n'),
    flags: [[2, /interpolates `table`/], [3, /interpolates `COLUMNS`/], [3, /\.query\(\) first argument/]]
  },
  {
    name: 'a parameter interpolated into a query',
    code: 'export async function find (db: any, id: string) {\n  return db.query(`SELECT * FROM users WHERE id = ${id}`)\n}',
    flags: [[2, /interpolates `id`/], [2, /\.query\(\) first argument/]]
  },
  {
    name: 'concatenation',
    code: 'export function f (name: string) {\n  const sql = "SELECT * FROM users WHERE name = \'" + name + "\'"\n  return sql\n}',
    flags: [[2, /built with `\+`/]]
  },
  {
    name: 'a constant concatenated with input',
    code: 'const BASE = "SELECT id FROM users"\nexport const f = (where: string) => BASE + where',
    flags: [[2, /built with `\+`/]]
  },
  {
    name: '+= onto SQL',
    code: 'export function f (x: string) {\n  let q = "SELECT 1"\n  q += " WHERE " + x\n  return q\n}',
    flags: [[3, /built with `\+=`/], [3, /built with `\+`/]]
  },
  {
    name: '.concat onto SQL',
    code: 'export const f = (x: string) => "DELETE FROM users WHERE id = ".concat(x)',
    flags: [[1, /\.concat\(\)/]]
  },
  {
    name: 'a let, even initialised with a literal',
    code: 'let table = "users"\nexport const q = `SELECT * FROM ${table}`',
    flags: [[2, /interpolates `table`/]]
  },
  {
    name: 'a const that is not a literal',
    code: 'declare const input: string\nconst column = input.trim()\nexport const q = `SELECT ${column} FROM users`',
    flags: [[3, /interpolates `column`/]]
  },
  {
    name: 'a constant template that interpolates of its own',
    code: 'declare const id: string\nconst where = `id = ${id}`\nexport const q = `SELECT * FROM users WHERE ${where}`',
    flags: [[3, /interpolates `where`/]]
  },
  {
    name: 'a constant from another file',
    code: 'import { COLUMNS } from "./columns.js"\nexport const q = `SELECT ${COLUMNS} FROM users`',
    flags: [[2, /interpolates `COLUMNS`/]]
  },
  {
    name: 'a parameter shadowing a safe constant of the same name',
    code: 'const table = "users"\nexport function f (table: string) {\n  return `SELECT * FROM ${table}`\n}',
    flags: [[3, /interpolates `table`/]]
  },
  {
    name: 'a member expression interpolated',
    code: 'declare const request: { query: { sort: string } }\nexport const q = `SELECT * FROM users ORDER BY ${request.query.sort}`',
    flags: [[2, /interpolates `request\.query\.sort`/]]
  },
  {
    name: 'lower-case SQL',
    code: 'export const f = (id: string) => `delete from users where id = ${id}`',
    flags: [[1, /interpolates `id`/]]
  },
  {
    name: 'a query built elsewhere',
    code: 'declare function build (): string\nexport const f = (db: any) => db.query(build())',
    flags: [[2, /\.query\(\) first argument `build\(\)`/]]
  },
  {
    name: 'a query object whose text is not a constant',
    code: 'export const f = (db: any, text: string) => db.query({ text, values: [] })',
    flags: [[1, /`text` is not a constant/]]
  },
  {
    name: 'a query object with placeholders and no values',
    code: 'export const f = (db: any) => db.query({ text: "SELECT * FROM users WHERE id = $1" })',
    flags: [[1, /no `values`/]]
  },
  {
    name: 'a parameter passed on by a function not named query',
    code: 'export async function run (db: any, sql: string) {\n  return db.query(sql)\n}',
    flags: [[2, /first argument `sql`/]]
  },
  {
    name: 'a query object spread from elsewhere',
    code: 'export const f = (db: any, extra: object) => db.query({ ...extra, text: "SELECT 1" })',
    flags: [[1, /spreads/]]
  }
]

const MUST_PASS: Case[] = [
  {
    name: 'columns built from columns: a constant template of same-file constants',
    code: [
      'const BASE = `id, name`',
      'const WITH_VERSION = `${BASE}, version`',
      'export const find = (db: any, id: number) => db.query({ text: `SELECT ${WITH_VERSION} FROM users WHERE id = $1`, values: [id] })'
    ].join('\n'),
    flags: []
  },
  {
    name: 'the USER_COLUMNS pattern: constant templates interpolating a same-file plain constant',
    code: [
      'const COLUMNS = `id, name,',
      '  email`',
      'const SQL = {',
      '  find: `SELECT ${COLUMNS} FROM users WHERE id = $1`,',
      '  list: `SELECT ${COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2`',
      '} as const',
      'export const find = (db: any, id: number) => db.query({ name: "find", text: SQL.find, values: [id] })',
      'export const list = (db: any) => db.query<{ id: number }>({ text: SQL.list, values: [0, 10] })'
    ].join('\n'),
    flags: []
  },
  {
    name: 'string literals and constants',
    code: 'const LOCK = "LOCK TABLE users"\nexport async function f (client: any) {\n  await client.query("BEGIN")\n  await client.query(LOCK)\n  await client.query(`COMMIT`)\n}',
    flags: []
  },
  {
    name: 'a constant query object without placeholders',
    code: 'export function f (db: any, ms: number) {\n  const query = { text: "SELECT max(id) AS applied FROM migrations", query_timeout: ms }\n  return db.query(query)\n}',
    flags: []
  },
  {
    name: 'a wrapper named query forwarding its own parameter',
    code: 'export class Pipeline {\n  constructor (private readonly client: any) {}\n  async query (config: object) {\n    return await this.client.query(config)\n  }\n}',
    flags: []
  },
  {
    name: 'text that is not SQL',
    code: 'export const f = (name: string, id: number, json: string) => [`User ${name} created.`, `/api/users/${id}`, "," + json, "Users in PostgreSQL: create, read and delete them. " + name]',
    flags: []
  },
  {
    name: 'SQL concatenation inside SQL (the database\'s ||, not JavaScript\'s +)',
    code: 'export const SQL = "SELECT string_agg(\'{\\"id\\":\' || id || \'}\', \',\') FROM users WHERE id > $1"',
    flags: []
  }
]

/* eslint-enable no-template-curly-in-string */

t.test('the checker flags SQL built from strings, naming file and line', async (t) => {
  for (const { name, code, flags } of MUST_FLAG) {
    const { findings } = analyse({ '/case/sample.ts': code }, '/case')
    const shown = findings.map((finding) => `${finding.file}:${finding.line}: ${finding.problem}`)
    t.equal(findings.length, flags.length, `${name}: ${flags.length} finding(s)\n${shown.join('\n')}`)
    for (const [line, pattern] of flags) {
      t.ok(findings.some((finding) => finding.file === 'sample.ts' && finding.line === line && pattern.test(finding.problem)),
        `${name}: sample.ts:${line} ${String(pattern)}\n${shown.join('\n')}`)
    }
  }
})

t.test('the checker passes constant SQL and parameterised queries', async (t) => {
  for (const { name, code } of MUST_PASS) {
    const { findings } = analyse({ '/case/sample.ts': code }, '/case')
    t.same(findings.map((finding) => `${finding.file}:${finding.line}: ${finding.problem}`), [], name)
  }
})
