// Remembers the tokens already verified. A client sends the same bearer
// token on every request until it expires; checking its signature each
// time (about 0.2 ms of CPU for ES256 on the one core node has) was the
// largest cost of turning auth on. A remembered token is answered with the
// caller it verified as, until its exp or REMEMBER_FOR_MS, whichever
// comes first, so a token never outlives its exp and a key dropped from the
// key set stops its tokens about as soon as it would without the cache.
import { hash } from 'node:crypto'
import { LruMap } from 'toad-cache'
import type { Caller, Verifier } from './tokens.js'

/** At most this many tokens remembered: the least recently used go first. */
export const REMEMBERED_TOKENS_MAX = 10_000
/** A remembered token is verified again after this long, whatever its exp. */
export const REMEMBER_FOR_MS = 60_000

export function rememberingVerifier (verify: Verifier): Verifier {
  const remembered = new LruMap<Caller>(REMEMBERED_TOKENS_MAX, REMEMBER_FOR_MS)
  return async function verifyOnce (token) {
    // Keyed by digest: a token can be kilobytes, and only the same bytes
    // are the same token.
    const key = hash('sha256', token, 'base64')
    const known = remembered.get(key)
    if (known !== undefined && Date.now() < known.expiresAt) return known
    const caller = await verify(token)
    remembered.set(key, caller)
    return caller
  }
}
