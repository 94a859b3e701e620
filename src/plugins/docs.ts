import { createRequire } from 'node:module'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import fp from 'fastify-plugin'

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string }

/**
 * The OpenAPI document, generated from the route schemas (`GET /docs/json`),
 * and a page to read it (`GET /docs`). Registered before the routes, since
 * it collects each route as it is added.
 */
export interface DocsOptions {
  /** Declare the bearer scheme (each operation names its scope: plugins/auth.ts). */
  bearerAuth: boolean
}

export default fp<DocsOptions>(async function docs (fastify, options) {
  await fastify.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'users service',
        version,
        description: 'Users in PostgreSQL: create, read, page through, change and delete them. ' +
          'Errors are always `{statusCode, error, message}`, the message naming the field at fault.',
        license: { name: 'UNLICENSED', identifier: 'UNLICENSED' }
      },
      servers: [{ url: '/', description: 'this server' }],
      tags: [
        { name: 'users', description: 'The users resource' },
        { name: 'legacy', description: 'The original Flask service\'s routes, kept for its clients; deprecated' },
        { name: 'operations', description: 'Probes and metrics' }
      ],
      ...(options.bearerAuth
        ? { components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'A JWT from the configured issuer, with users:read or users:write in scope or scp' } } } }
        // No authentication (AUTH_MODE=none): the network in front decides who calls.
        : { security: [] })
    }
  })
  await fastify.register(swaggerUi, { routePrefix: '/docs' })
}, { name: 'docs' })
