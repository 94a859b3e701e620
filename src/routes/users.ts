import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { deleteUser, findUserById, insertUser, listUsersAfter, updateUser } from '../db/users.js'
import { sendError } from '../plugins/errors.js'
import { errorResponses } from '../schemas/errors.js'
import {
  CreateUserBody, ListUsersQuery, UpdateUserBody, UserPage, UserParams, UserSchema
} from '../schemas/users.js'
import { Type } from '@sinclair/typebox'

const tags = ['users']

/** The users resource, `/api/users`. Its SQL lives in `src/db/users.ts`. */
const users: FastifyPluginAsyncTypebox = async (fastify) => {
  const db = fastify.pg.pool

  fastify.post('/', {
    schema: {
      tags,
      summary: 'Create a user',
      body: CreateUserBody,
      response: { 201: UserSchema, ...errorResponses(400, 409, 413, 415, 503) }
    }
  }, async (request, reply) => {
    const user = await insertUser(db, request.body.name, request.body.email ?? null)
    return reply.code(201).header('location', `/api/users/${user.id}`).send(user)
  })

  fastify.get('/', {
    schema: {
      tags,
      summary: 'List users, a page at a time, in ascending id order',
      querystring: ListUsersQuery,
      response: { 200: UserPage, ...errorResponses(400, 503) }
    }
  }, async (request) => {
    const { limit, after } = request.query
    // One row more than asked tells whether another page follows.
    const rows = await listUsersAfter(db, after, limit + 1)
    const items = rows.slice(0, limit)
    const nextCursor = rows.length > limit ? (items.at(-1)?.id ?? null) : null
    return { items, nextCursor }
  })

  fastify.get('/:id', {
    schema: {
      tags,
      summary: 'Read a user',
      params: UserParams,
      response: { 200: UserSchema, ...errorResponses(400, 404, 503) }
    }
  }, async (request, reply) => {
    const user = await findUserById(db, request.params.id)
    if (user === undefined) return sendError(reply, 404, userNotFound(request.params.id))
    return user
  })

  fastify.patch('/:id', {
    schema: {
      tags,
      summary: 'Change a user\'s name or email (email: null clears it)',
      params: UserParams,
      body: UpdateUserBody,
      response: { 200: UserSchema, ...errorResponses(400, 404, 409, 413, 415, 503) }
    }
  }, async (request, reply) => {
    const user = await updateUser(db, request.params.id, request.body)
    if (user === undefined) return sendError(reply, 404, userNotFound(request.params.id))
    return user
  })

  fastify.delete('/:id', {
    schema: {
      tags,
      summary: 'Delete a user',
      params: UserParams,
      response: { 204: Type.Null({ description: 'Deleted' }), ...errorResponses(400, 404, 503) }
    }
  }, async (request, reply) => {
    const deleted = await deleteUser(db, request.params.id)
    if (!deleted) return sendError(reply, 404, userNotFound(request.params.id))
    return reply.code(204).send(null)
  })
}

function userNotFound (id: number): string {
  return `user ${id} not found`
}

export default users
