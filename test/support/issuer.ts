// A token issuer for tests: key pairs it generates, a JWKS endpoint it
// serves over HTTP on 127.0.0.1 (which it can stop and start again on the
// same port), and tokens it signs, good or bad on purpose.
import { createHmac } from 'node:crypto'
import { once } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type JWK, type JWTPayload } from 'jose'

export const ISSUER = 'https://issuer.test'
export const AUDIENCE = 'users-service'
export const BOTH_SCOPES = 'users:read users:write'

export type Algorithm = 'RS256' | 'ES256' | 'EdDSA'

export interface SigningKey {
  kid: string
  alg: Algorithm
  privateKey: CryptoKey
  publicJwk: JWK
  publicPem: string
}

export async function signingKey (alg: Algorithm, kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
  return { kid, alg, privateKey, publicJwk: { ...await exportJWK(publicKey), kid, alg, use: 'sig' }, publicPem: await exportSPKI(publicKey) }
}

export interface TokenOptions {
  claims?: JWTPayload
  issuer?: string
  audience?: string
  /** Seconds from now (negative: in the past); null: no exp claim. */
  expiresIn?: number | null
  notBeforeIn?: number
  sub?: string
}

/** A token signed by `key`: valid for an hour for ISSUER and AUDIENCE, with both scopes, unless told. */
export async function tokenFor (key: SigningKey, options: TokenOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  const jwt = new SignJWT(options.claims ?? { scope: BOTH_SCOPES })
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
    .setIssuer(options.issuer ?? ISSUER)
    .setAudience(options.audience ?? AUDIENCE)
    .setSubject(options.sub ?? 'client-42')
    .setIssuedAt(now)
  if (options.expiresIn !== null) jwt.setExpirationTime(now + (options.expiresIn ?? 3600))
  if (options.notBeforeIn !== undefined) jwt.setNotBefore(now + options.notBeforeIn)
  return await jwt.sign(key.privateKey)
}

const base64url = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

function claimsNow (): JWTPayload {
  const now = Math.floor(Date.now() / 1000)
  return { iss: ISSUER, aud: AUDIENCE, sub: 'mallory', scope: BOTH_SCOPES, iat: now, exp: now + 3600 }
}

/** An unsecured token (`alg: none`), which must never pass. */
export function unsignedToken (): string {
  return `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url(claimsNow())}.`
}

/** The classic confusion attack: HS256 with the issuer's public key (PEM text) as the HMAC secret. */
export function hmacWithPublicKey (key: SigningKey): string {
  const signingInput = `${base64url({ alg: 'HS256', typ: 'JWT', kid: key.kid })}.${base64url(claimsNow())}`
  return `${signingInput}.${createHmac('sha256', key.publicPem).update(signingInput).digest('base64url')}`
}

/** A JWKS endpoint at `url`, serving `keys` (change them to rotate). */
export class JwksServer {
  keys: JWK[] = []
  fetches = 0
  private server: http.Server
  private port = 0

  private constructor () {
    this.server = this.create()
  }

  private create (): http.Server {
    return http.createServer((request, response) => {
      this.fetches++
      response.writeHead(200, { 'content-type': 'application/json' })
      response.end(JSON.stringify({ keys: this.keys }))
    })
  }

  static async start (keys: SigningKey[]): Promise<JwksServer> {
    const server = new JwksServer()
    server.keys = keys.map((key) => key.publicJwk)
    server.server.listen(0, '127.0.0.1')
    await once(server.server, 'listening')
    server.port = (server.server.address() as AddressInfo).port
    return server
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}/.well-known/jwks.json`
  }

  serve (keys: SigningKey[]): void {
    this.keys = keys.map((key) => key.publicJwk)
  }

  /** Stops listening and drops open connections: the endpoint is down. */
  async stop (): Promise<void> {
    this.server.closeAllConnections()
    await new Promise((resolve) => this.server.close(resolve))
  }

  /** Listens again on the same port. */
  async restart (): Promise<void> {
    this.server = this.create()
    this.server.listen(this.port, '127.0.0.1')
    await once(this.server, 'listening')
  }
}
