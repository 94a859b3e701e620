// The Kubernetes manifests in deploy/kubernetes/ against the code they run:
// the probes reach real routes on the port the service listens on, every
// variable is one the configuration reads, the pods run the image's programs,
// shutdown fits in the grace period, and the objects point at each other.
import { access, readdir, readFile } from 'node:fs/promises'
import { once } from 'node:events'
import net from 'node:net'
import { Script } from 'node:vm'
import t, { type Test } from 'tap'
import { parseAllDocuments } from 'yaml'
import { buildApp } from '../src/app.js'
import { ConfigSchema, loadConfig, type Config } from '../src/config.js'
import { createTestDatabase, testConfig } from './helper.js'

const root = new URL('../', import.meta.url)
const deployDir = new URL('deploy/kubernetes/', root)
const KUSTOMIZATION = 'kustomization.yaml'
const SECRET_EXAMPLE = 'secret.example.yaml'

// Only the fields these checks read.
interface EnvVar {
  name: string
  value?: unknown
  valueFrom?: { secretKeyRef?: { name: string, key: string } }
}
interface HttpGet { path: string, port: number | string }
interface Probe { httpGet?: HttpGet, timeoutSeconds?: number }
interface SecurityContext {
  runAsNonRoot?: boolean
  runAsUser?: number
  runAsGroup?: number
  allowPrivilegeEscalation?: boolean
  readOnlyRootFilesystem?: boolean
  capabilities?: { drop?: string[], add?: string[] }
  seccompProfile?: { type: string }
}
interface Container {
  name: string
  image: string
  command?: string[]
  args?: string[]
  workingDir?: string
  ports?: Array<{ name?: string, containerPort: number }>
  env?: EnvVar[]
  envFrom?: unknown[]
  startupProbe?: Probe
  readinessProbe?: Probe
  livenessProbe?: Probe
  lifecycle?: { preStop?: { exec?: { command: string[] }, sleep?: { seconds: number } } }
  resources?: { requests?: Record<string, string>, limits?: Record<string, string> }
  securityContext?: SecurityContext
  volumeMounts?: Array<{ name: string, mountPath: string }>
}
interface PodTemplate {
  metadata: { labels: Record<string, string>, annotations?: Record<string, unknown> }
  spec: {
    containers: Container[]
    initContainers?: Container[]
    securityContext?: SecurityContext
    automountServiceAccountToken?: boolean
    terminationGracePeriodSeconds?: number
    restartPolicy?: string
    volumes?: Array<{ name: string, emptyDir?: unknown }>
  }
}
interface Metadata { name: string, labels?: Record<string, unknown> }
interface Manifest { apiVersion: string, kind: string, metadata: Metadata }
interface Deployment extends Manifest {
  spec: {
    replicas: number
    selector: { matchLabels: Record<string, string> }
    strategy: { type: string, rollingUpdate: { maxUnavailable: number | string, maxSurge: number | string } }
    template: PodTemplate
  }
}
interface Job extends Manifest {
  spec: { backoffLimit?: number, activeDeadlineSeconds?: number, ttlSecondsAfterFinished?: number, template: PodTemplate }
}
interface Service extends Manifest {
  spec: { type?: string, selector: Record<string, string>, ports: Array<{ port: number, targetPort: number | string }> }
}
interface PodDisruptionBudget extends Manifest {
  spec: { selector: { matchLabels: Record<string, string> }, minAvailable?: number, maxUnavailable?: number }
}
interface HorizontalPodAutoscaler extends Manifest {
  spec: {
    scaleTargetRef: { apiVersion: string, kind: string, name: string }
    minReplicas: number
    maxReplicas: number
    metrics: Array<{ type: string, resource?: { name: string, target: { type: string, averageUtilization?: number } } }>
  }
}
interface Secret extends Manifest { stringData?: Record<string, string> }
interface Kustomization { resources: string[] }

