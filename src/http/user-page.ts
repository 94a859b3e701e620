import type { UserTuple } from '../db/users.js'

/**
 * A page of users (`{ items, nextCursor }`) as JSON text, written straight
 * from the rows' values. `GET /api/users` is the hottest answer by bytes:
 * built here it needs one string per row and no object per row, where the
 * generic path (row objects, then the schema's serializer) made both.
 * Strings that come from users go through JSON.stringify; the timestamps
 * are PostgreSQL's `to_char` digits and the id an integer, so they need
 * no escaping. `rows` may hold one more than `limit`: that row only says
 * another page follows.
 */
export function userPageJson (rows: UserTuple[], limit: number): string {
  const count = Math.min(rows.length, limit)
  let json = '{"items":['
  for (let index = 0; index < count; index++) {
    const [id, name, email, createdAt, updatedAt] = rows[index] as UserTuple
    if (index > 0) json += ','
    json += '{"id":' + id + ',"name":' + JSON.stringify(name) +
      ',"email":' + (email === null ? 'null' : JSON.stringify(email)) +
      ',"createdAt":"' + createdAt + '","updatedAt":"' + updatedAt + '"}'
  }
  const last = rows[count - 1]
  const nextCursor = rows.length > limit && last !== undefined ? String(last[0]) : 'null'
  return json + '],"nextCursor":' + nextCursor + '}'
}
