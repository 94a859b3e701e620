// `npm test` needs, besides a PostgreSQL (test/run.js sees to that), the
// machine's parts that the tests use for real: Redis (rate limits),
// RabbitMQ (events), Debian's PgBouncer (the pooler tests) and kubectl (the
// manifests). This starts what is installed but down, installs PgBouncer
// with apt when it is missing and we may, and otherwise stops the run with
// one line saying what to install, before any test starts.
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import net from 'node:net'

const REDIS = { host: '127.0.0.1', port: 6379 }
const RABBITMQ = { host: '127.0.0.1', port: 5672 }

function answers ({ host, port }, timeoutMs = 1_000) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: timeoutMs })
    const done = (ok) => { socket.destroy(); resolve(ok) }
    socket.once('connect', () => done(true))
    socket.once('timeout', () => done(false))
    socket.once('error', () => done(false))
  })
}

async function waitUntilAnswers (target, seconds) {
  for (let i = 0; i < seconds * 4; i++) {
    if (await answers(target)) return true
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  return false
}

function onPath (command) {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0
}

function fail (line) {
  console.error(`npm test: ${line}`)
  process.exit(1)
}

async function ensureService (name, target, command, args, seconds) {
  if (await answers(target)) return
  if (!onPath(command)) fail(`${name} is not answering on ${target.host}:${target.port}, and ${command} is not installed: install it (Debian: apt-get install ${command === 'redis-server' ? 'redis-server' : 'rabbitmq-server'}) or start it`)
  console.log(`# npm test: ${name} is down on ${target.host}:${target.port}; starting it (${command} ${args.join(' ')})`)
  try {
    execFileSync(command, args, { stdio: 'inherit' })
  } catch (error) {
    fail(`${name} is down on ${target.host}:${target.port}, and ${command} could not start it (${error.message.split('\n')[0]}): start it yourself`)
  }
  if (!(await waitUntilAnswers(target, seconds))) fail(`${name} was started but does not answer on ${target.host}:${target.port} after ${seconds} s`)
}

function ensurePgBouncer () {
  if (existsSync('/usr/sbin/pgbouncer') || onPath('pgbouncer')) return
  const root = process.getuid?.() === 0
  if (!root || !onPath('apt-get')) fail('the pooler tests need PgBouncer 1.18 or newer: install it (Debian: sudo apt-get install pgbouncer)')
  console.log('# npm test: installing PgBouncer for the pooler tests (apt-get install pgbouncer)')
  const install = () => spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'pgbouncer'],
    { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status === 0
  if (install()) return
  spawnSync('apt-get', ['update', '-qq'], { stdio: 'inherit' })
  if (!install()) fail('apt-get install pgbouncer failed: install PgBouncer 1.18 or newer')
}

export async function ensurePrerequisites () {
  ensurePgBouncer()
  if (!onPath('kubectl')) fail('the manifest tests render deploy/ with kubectl kustomize: install kubectl 1.27 or newer')
  await ensureService('Redis', REDIS, 'redis-server', ['--daemonize', 'yes', '--bind', '127.0.0.1', '--port', '6379', '--save', '', '--appendonly', 'no'], 15)
  await ensureService('RabbitMQ', RABBITMQ, 'rabbitmq-server', ['-detached'], 60)
}