/**
 * Every document of a YAML file, read as the API server reads it: YAML 1.1,
 * where `yes`, `on` or `0600` are not text. Any syntax error fails the run.
 */
async function readYaml (file: string): Promise<unknown[]> {
  const text = await readFile(new URL(file, deployDir), 'utf8')
  const documents = parseAllDocuments(text, { version: '1.1' })
  return documents.map((document) => {
    const problems = [...document.errors, ...document.warnings]
    if (problems.length > 0) throw new Error(`${file}: ${problems.map((problem) => problem.message).join('; ')}`)
    return document.toJS()
  }).filter((document) => document !== null)
}

const files = (await readdir(deployDir)).filter((file) => /\.ya?ml$/.test(file)).sort()
const kustomization = (await readYaml(KUSTOMIZATION))[0] as Kustomization
const manifests: Manifest[] = []
for (const file of kustomization.resources) manifests.push(...(await readYaml(file)) as Manifest[])

function find<T extends Manifest> (kind: string, name: string): T {
  const found = manifests.filter((manifest) => manifest.kind === kind && manifest.metadata.name === name)
  if (found.length !== 1) throw new Error(`expected one ${kind} ${name} in the kustomization, found ${found.length}`)
  return found[0] as T
}

const deployment = find<Deployment>('Deployment', 'users-service')
const job = find<Job>('Job', 'users-service-migrate')
const service = find<Service>('Service', 'users-service')
const pdb = find<PodDisruptionBudget>('PodDisruptionBudget', 'users-service')
const hpa = find<HorizontalPodAutoscaler>('HorizontalPodAutoscaler', 'users-service')

function onlyContainer (template: PodTemplate): Container {
  const [container, ...others] = template.spec.containers
  if (container === undefined || others.length > 0) throw new Error('expected exactly one container')
  return container
}
const server = onlyContainer(deployment.spec.template)
const migrate = onlyContainer(job.spec.template)

/** The literal values of a container's env, by name. */
function literalEnv (container: Container): Record<string, string> {
  const env: Record<string, string> = {}
  for (const variable of container.env ?? []) {
    if (variable.value !== undefined) env[variable.name] = String(variable.value)
  }
  return env
}

/** The configuration a container's process reads, its secret filled in. */
function configOf (container: Container): Config {
  return loadConfig({ ...literalEnv(container), DATABASE_URL: 'postgres://users:secret@postgres:5432/users' })
}

/** `labels` has every label of `selector`. */
function selects (selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([name, value]) => labels[name] === value)
}

/** The container port a probe's or a Service's port names or numbers. */
function containerPort (container: Container, port: number | string): number | undefined {
  const ports = container.ports ?? []
  const found = typeof port === 'number'
    ? ports.find((candidate) => candidate.containerPort === port)
    : ports.find((candidate) => candidate.name === port)
  return found?.containerPort
}

interface Image { workdir?: string, user?: string, entrypoint: string[], cmd: string[], expose: number[], copiedTo: string[] }

/** The final stage of the Dockerfile: what the image runs, and where. */
async function readImage (): Promise<Image> {
  const text = await readFile(new URL('Dockerfile', root), 'utf8')
  const lines = text.replace(/\\\r?\n/g, ' ').split(/\r?\n/).map((line) => line.trim())
  const image: Image = { entrypoint: [], cmd: [], expose: [], copiedTo: [] }
  // Exec form (a JSON array) as is; shell form through /bin/sh, as Docker does.
  const commandOf = (rest: string): string[] => rest.startsWith('[') ? JSON.parse(rest) : ['/bin/sh', '-c', rest]
  for (const line of lines) {
    const match = /^([A-Za-z]+)\s+(.*)$/.exec(line)
    if (match === null || line.startsWith('#')) continue
    const [, instruction = '', rest = ''] = match
    switch (instruction.toUpperCase()) {
      case 'FROM': Object.assign(image, { workdir: undefined, user: undefined, entrypoint: [], cmd: [], expose: [], copiedTo: [] }); break
      case 'WORKDIR': image.workdir = rest.startsWith('/') ? rest : `${image.workdir ?? ''}/${rest}`; break
      case 'USER': image.user = rest; break
      case 'ENTRYPOINT': image.entrypoint = commandOf(rest); image.cmd = []; break
      case 'CMD': image.cmd = commandOf(rest); break
      case 'EXPOSE': image.expose.push(...rest.split(/\s+/).map((port) => Number.parseInt(port, 10))); break
      case 'COPY': image.copiedTo.push(rest.split(/\s+/).at(-1) ?? ''); break
    }
  }
  return image
}

