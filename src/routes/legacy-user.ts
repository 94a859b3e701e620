import { Readable } from 'node:stream'
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { anyUserExists, insertUser, readAllIdsAndNamesAsJson, type JsonBatch } from '../db/users.js'
import { missingOrEmpty } from '../db/readers.js'
import { sendError } from '../plugins/errors.js'
import type {} from '../plugins/events.js'
import { answerOf } from '../plugins/idempotency.js'
import { errorResponses } from '../schemas/errors.js'
import { IdempotencyKeyHeaders, respondsWith } from '../schemas/headers.js'
import { LegacyCreatedUser, LegacyCreateUserBody, LegacyUserSchema, type LegacyUser } from '../schemas/users.js'

const tags = ['legacy']

/**
 * `/api/user`: the two routes of the original Flask service, kept so its
 * clients move over without a change. Deprecated in favour of `/api/users`.
 */
const legacyUser: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('', {
    schema: {
      tags,
      deprecated: true,
      operationId: 'legacyCreateUser',
      summary: 'Create a user (seed-compatible; use POST /api/users)',
      headers: IdempotencyKeyHeaders,
      body: LegacyCreateUserBody,
      response: {
        201: respondsWith(LegacyCreatedUser, 'Created', ['location', 'idempotent-replayed']),
        ...errorResponses(400, 409, 413, 415, 422, 503)
      }
    }
  }, async (request, reply) => {
    return await fastify.idempotency.handle(request, reply, async (client) => {
      const user = await insertUser(client, request.body.name, null, fastify.outbox?.eventFor(request))
      const created = { id: user.id, name: user.name, message: `User ${user.name} created.` }
      return answerOf(reply, 201, { location: `/api/users/${user.id}` }, created)
    })
  })

  // Declared before GET, so Fastify does not derive HEAD from GET: that
  // would run the GET handler, which reads every user, and throw it all
  // away. The same status and Content-Type as GET, from one cheap query;
  // no Content-Length, which only reading every user would tell.
  fastify.head('', {
    schema: {
      // HTTP's, not an operation of its own, like every other route's HEAD.
      hide: true,
      // A HEAD answer has no body; Any lets the handler send none.
      response: { 200: Type.Any({ description: 'There are users' }), ...errorResponses(404, 503) }
    }
  }, async (_request, reply) => {
    if (!await fastify.readers.read((db) => anyUserExists(db), (exists) => !exists)) return sendError(reply, 404, 'Users not found.')
    return reply.type('application/json; charset=utf-8').send()
  })

  fastify.get('', {
    schema: {
      tags,
      deprecated: true,
      operationId: 'legacyListUsers',
      summary: 'Every user\'s id and name, by id (seed-compatible; use GET /api/users)',
      response: { 200: respondsWith(Type.Array(LegacyUserSchema), 'Every user, by id'), ...errorResponses(404, 503) }
    }
  }, async (_request, reply) => {
    // The first batch tells where the rest is read: a replica that has users
    // answers the whole list; none there, the primary is asked.
    const { batches, first } = await fastify.readers.read(async (db) => {
      const batches = readAllIdsAndNamesAsJson(db)
      return { batches, first: await batches.next() }
    }, ({ first }) => missingOrEmpty(first.done === true ? undefined : first.value))
    if (first.done === true) return sendError(reply, 404, 'Users not found.')
    // The batches are JSON text already: a string or stream sent as
    // application/json skips the serializer. A table that fits in one batch
    // is answered whole, without a stream (the generator knows it is done
    // without another query).
    reply.type('application/json; charset=utf-8')
    const second = await batches.next()
    if (second.done === true) return reply.send(`[${first.value.json}]` as unknown as LegacyUser[])
    const body = Readable.from(jsonArray([first.value, second.value], batches), { objectMode: false })
    return reply.send(body as unknown as LegacyUser[])
  })
}

/** The JSON array of every batch's items, a chunk per batch, written as batches arrive. */
async function * jsonArray (read: JsonBatch[], rest: AsyncIterator<JsonBatch>): AsyncGenerator<string> {
  let opening = '['
  try {
    for (const batch of read) {
      yield opening + batch.json
      opening = ','
    }
    for (let batch = await rest.next(); batch.done !== true; batch = await rest.next()) {
      yield ',' + batch.value.json
    }
    yield ']'
  } finally {
    await rest.return?.(undefined)
  }
}

export default legacyUser
