// Verifies bearer tokens (JWTs) with jose: the signature against a JWKS
// endpoint's keys or one public key, then iss, aud, exp and nbf. What
// comes out is the caller (sub and scopes), or an error that says whose
// fault it was: the token's (TokenRejectedError, a 401) or the key
// source's (KeysUnavailableError, a 503).
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  errors,
  importSPKI,
  jwtVerify,
  type JWTHeaderParameters,
  type FlattenedJWSInput,
  type JWTPayload
} from 'jose'
import { createPublicKey } from 'node:crypto'
import { rememberingVerifier } from './verified-tokens.js'

/** The asymmetric algorithms a token may be signed with; never none or an HMAC. */
export const ALGORITHMS = ['RS256', 'ES256', 'EdDSA']
/** Clocks drift: exp and nbf are checked this many seconds loosely. */
const CLOCK_TOLERANCE_SECONDS = 30
/** An unknown kid refetches the key set at most this often (jose's cooldown). */
export const JWKS_REFETCH_COOLDOWN_MS = 30_000
/** Known keys are refetched this often, so a removed key stops working. */
const JWKS_MAX_AGE_MS = 10 * 60_000
/** A fetch of the key set gives up after this long. */
const JWKS_FETCH_TIMEOUT_MS = 3_000
/** After a failed fetch, cached keys serve alone this long before the next try. */
export const JWKS_RETRY_AFTER_SECONDS = 5

export interface Caller {
  /** The token's subject; absent when the token has none. */
  sub: string | undefined
  scopes: Set<string>
  /** When the token expires (its exp), in ms since the epoch. */
  expiresAt: number
}

export type KeySource = { jwksUrl: string } | { publicKey: string }

export interface VerifierOptions {
  keys: KeySource
  issuer: string
  audience: string
}

/** The token is not acceptable; `description` says why, for the caller. */
export class TokenRejectedError extends Error {
  override name = 'TokenRejectedError'
}

/** The key the token needs could not be fetched: not the caller's fault. */
export class KeysUnavailableError extends Error {
  override name = 'KeysUnavailableError'
}

type GetKey = (header: JWTHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey | Uint8Array>

export type Verifier = (token: string) => Promise<Caller>

export async function createVerifier (options: VerifierOptions): Promise<Verifier> {
  const { getKey, algorithms } = 'jwksUrl' in options.keys
    ? { getKey: jwksKeys(options.keys.jwksUrl), algorithms: ALGORITHMS }
    : await publicKey(options.keys.publicKey)
  async function verify (token: string): Promise<Caller> {
    let payload: JWTPayload
    try {
      ({ payload } = await jwtVerify(token, getKey, {
        issuer: options.issuer,
        audience: options.audience,
        algorithms,
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        // One clock for exp here and in the cache of verified tokens (jose's own is new Date()).
        currentDate: new Date(Date.now()),
        requiredClaims: ['exp']
      }))
    } catch (error) {
      if (error instanceof KeysUnavailableError) throw error
      throw new TokenRejectedError(whyRejected(error))
    }
    return {
      sub: typeof payload.sub === 'string' ? payload.sub : undefined,
      scopes: scopesOf(payload),
      expiresAt: (payload.exp as number) * 1_000 // required, and checked a number, by jwtVerify
    }
  }
  return rememberingVerifier(verify)
}

/** One PEM key, for the one algorithm its kind of key signs with. */
async function publicKey (pem: string): Promise<{ getKey: GetKey, algorithms: string[] }> {
  const type = createPublicKey(pem).asymmetricKeyType
  const algorithm = type === 'rsa' ? 'RS256' : type === 'ec' ? 'ES256' : 'EdDSA'
  const key = await importSPKI(pem, algorithm)
  return { getKey: async () => key, algorithms: [algorithm] }
}

/**
 * The endpoint's keys, cached by jose and refetched for an unknown kid at
 * most every 30 s. When the endpoint fails, the keys it gave last go on
 * serving (for JWKS_RETRY_AFTER_SECONDS before the next try), and a token
 * whose key is not among them is a KeysUnavailableError.
 */
function jwksKeys (url: string): GetKey {
  const remote = createRemoteJWKSet(new URL(url), {
    cooldownDuration: JWKS_REFETCH_COOLDOWN_MS,
    cacheMaxAge: JWKS_MAX_AGE_MS,
    timeoutDuration: JWKS_FETCH_TIMEOUT_MS
  })
  let retryAt = 0

  async function fromCache (header: JWTHeaderParameters, token: FlattenedJWSInput, cause: unknown): Promise<CryptoKey | Uint8Array> {
    const cached = remote.jwks()
    try {
      if (cached !== undefined) return await createLocalJWKSet(cached)(header, token)
    } catch (error) {
      if (!(error instanceof errors.JWKSNoMatchingKey)) throw error
    }
    throw new KeysUnavailableError(`the token's key cannot be fetched from ${url}`, { cause })
  }

  return async function getKey (header, token) {
    if (Date.now() < retryAt) return await fromCache(header, token, undefined)
    try {
      return await remote(header, token)
    } catch (error) {
      if (!isFetchFailure(error)) throw error
      retryAt = Date.now() + JWKS_RETRY_AFTER_SECONDS * 1_000
      return await fromCache(header, token, error)
    }
  }
}

/** jose's words for a fetch that failed, as against a key set without the token's key. */
function isFetchFailure (error: unknown): boolean {
  if (!(error instanceof errors.JOSEError)) return true // fetch's own TypeError: refused, reset, DNS
  return error.code === 'ERR_JOSE_GENERIC' || error instanceof errors.JWKSTimeout || error instanceof errors.JWKSInvalid
}

/** A description safe to show the caller, never the token itself. */
function whyRejected (error: unknown): string {
  if (error instanceof errors.JWTExpired) return 'the token has expired'
  if (error instanceof errors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case 'nbf': return 'the token is not valid yet'
      case 'iss': return 'the token\'s issuer is not accepted'
      case 'aud': return 'the token\'s audience is not this service'
      default: return `the token's ${error.claim} claim is missing or invalid`
    }
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return 'the token\'s signing algorithm is not accepted'
  if (error instanceof errors.JWKSNoMatchingKey) return 'no known key matches the token'
  if (error instanceof errors.JWSSignatureVerificationFailed) return 'the token\'s signature does not verify'
  return 'the token is malformed'
}

/** Scopes from `scope` (space-separated, OAuth 2) or `scp` (an array, or a string as some issuers send). */
function scopesOf (payload: JWTPayload): Set<string> {
  const scopes = new Set<string>()
  for (const claim of [payload.scope, payload.scp]) {
    const values = typeof claim === 'string' ? claim.split(' ') : Array.isArray(claim) ? claim : []
    for (const value of values) if (typeof value === 'string' && value !== '') scopes.add(value)
  }
  return scopes
}