/** What Kubernetes runs in a container of this image: command and args over ENTRYPOINT and CMD. */
function effectiveCommand (container: Container, image: Image): string[] {
  if (container.command !== undefined) return [...container.command, ...(container.args ?? [])]
  return [...image.entrypoint, ...(container.args ?? image.cmd)]
}

/** How long a preStop hook holds the container before SIGTERM, in ms. */
function preStopPauseMs (t: Test, container: Container): number {
  const preStop = container.lifecycle?.preStop
  if (preStop?.sleep !== undefined) return preStop.sleep.seconds * 1000
  const command = preStop?.exec?.command ?? []
  // The image has node; it need not have a shell or a sleep binary.
  t.equal(command[0], 'node', 'preStop runs node itself')
  t.equal(command[1], '-e')
  const code = command[2] ?? ''
  t.doesNotThrow(() => new Script(code), 'the preStop script is valid JavaScript')
  const pause = /^setTimeout\(\s*\(\)\s*=>\s*\{\s*\}\s*,\s*([\d_]+)\s*\)$/.exec(code.trim())
  t.ok(pause, `preStop only waits: ${code}`)
  return Number((pause?.[1] ?? 'NaN').replaceAll('_', ''))
}

/** An address where no PostgreSQL answers: the connection is refused. */
async function deadDatabaseUrl (): Promise<string> {
  const probe = net.createServer()
  probe.listen(0, '127.0.0.1')
  await once(probe, 'listening')
  const { port } = probe.address() as net.AddressInfo
  probe.close()
  await once(probe, 'close')
  return `postgres://postgres@127.0.0.1:${port}/users`
}

t.test('the kustomization lists every manifest in the folder but the Secret example', async (t) => {
  t.ok(files.includes(KUSTOMIZATION))
  t.ok(files.includes(SECRET_EXAMPLE))
  const expected = files.filter((file) => file !== KUSTOMIZATION && file !== SECRET_EXAMPLE)
  t.strictSame([...kustomization.resources].sort(), expected)
  t.equal(new Set(kustomization.resources).size, kustomization.resources.length, 'each listed once')

  t.notOk(manifests.some((manifest) => manifest.kind === 'Secret'), 'no Secret is applied from the repository')
  const seen = new Set<string>()
  for (const manifest of manifests) {
    const id = `${manifest.kind}/${manifest.metadata.name}`
    t.ok(manifest.apiVersion !== undefined && manifest.kind !== undefined && manifest.metadata.name !== undefined, id)
    t.notOk(seen.has(id), `${id} is defined once`)
    seen.add(id)
  }
})

t.test('the Secret example is the Secret and key the pods read, with a URL the service accepts', async (t) => {
  const [secret, ...others] = await readYaml(SECRET_EXAMPLE) as Secret[]
  t.equal(others.length, 0)
  const reference = server.env?.find((variable) => variable.name === 'DATABASE_URL')?.valueFrom?.secretKeyRef
  t.ok(reference)
  t.equal(secret?.kind, 'Secret')
  t.equal(secret?.metadata.name, reference?.name)
  const url = secret?.stringData?.[reference?.key ?? '']
  t.type(url, 'string', `stringData has the key ${reference?.key}`)
  t.doesNotThrow(() => loadConfig({ NODE_ENV: 'production', DATABASE_URL: url }), 'DATABASE_URL accepts it')
  t.match(url, /CHANGE_ME/, 'the example says its password is a placeholder')
})

