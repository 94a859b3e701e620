import pg from 'pg'

const INT8_OID = 20

/**
 * Type parsers for this service's connections. bigint (ids, counts) arrives
 * as a JS number: identities stay far below 2^53, and the API speaks JSON
 * numbers. Timestamps are formatted by the SQL itself, so no Date parsing.
 */
export const databaseTypes: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID ? Number : pg.types.getTypeParser(oid, format)) as pg.CustomTypesConfig['getTypeParser']
}
