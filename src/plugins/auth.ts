import type { FastifyReply, FastifyRequest, onRequestHookHandler, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import {
  createVerifier,
  JWKS_RETRY_AFTER_SECONDS,
  KeysUnavailableError,
  TokenRejectedError,
  type KeySource
} from '../auth/tokens.js'
import { bindToRequestLog } from '../logger.js'
import { errorResponses } from '../schemas/errors.js'
import { sendError } from './errors.js'

export const READ_SCOPE = 'users:read'
export const WRITE_SCOPE = 'users:write'
const REALM = 'users'

export interface AuthOptions {
  keys: KeySource
  issuer: string
  audience: string
  /** An http: JWKS URL is worth a warning there. */
  production: boolean
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The token's subject once it is verified (rate limits count by it). */
    callerSub?: string
  }
}

/**
 * Bearer tokens on every /api route: users:read for GET and HEAD,
 * users:write for the rest. Probes, /metrics and /docs stay open. Answers
 * are RFC 6750's (401 with WWW-Authenticate, 403 insufficient_scope) in
 * the service's error shape. Registered before the routes (and the docs),
 * so each /api route gets its check and its OpenAPI security entry.
 */
export default fp<AuthOptions>(async function auth (fastify, options) {
  if ('jwksUrl' in options.keys && options.keys.jwksUrl.startsWith('http:') && options.production) {
    fastify.log.warn({ url: options.keys.jwksUrl }, 'AUTH_JWKS_URL is http: keys travel unprotected; use https unless the network is private')
  }
  const verify = await createVerifier(options)

  function requireScope (scope: string): onRequestHookHandler {
    return async function checkBearer (request: FastifyRequest, reply: FastifyReply) {
      const token = bearerToken(request.headers.authorization)
      if (token === undefined) {
        reply.header('www-authenticate', `Bearer realm="${REALM}"`)
        return sendError(reply, 401, 'a bearer token is required (Authorization: Bearer <token>)')
      }
      let caller
      try {
        caller = await verify(token)
      } catch (error) {
        if (error instanceof KeysUnavailableError) {
          request.log.warn({ err: error }, 'token key unavailable')
          reply.header('retry-after', String(JWKS_RETRY_AFTER_SECONDS))
          return sendError(reply, 503, 'the token\'s signing key cannot be fetched now; try again shortly')
        }
        const description = (error as TokenRejectedError).message
        reply.header('www-authenticate', `Bearer realm="${REALM}", error="invalid_token", error_description="${description}"`)
        return sendError(reply, 401, `the bearer token is not valid: ${description}`)
      }
      if (caller.sub !== undefined) {
        request.callerSub = caller.sub
        bindToRequestLog(request, reply, { sub: caller.sub })
      }
      if (!caller.scopes.has(scope)) {
        reply.header('www-authenticate', `Bearer realm="${REALM}", error="insufficient_scope", scope="${scope}"`)
        return sendError(reply, 403, `the token lacks the scope ${scope}`)
      }
    }
  }
  const checks = { [READ_SCOPE]: requireScope(READ_SCOPE), [WRITE_SCOPE]: requireScope(WRITE_SCOPE) }

  fastify.addHook('onRoute', (route) => {
    if (!route.url.startsWith('/api/')) {
      // Open, and the OpenAPI document says so.
      if (route.schema !== undefined && route.schema.security === undefined) route.schema = { ...route.schema, security: [] }
      return
    }
    const scope = scopeFor(route)
    route.onRequest = [checks[scope], ...[route.onRequest ?? []].flat()]
    if (route.schema !== undefined) {
      route.schema = {
        ...route.schema,
        security: [{ bearer: [scope] }],
        response: { ...errorResponses(401, 403), ...(route.schema.response as object | undefined) }
      }
    }
  })
}, { name: 'auth', dependencies: ['errors'] })

function scopeFor (route: RouteOptions): typeof READ_SCOPE | typeof WRITE_SCOPE {
  const methods = [route.method].flat()
  return methods.every((method) => method === 'GET' || method === 'HEAD') ? READ_SCOPE : WRITE_SCOPE
}

/** The token of `Authorization: Bearer <token>`; another scheme or none is no token. */
function bearerToken (header: string | undefined): string | undefined {
  const match = /^Bearer +(\S*) *$/i.exec(header ?? '')
  return match?.[1]
}