t.test('every variable the pods set is one the service reads, with a value it accepts', async (t) => {
  const known = Object.keys(ConfigSchema.properties)
  for (const [what, container] of [['Deployment', server], ['Job', migrate]] as const) {
    t.equal(container.envFrom, undefined, `${what}: no envFrom, whose names nothing checks`)
    const names = (container.env ?? []).map((variable) => variable.name)
    t.equal(new Set(names).size, names.length, `${what}: each variable set once`)
    for (const variable of container.env ?? []) {
      t.ok(known.includes(variable.name), `${what}: ${variable.name} is read by src/config.ts`)
      if (variable.value !== undefined) t.type(variable.value, 'string', `${what}: ${variable.name} is text, as Kubernetes requires`)
    }

    const databaseUrl = container.env?.find((variable) => variable.name === 'DATABASE_URL')
    t.equal(databaseUrl?.value, undefined, `${what}: DATABASE_URL is never written in the manifest`)
    t.strictSame(databaseUrl?.valueFrom, { secretKeyRef: { name: 'users-service-db', key: 'url' } },
      `${what}: DATABASE_URL comes from the Secret`)

    t.doesNotThrow(() => configOf(container), `${what}: the configuration loads`)
    const env = literalEnv(container)
    t.equal(env.NODE_ENV, 'production', `${what}: NODE_ENV=production`)
    t.equal(configOf(container).production, true, `${what}: no embedded database`)
  }
  t.equal(literalEnv(server).MIGRATE_ON_START, 'false', 'the Job migrates, not the pods')
  t.equal(configOf(server).migrateOnStart, false)
})

t.test('the probes reach GET routes of the real app, on the port the service listens on', async (t) => {
  const config = configOf(server)
  const port = server.ports?.find((candidate) => candidate.containerPort === config.port)
  t.ok(port, `a container port is PORT (${config.port})`)
  t.equal(port?.name, 'http')
  t.ok((await readImage()).expose.includes(config.port), 'the Dockerfile EXPOSEs it')
  const annotations = deployment.spec.template.metadata.annotations ?? {}
  t.equal(annotations['prometheus.io/port'], String(config.port), 'Prometheus scrapes that port')
  t.equal(annotations['prometheus.io/path'], '/metrics')
  t.equal(annotations['prometheus.io/scrape'], 'true')

  const probes = {
    startup: server.startupProbe?.httpGet,
    readiness: server.readinessProbe?.httpGet,
    liveness: server.livenessProbe?.httpGet
  }
  for (const [name, probe] of Object.entries(probes)) {
    t.ok(probe, `${name} probe is an HTTP GET`)
    t.equal(containerPort(server, probe?.port ?? -1), config.port, `${name} probe port is the listening port`)
  }
  t.equal(probes.liveness?.path, '/health/live', 'liveness never touches the database')
  t.equal(probes.readiness?.path, '/health/ready')
  t.equal(probes.startup?.path, '/health/live', 'startup waits for the process, not the database')

  // The app as the Deployment's env configures it.
  const app = await buildApp(testConfig(await createTestDatabase(t), literalEnv(server)), { logger: false })
  t.teardown(() => app.close())
  const gets: Array<[string, string]> = [
    ...Object.entries(probes).map(([name, probe]): [string, string] => [`${name} probe`, probe?.path ?? '']),
    ['Prometheus scrape', String(annotations['prometheus.io/path'])]
  ]
  for (const [name, url] of gets) {
    t.ok(app.hasRoute({ method: 'GET', url }), `${name}: GET ${url} is a route`)
    const response = await app.inject({ method: 'GET', url })
    t.equal(response.statusCode, 200, `${name}: GET ${url} answers 200 on a migrated database`)
  }
})

