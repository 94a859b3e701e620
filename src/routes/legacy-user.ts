import { Readable, finished } from 'node:stream'
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { insertUser, streamAllIdsAndNames } from '../db/users.js'
import { sendError } from '../plugins/errors.js'
import { errorResponses } from '../schemas/errors.js'
import { LegacyCreatedUser, LegacyCreateUserBody, LegacyUserSchema, type LegacyUser } from '../schemas/users.js'

const tags = ['legacy']
// Rows are sent in chunks of about this many characters, not one by one.
const CHUNK_CHARS = 16 * 1024

/**
 * `/api/user`: the two routes of the original Flask service, kept so its
 * clients move over without a change. Deprecated in favour of `/api/users`.
 */
const legacyUser: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/', {
    schema: {
      tags,
      deprecated: true,
      summary: 'Create a user (seed-compatible; use POST /api/users)',
      body: LegacyCreateUserBody,
      response: { 201: LegacyCreatedUser, ...errorResponses(400, 409, 413, 415, 503) }
    }
  }, async (request, reply) => {
    const user = await insertUser(fastify.pg.pool, request.body.name, null)
    return reply.code(201).header('location', `/api/users/${user.id}`).send({
      id: user.id,
      name: user.name,
      message: `User ${user.name} created.`
    })
  })

  fastify.get('/', {
    schema: {
      tags,
      deprecated: true,
      summary: 'Every user\'s id and name, by id (seed-compatible; use GET /api/users)',
      response: { 200: Type.Array(LegacyUserSchema), ...errorResponses(404, 503) }
    }
  }, async (request, reply) => {
    const client = await fastify.pg.connect()
    let released = false
    const release = (error?: Error | null) => {
      if (released) return
      released = true
      // A connection that failed mid-stream may hold an open portal: drop it.
      client.release(error ?? undefined)
    }

    try {
      const rows = streamAllIdsAndNames(client)[Symbol.asyncIterator]()
      const first = await rows.next()
      if (first.done === true) {
        release()
        return sendError(reply, 404, 'Users not found.')
      }
      const serialize = reply.compileSerializationSchema(LegacyUserSchema) as (user: LegacyUser) => string
      const body = Readable.from(jsonArray(first.value, rows, serialize), { objectMode: false })
      finished(body, (error) => release(error))
      // The stream writes exactly the declared array, serialized row by row.
      return reply.type('application/json; charset=utf-8').send(body as unknown as LegacyUser[])
    } catch (error) {
      release(error as Error)
      throw error
    }
  })
}

/** The JSON array of `first` and the rest, written as rows arrive. */
async function * jsonArray<T> (first: T, rest: AsyncIterator<T>, serialize: (item: T) => string): AsyncGenerator<string> {
  let chunk = '[' + serialize(first)
  try {
    for (let next = await rest.next(); next.done !== true; next = await rest.next()) {
      chunk += ',' + serialize(next.value)
      if (chunk.length >= CHUNK_CHARS) {
        yield chunk
        chunk = ''
      }
    }
    yield chunk + ']'
  } finally {
    await rest.return?.()
  }
}

export default legacyUser
