import { Ajv, type ErrorObject, type Options, type ValidateFunction } from 'ajv'
import addFormats from 'ajv-formats'
import type { FastifySchemaCompiler } from 'fastify'
import type { FastifySchemaValidationError } from 'fastify/types/schema.js'
import { patternMessages } from './schemas/patterns.js'

const shared: Options = {
  allErrors: false,
  // Unknown properties are an error, never silently dropped.
  removeAdditional: false,
  useDefaults: true,
  strict: true
}

// A JSON body must carry the types the schema names: `{"name": 5}` is a 400,
// not a user called "5". Params, query strings and headers are text on the
// wire, so only they are coerced.
const bodyAjv = addFormats.default(new Ajv({ ...shared, coerceTypes: false }), ['email', 'date-time'])
const textAjv = addFormats.default(new Ajv({ ...shared, coerceTypes: true }), ['email', 'date-time'])

export const validatorCompiler: FastifySchemaCompiler<unknown> = ({ schema, httpPart }) => {
  if (httpPart === 'body') return bodyAjv.compile(schema as object)
  const text = httpPart === 'headers' ? lowerCaseHeaderNames(schema as HeadersSchema) : schema
  return strictIntegers(text as TextSchema, textAjv.compile(text as object))
}

interface HeadersSchema { properties?: Record<string, unknown>, required?: string[] }

/**
 * A headers schema with its header names in lower case, as Node gives them
 * in request.headers. Our schemas name headers as the RFCs spell them (for
 * the OpenAPI document), and Fastify, which lower-cases them for its own
 * compiler, leaves a custom compiler's schemas as they are. Headers schemas
 * here are flat objects: their properties and required list are the names.
 */
function lowerCaseHeaderNames (schema: HeadersSchema): HeadersSchema {
  return {
    ...schema,
    ...(schema.properties === undefined
      ? {}
      : { properties: Object.fromEntries(Object.entries(schema.properties).map(([name, property]) => [name.toLowerCase(), property])) }),
    ...(schema.required === undefined ? {} : { required: schema.required.map((name) => name.toLowerCase()) })
  }
}

interface TextSchema { properties?: Record<string, { type?: unknown, maximum?: unknown }> }
type Validate = ValidateFunction & ((data: unknown) => boolean)

// Ajv's coercion reads any text Number() reads: "Infinity", "0x10", "1e3",
// " 1", and "4503599627370497.5" (rounded to an integer). An integer in a
// path or query string must be written as one: digits, maybe a minus.
const INTEGER_TEXT = /^-?[0-9]+$/

/** `validate`, refusing integer fields whose text is not plainly an integer. */
function strictIntegers (schema: TextSchema, validate: ValidateFunction): Validate {
  const integerFields = Object.entries(schema.properties ?? {}).filter(([, property]) => property.type === 'integer')
  if (integerFields.length === 0) return validate as Validate
  const checked = ((data: unknown) => {
    for (const [name, property] of integerFields) {
      const value = (data as Record<string, unknown> | null | undefined)?.[name]
      if (typeof value !== 'string') continue
      const instancePath = `/${name}`
      if (!INTEGER_TEXT.test(value)) {
        checked.errors = [{ keyword: 'type', instancePath, schemaPath: '#/type', params: { type: 'integer' }, message: 'must be integer' }]
        return false
      }
      // So many digits that the number is Infinity, which Ajv's maximum lets by.
      if (!Number.isFinite(Number(value))) {
        checked.errors = typeof property.maximum === 'number'
          ? [{ keyword: 'maximum', instancePath, schemaPath: '#/maximum', params: { comparison: '<=', limit: property.maximum }, message: `must be <= ${property.maximum}` }]
          : [{ keyword: 'type', instancePath, schemaPath: '#/type', params: { type: 'integer' }, message: 'must be integer' }]
        return false
      }
    }
    const valid = validate(data)
    checked.errors = validate.errors
    return valid
  }) as Validate
  return checked
}

/**
 * One message naming the offending field, such as
 * `body/email must be a valid email address`.
 */
export function describeValidationErrors (errors: FastifySchemaValidationError[], dataVar: string): string {
  // In a failed union (`email: string | null`) the type mismatches are noise;
  // the branch that matched the type says what is actually wrong.
  const error = errors.find((e) => e.keyword !== 'type' && e.keyword !== 'anyOf') ?? errors[0]
  if (error === undefined) return `${dataVar} is invalid`
  const { keyword, params, instancePath, message } = error as ErrorObject
  const field = `${dataVar}${instancePath}`
  switch (keyword) {
    case 'required':
      return `${field}/${String(params.missingProperty)} is required`
    case 'additionalProperties':
      return `${field}/${String(params.additionalProperty)} is not an allowed property`
    case 'format':
      return params.format === 'email'
        ? `${field} must be a valid email address`
        : `${field} must be a valid ${String(params.format)}`
    case 'pattern':
      return `${field} ${patternMessages.get(String(params.pattern)) ?? 'has an invalid format'}`
    case 'minProperties':
      return `${field} must contain at least one property`
    case 'type':
      return `${field} must be ${params.type === 'null' ? 'null' : String(params.type)}`
    default:
      return `${field} ${message ?? 'is invalid'}`
  }
}