t.test('with the database down, the liveness probe passes and the readiness probe fails', async (t) => {
  // A database outage must take pods out of the Service, not restart them.
  const env = { ...literalEnv(server), DATABASE_CONNECT_TIMEOUT_MS: '500' }
  const app = await buildApp(testConfig(await deadDatabaseUrl(), env), { logger: false })
  t.teardown(() => app.close())
  const live = await app.inject({ method: 'GET', url: server.livenessProbe?.httpGet?.path ?? '' })
  t.equal(live.statusCode, 200)
  const ready = await app.inject({ method: 'GET', url: server.readinessProbe?.httpGet?.path ?? '' })
  t.equal(ready.statusCode, 503)
})

t.test('the pods run the image\'s programs: its CMD, the server, and the Job the migrations', async (t) => {
  const image = await readImage()
  t.equal(migrate.image, server.image, 'the Job migrates with the release\'s own image')
  t.strictSame(image.cmd, ['node', 'dist/server.js'], 'the Dockerfile starts node dist/server.js, node as PID 1')
  t.strictSame(image.entrypoint, [], 'nothing wraps it')
  t.equal(server.command, undefined, 'the Deployment keeps the image\'s command')
  t.strictSame(effectiveCommand(server, image), ['node', 'dist/server.js'])
  t.strictSame(effectiveCommand(migrate, image), ['node', 'dist/migrate.js'])
  for (const container of [server, migrate]) {
    t.ok(container.workingDir === undefined || container.workingDir === image.workdir, 'relative paths from the image\'s WORKDIR')
  }
  t.equal(image.workdir, '/app')
  t.ok(image.copiedTo.some((to) => /^(\.\/)?dist\/?$/.test(to)), 'the image holds dist/')
  t.ok(image.copiedTo.some((to) => /^(\.\/)?migrations\/?$/.test(to)), 'the image holds migrations/ for the Job')

  // dist/X.js is what `npm run build` makes of src/X.ts.
  const build = JSON.parse(await readFile(new URL('tsconfig.build.json', root), 'utf8'))
  const { rootDir, outDir } = build.compilerOptions as { rootDir: string, outDir: string }
  for (const program of ['dist/server.js', 'dist/migrate.js']) {
    t.ok(program.startsWith(`${outDir}/`), `${program} is build output`)
    const source = `${rootDir}/${program.slice(outDir.length + 1).replace(/\.js$/, '.ts')}`
    await t.resolves(access(new URL(source, root)), `${program} is built from ${source}`)
  }
  const pkg = JSON.parse(await readFile(new URL('package.json', root), 'utf8'))
  t.ok(pkg.main === 'dist/server.js' || pkg.scripts.start === 'node dist/server.js', 'package.json starts dist/server.js')
  t.equal(pkg.scripts.migrate, 'node dist/migrate.js', '`npm run migrate` is what the Job runs')
})

t.test('shutdown fits in the grace period: preStop pause, then SHUTDOWN_GRACE_MS', async (t) => {
  const pauseMs = preStopPauseMs(t, server)
  t.ok(pauseMs > 0, `preStop pauses ${pauseMs} ms`)
  const { shutdownGraceMs } = configOf(server)
  const graceSeconds = deployment.spec.template.spec.terminationGracePeriodSeconds ?? 30
  t.ok(graceSeconds * 1000 > pauseMs + shutdownGraceMs,
    `terminationGracePeriodSeconds ${graceSeconds} s > ${pauseMs} ms + SHUTDOWN_GRACE_MS ${shutdownGraceMs} ms`)
})

