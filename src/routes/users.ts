import { type Static, Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { deleteUser, findUserById, findUsersByEmailAfter, insertUser, listUsersAfter, updateUser } from '../db/users.js'
import type { FastifyReply } from 'fastify'
import { etagOf, noneMatchHits, parseTagCondition, versionsAllowedBy } from '../http/etag.js'
import { missingOrEmpty, missingOrOlderThanSeen } from '../db/readers.js'
import { userPageJson } from '../http/user-page.js'
import { writeOnce } from '../db/writes.js'
import { sendError } from '../plugins/errors.js'
import type {} from '../plugins/events.js'
import { answerOf } from '../plugins/idempotency.js'
import { errorResponses } from '../schemas/errors.js'
import { IdempotencyKeyHeaders, IfMatchHeaders, IfNoneMatchHeaders, respondsWith } from '../schemas/headers.js'
import {
  CreateUserBody, ListUsersQuery, UpdateUserBody, UserPage, UserParams, UserSchema
} from '../schemas/users.js'

const tags = ['users']
// What Fastify sends with JSON it serializes itself.
const JSON_CONTENT_TYPE = 'application/json; charset=utf-8'
const PRECONDITION_FAILED = 'If-Match does not name the user\'s current ETag'

/** The users resource, `/api/users`. Its SQL lives in `src/db/users.ts`. */
const users: FastifyPluginAsyncTypebox = async (fastify) => {
  const db = fastify.pg.pool

  fastify.post('', {
    schema: {
      tags,
      operationId: 'createUser',
      summary: 'Create a user',
      headers: IdempotencyKeyHeaders,
      body: CreateUserBody,
      response: {
        201: respondsWith(UserSchema, 'Created', ['location', 'etag', 'idempotent-replayed']),
        ...errorResponses(400, 409, 413, 415, 422, 503)
      }
    }
  }, async (request, reply) => {
    return await fastify.idempotency.handle(request, reply, async (client) => {
      const user = await insertUser(client, request.body.name, request.body.email ?? null, fastify.outbox?.eventFor(request))
      return answerOf(reply, 201, { location: `/api/users/${user.id}`, etag: etagOf(user.version) }, user)
    })
  })

  fastify.get('', {
    schema: {
      tags,
      operationId: 'listUsers',
      summary: 'List users, a page at a time, in ascending id order; or find one by email',
      querystring: ListUsersQuery,
      response: { 200: respondsWith(UserPage, 'A page of users'), ...errorResponses(400, 503) }
    }
  }, async (request, reply) => {
    const { limit, after, email } = request.query
    // Email is unique: the page holds the one match or none, and no page
    // follows. None on a replica is confirmed on the primary.
    if (email !== undefined) {
      return { items: await fastify.readers.read((db) => findUsersByEmailAfter(db, email, after), missingOrEmpty), nextCursor: null }
    }
    // One row more than asked tells whether another page follows.
    const rows = await fastify.readers.read((db) => listUsersAfter(db, after, limit + 1), missingOrEmpty)
    // Already JSON, written for this one shape (the schema above documents it).
    return reply.type(JSON_CONTENT_TYPE).send(userPageJson(rows, limit) as unknown as Static<typeof UserPage>)
  })

  fastify.get('/:id', {
    schema: {
      tags,
      operationId: 'getUser',
      summary: 'Read a user',
      params: UserParams,
      headers: IfNoneMatchHeaders,
      response: {
        200: respondsWith(UserSchema, 'The user', ['etag']),
        304: respondsWith(Type.Null(), 'Not Modified: If-None-Match names the current ETag', ['etag']),
        ...errorResponses(400, 404, 503)
      }
    }
  }, async (request, reply) => {
    const ifNoneMatch = request.headers['if-none-match']
    const user = await fastify.readers.read((db) => findUserById(db, request.params.id), missingOrOlderThanSeen(ifNoneMatch))
    if (user === undefined) return sendError(reply, 404, userNotFound(request.params.id))
    reply.header('etag', etagOf(user.version))
    if (ifNoneMatch !== undefined && noneMatchHits(parseTagCondition(ifNoneMatch), user.version)) {
      // Nothing at all, not null: Fastify would serialize null as "null" and
      // send Content-Length: 4, and a 304 may only repeat the 200's length
      // (clients that trust it wait for 4 bytes that never come).
      return reply.code(304).send(undefined as unknown as null)
    }
    return user
  })

  fastify.patch('/:id', {
    schema: {
      tags,
      operationId: 'updateUser',
      summary: 'Change a user\'s name or email (email: null clears it)',
      params: UserParams,
      headers: IfMatchHeaders,
      body: UpdateUserBody,
      response: { 200: respondsWith(UserSchema, 'The changed user', ['etag']), ...errorResponses(400, 404, 409, 412, 413, 415, 503) }
    }
  }, async (request, reply) => {
    const ifMatch = request.headers['if-match']
    const event = fastify.outbox?.eventFor(request)
    const user = await writeOnce(db, (client) => updateUser(client, request.params.id, request.body, versionsAllowedBy(ifMatch), event))
    if (user === undefined) return sendNotChanged(reply, request.params.id, ifMatch)
    return reply.header('etag', etagOf(user.version)).send(user)
  })

  fastify.delete('/:id', {
    schema: {
      tags,
      operationId: 'deleteUser',
      summary: 'Delete a user',
      params: UserParams,
      headers: IfMatchHeaders,
      response: { 204: respondsWith(Type.Null(), 'Deleted'), ...errorResponses(400, 404, 412, 503) }
    }
  }, async (request, reply) => {
    const ifMatch = request.headers['if-match']
    const event = fastify.outbox?.eventFor(request)
    const deleted = await writeOnce(db, (client) => deleteUser(client, request.params.id, versionsAllowedBy(ifMatch), event))
    if (!deleted) return sendNotChanged(reply, request.params.id, ifMatch)
    return reply.code(204).send(null)
  })
}

function userNotFound (id: number): string {
  return `user ${id} not found`
}

/**
 * Why a conditional write touched no row: without If-Match the user is
 * missing (404); with it, a stale tag and a user that is gone both fail
 * the precondition (412, RFC 9110 13.1.1).
 */
function sendNotChanged (reply: FastifyReply, id: number, ifMatch: string | undefined): FastifyReply {
  return ifMatch === undefined ? sendError(reply, 404, userNotFound(id)) : sendError(reply, 412, PRECONDITION_FAILED)
}

export default users
