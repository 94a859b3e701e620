// The peer every `npm run bench` run measures beside the service: a plain
// Express 5 + pg service answering the bench's four routes with the same SQL,
// written as a team would without a thought for speed (pool of 10, JSON
// bodies through express.json(), res.json() for answers). Its figures give
// the "× Express" ratios of BENCHMARKS.md in the same run, on the same machine.
//
// node bench/peers/express.js  (DATABASE_URL, PORT; prints "listening PORT")
import express from 'express'
import pg from 'pg'

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 })
const app = express()
app.use(express.json())

const COLUMNS = `id, name, email,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "createdAt",
  to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS "updatedAt"`

app.get('/api/users/:id', async (req, res) => {
  const id = Number(req.params.id)
  if (!Number.isSafeInteger(id) || id < 1) return res.status(400).json({ error: 'id must be a positive integer' })
  const { rows } = await pool.query(`SELECT ${COLUMNS} FROM users WHERE id = $1`, [id])
  if (rows.length === 0) return res.status(404).json({ error: 'user not found' })
  res.json(rows[0])
})

app.get('/api/users', async (req, res) => {
  if (req.query.email !== undefined) {
    const { rows } = await pool.query(`SELECT ${COLUMNS} FROM users WHERE lower(email) = lower($1)`, [req.query.email])
    return res.json({ items: rows, nextCursor: null })
  }
  const limit = Math.min(Number(req.query.limit ?? 20), 100)
  const after = Number(req.query.after ?? 0)
  const { rows } = await pool.query(`SELECT ${COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2`, [after, limit])
  res.json({ items: rows, nextCursor: rows.length === limit ? String(rows[rows.length - 1].id) : null })
})

app.post('/api/users', async (req, res) => {
  const { name, email = null } = req.body ?? {}
  if (typeof name !== 'string' || name.trim() === '') return res.status(400).json({ error: 'name is required' })
  const { rows } = await pool.query(`INSERT INTO users (name, email) VALUES ($1, $2) RETURNING ${COLUMNS}`, [name, email])
  res.status(201).location(`/api/users/${rows[0].id}`).json(rows[0])
})

app.get('/api/user', async (req, res) => {
  const { rows } = await pool.query('SELECT id, name FROM users ORDER BY id')
  if (rows.length === 0) return res.status(404).json({ message: 'No users found' })
  res.json(rows)
})

// Express 5 passes a rejected handler's error here.
app.use((error, req, res, next) => {
  console.error(error)
  res.status(500).json({ error: 'internal error' })
})

const server = app.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`)
})
process.on('SIGTERM', () => server.close(() => pool.end()))