t.test('the Service, the PDB and the HPA reach the Deployment\'s pods, and never the Job\'s', async (t) => {
  const podLabels = deployment.spec.template.metadata.labels
  const jobLabels = job.spec.template.metadata.labels
  t.ok(selects(deployment.spec.selector.matchLabels, podLabels), 'the Deployment selects its own pods')
  t.notOk(selects(deployment.spec.selector.matchLabels, jobLabels), 'and not the Job\'s')

  t.ok(selects(service.spec.selector, podLabels), 'the Service selects the Deployment\'s pods')
  t.notOk(selects(service.spec.selector, jobLabels), 'the Service sends nothing to the Job\'s pod')
  t.ok(service.spec.ports.length > 0)
  for (const port of service.spec.ports) {
    t.type(port.targetPort, 'string', 'the Service targets a named port')
    t.equal(containerPort(server, port.targetPort), configOf(server).port, `targetPort ${port.targetPort} is the listening port`)
  }

  t.ok(selects(pdb.spec.selector.matchLabels, podLabels), 'the PDB covers the Deployment\'s pods')
  t.notOk(selects(pdb.spec.selector.matchLabels, jobLabels), 'and not the Job\'s')
  const evictable = pdb.spec.maxUnavailable ?? hpa.spec.minReplicas - (pdb.spec.minAvailable ?? hpa.spec.minReplicas)
  t.ok(evictable >= 1, 'a drain can always evict a pod')

  t.strictSame(hpa.spec.scaleTargetRef, { apiVersion: deployment.apiVersion, kind: 'Deployment', name: deployment.metadata.name })
  t.equal(hpa.spec.minReplicas, deployment.spec.replicas, 'the autoscaler starts where the Deployment does')
  t.ok(hpa.spec.maxReplicas >= hpa.spec.minReplicas)
  const cpu = hpa.spec.metrics.find((metric) => metric.resource?.name === 'cpu')
  t.equal(cpu?.resource?.target.averageUtilization, 70)
  t.ok(server.resources?.requests?.cpu, 'CPU utilization needs a CPU request')

  t.strictSame(deployment.spec.strategy.rollingUpdate, { maxUnavailable: 0, maxSurge: 1 }, 'rollouts never lower capacity')
})

t.test('the pods run as non-root, on a read-only root filesystem, without privileges', async (t) => {
  const image = await readImage()
  for (const [what, template] of [['Deployment', deployment.spec.template], ['Job', job.spec.template]] as const) {
    t.equal(template.spec.automountServiceAccountToken, false, `${what}: no API token`)
    const tmp = template.spec.volumes?.find((volume) => volume.emptyDir !== undefined)
    t.ok(tmp, `${what}: an emptyDir volume`)
    for (const container of [...template.spec.containers, ...(template.spec.initContainers ?? [])]) {
      const context = { ...template.spec.securityContext, ...container.securityContext }
      const where = `${what} ${container.name}`
      t.equal(context.runAsNonRoot, true, `${where}: runAsNonRoot`)
      // The image's USER is a name the kubelet cannot check: a numeric
      // runAsUser, the node image's `node` (1000), makes runAsNonRoot work.
      t.equal(context.runAsUser, image.user === 'node' ? 1000 : Number(image.user), `${where}: runs as the image's user`)
      t.not(context.runAsUser, 0)
      t.equal(context.readOnlyRootFilesystem, true, `${where}: read-only root filesystem`)
      t.equal(context.allowPrivilegeEscalation, false, `${where}: no privilege escalation`)
      t.ok(context.capabilities?.drop?.includes('ALL'), `${where}: every capability dropped`)
      t.equal(context.capabilities?.add, undefined, `${where}: none added`)
      t.equal(context.seccompProfile?.type, 'RuntimeDefault', `${where}: seccomp`)
      const mount = container.volumeMounts?.find((candidate) => candidate.mountPath === '/tmp')
      t.equal(mount?.name, tmp?.name, `${where}: /tmp is writable`)
    }
  }
  t.equal(job.spec.template.spec.restartPolicy, 'Never')
  t.equal(job.spec.backoffLimit, 3)
  t.equal(job.spec.activeDeadlineSeconds, 600)
  t.ok((job.spec.ttlSecondsAfterFinished ?? 0) > 0, 'finished Jobs are cleaned up')
})
