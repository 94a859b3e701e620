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
export default fp(async function docs (fastify) {
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
      // No authentication: the service sits behind the platform's gateway.
      security: []
    }
  })
  await fastify.register(swaggerUi, { routePrefix: '/docs' })
}, { name: 'docs' })
