// The Kubernetes manifests in deploy/kubernetes/ as `kubectl kustomize`
// renders them, against the code they run and the release steps README.md
// gives: one pinned image per release, a migration Job per release waited on
// before the Deployment changes, replicas left to the autoscaler, memory sized
// from a measurement, zone spreading, a PDB that never blocks a drain, no
// Secret applied from the repository, NetworkPolicies that let each URL the
// pods are given through, and connections that fit PgBouncer and PostgreSQL
// during a rollout.
import { execFile, spawn } from 'node:child_process'
import { chmod, cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { once } from 'node:events'
import net from 'node:net'
import { tmpdir, userInfo } from 'node:os'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import pg from 'pg'
import t from 'tap'
import { parseAllDocuments } from 'yaml'
import { buildApp } from '../src/app.js'
import { ConfigSchema, loadConfig, type Config } from '../src/config.js'
import { makeThrowawayFolder } from '../src/db/embedded.js'
import { createTestDatabase, testConfig } from './helper.js'

const run = promisify(execFile)
const root = fileURLToPath(new URL('../', import.meta.url))
const KUBERNETES = 'deploy/kubernetes'
const EXAMPLES = 'deploy/examples/secrets.yaml'
// Read by Node itself, not by src/config.ts.
const READ_BY_NODE = ['NODE_OPTIONS']

// Only the fields these checks read.
type Labels = Record<string, string>
interface KeyRef { name: string, key: string, optional?: boolean }
interface EnvVar { name: string, value?: unknown, valueFrom?: { secretKeyRef?: KeyRef, configMapKeyRef?: KeyRef } }
interface HttpGet { path: string, port: number | string }
interface Probe { httpGet?: HttpGet, tcpSocket?: { port: number | string } }
interface SecurityContext {
  runAsNonRoot?: boolean
  runAsUser?: number
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
interface SpreadConstraint {
  topologyKey: string
  maxSkew: number
  whenUnsatisfiable: string
  labelSelector: { matchLabels: Labels }
  matchLabelKeys?: string[]
}
interface PodTemplate {
  metadata: { labels: Labels, annotations?: Record<string, string> }
  spec: {
    containers: Container[]
    serviceAccountName?: string
    securityContext?: SecurityContext
    automountServiceAccountToken?: boolean
    terminationGracePeriodSeconds?: number
    restartPolicy?: string
    topologySpreadConstraints?: SpreadConstraint[]
    volumes?: Array<{ name: string, emptyDir?: unknown, secret?: { secretName: string }, configMap?: { name: string } }>
  }
}
interface Manifest { apiVersion: string, kind: string, metadata: { name: string, labels?: Labels }, automountServiceAccountToken?: boolean }
interface Deployment extends Manifest {
  spec: {
    replicas?: number
    selector: { matchLabels: Labels }
    strategy: { rollingUpdate: { maxUnavailable: number | string, maxSurge: number | string } }
    template: PodTemplate
  }
}
interface Job extends Manifest { spec: { backoffLimit?: number, activeDeadlineSeconds?: number, ttlSecondsAfterFinished?: number, template: PodTemplate } }
interface Service extends Manifest { spec: { selector: Labels, ports: Array<{ port: number, targetPort: number | string }> } }
interface PodDisruptionBudget extends Manifest {
  spec: { selector: { matchLabels: Labels }, maxUnavailable?: number, unhealthyPodEvictionPolicy?: string }
}
interface HorizontalPodAutoscaler extends Manifest {
  spec: { scaleTargetRef: { apiVersion: string, kind: string, name: string }, minReplicas: number, maxReplicas: number }
}
interface ConfigMap extends Manifest { data: Record<string, string> }
interface Secret extends Manifest { stringData: Record<string, string> }
interface PolicyPeer { podSelector?: { matchLabels?: Labels }, namespaceSelector?: { matchLabels?: Labels }, ipBlock?: unknown }
interface PolicyRule { to?: PolicyPeer[], from?: PolicyPeer[], ports?: Array<{ protocol?: string, port: number | string }> }
interface NetworkPolicy extends Manifest {
  spec: { podSelector: { matchLabels: Labels }, policyTypes: string[], ingress?: PolicyRule[], egress?: PolicyRule[] }
}

/** Every document of YAML text; any syntax error fails the run. */
function parseYaml (text: string, where: string): Manifest[] {
  return parseAllDocuments(text).map((document) => {
    const problems = [...document.errors, ...document.warnings]
    if (problems.length > 0) throw new Error(`${where}: ${problems.map((problem) => problem.message).join('; ')}`)
    return document.toJS() as Manifest
  }).filter((document) => document !== null)
}

/** What `kubectl apply -k <folder>` would send, folder relative to `base`. */
async function render (folder: string, base = root): Promise<Manifest[]> {
  const { stdout } = await run('kubectl', ['kustomize', join(base, folder)], { maxBuffer: 10 * 1024 * 1024 })
  return parseYaml(stdout, `kubectl kustomize ${folder}`)
}

function find<T extends Manifest> (manifests: Manifest[], kind: string, name: string | RegExp): T {
  const found = manifests.filter((manifest) => manifest.kind === kind &&
    (typeof name === 'string' ? manifest.metadata.name === name : name.test(manifest.metadata.name)))
  if (found.length !== 1) throw new Error(`expected one ${kind} ${String(name)}, found ${found.length}`)
  return found[0] as T
}

const app = await render(KUBERNETES)
const migration = await render(`${KUBERNETES}/migration`)
const pooler = await render(`${KUBERNETES}/pgbouncer`)
const examples = parseYaml(await readFile(join(root, EXAMPLES), 'utf8'), EXAMPLES) as Secret[]

const deployment = find<Deployment>(app, 'Deployment', 'users-service')
const service = find<Service>(app, 'Service', 'users-service')
const pdb = find<PodDisruptionBudget>(app, 'PodDisruptionBudget', 'users-service')
const hpa = find<HorizontalPodAutoscaler>(app, 'HorizontalPodAutoscaler', 'users-service')
const settings = find<ConfigMap>(app, 'ConfigMap', /^users-service-settings-/)
const job = find<Job>(migration, 'Job', /^users-service-migrate-/)
const bouncer = find<Deployment>(pooler, 'Deployment', 'pgbouncer')
const bouncerService = find<Service>(pooler, 'Service', 'pgbouncer')
const bouncerConfig = find<ConfigMap>(pooler, 'ConfigMap', /^pgbouncer-config-/)

function onlyContainer (template: PodTemplate): Container {
  const [container, ...others] = template.spec.containers
  if (container === undefined || others.length > 0) throw new Error('expected exactly one container')
  return container
}
const server = onlyContainer(deployment.spec.template)
const migrate = onlyContainer(job.spec.template)
const pgbouncer = onlyContainer(bouncer.spec.template)

/** The example Secret `name`'s key `key` (deploy/examples/secrets.yaml). */
function exampleSecret (name: string, key: string): string | undefined {
  return examples.find((secret) => secret.kind === 'Secret' && secret.metadata.name === name)?.stringData?.[key]
}

/** The environment a container's process sees, its Secrets filled from the examples. */
function envOf (container: Container): Record<string, string> {
  const env: Record<string, string> = {}
  for (const variable of container.env ?? []) {
    const { secretKeyRef, configMapKeyRef } = variable.valueFrom ?? {}
    const value = variable.value !== undefined
      ? String(variable.value)
      : secretKeyRef !== undefined
        ? exampleSecret(secretKeyRef.name, secretKeyRef.key)
        : configMapKeyRef !== undefined && configMapKeyRef.name === settings.metadata.name
          ? settings.data[configMapKeyRef.key]
          : undefined
    if (value !== undefined) env[variable.name] = value
  }
  // The examples show both key sources; an install sets one (two stop start-up).
  if (env.AUTH_JWKS_URL !== undefined) delete env.AUTH_PUBLIC_KEY
  return env
}

/** Only the values written in the manifest: no URL of a real service. */
function literalEnv (container: Container): Record<string, string> {
  const env: Record<string, string> = {}
  for (const variable of container.env ?? []) if (variable.value !== undefined) env[variable.name] = String(variable.value)
  return env
}

/** The configuration a container's process reads. */
function configOf (container: Container): Config {
  return loadConfig(envOf(container))
}

/** `labels` has every label of `selector`. */
function selects (selector: Labels, labels: Labels): boolean {
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

/** Mebibytes in a Kubernetes quantity such as 256Mi or 1Gi. */
function mebibytes (quantity: string | undefined): number {
  const match = /^(\d+)(Mi|Gi)$/.exec(quantity ?? '')
  if (match === null) throw new Error(`not a quantity in Mi or Gi: ${quantity}`)
  return Number(match[1]) * (match[2] === 'Gi' ? 1024 : 1)
}

interface Image { workdir?: string, user?: string, env: Record<string, string>, cmd: string[], expose: number[], copied: string[], labels: string[] }

/** The final stage of the Dockerfile: what the image runs, as whom, and where. */
async function readImage (): Promise<Image> {
  const text = await readFile(join(root, 'Dockerfile'), 'utf8')
  const lines = text.replace(/\\\r?\n/g, ' ').split(/\r?\n/).map((line) => line.trim())
  let image: Image = { env: {}, cmd: [], expose: [], copied: [], labels: [] }
  for (const line of lines) {
    const match = /^([A-Za-z]+)\s+(.*)$/.exec(line)
    if (match === null || line.startsWith('#')) continue
    const [, instruction = '', rest = ''] = match
    switch (instruction.toUpperCase()) {
      // Files copied in every stage count: .dockerignore must let them in.
      case 'FROM': image = { env: {}, cmd: [], expose: [], copied: image.copied, labels: [] }; break
      case 'WORKDIR': image.workdir = rest; break
      case 'USER': image.user = rest; break
      case 'ENV': { const [name = '', ...value] = rest.split('='); image.env[name] = value.join('='); break }
      case 'CMD': image.cmd = JSON.parse(rest); break
      case 'EXPOSE': image.expose.push(...rest.split(/\s+/).map(Number)); break
      case 'COPY': if (!rest.startsWith('--from')) image.copied.push(...rest.split(/\s+/).slice(0, -1)); break
      case 'LABEL': image.labels.push(...[...rest.matchAll(/([\w.-]+)=/g)].map((label) => label[1] ?? '')); break
    }
  }
  return image
}

async function yamlFilesUnder (folder: string): Promise<string[]> {
  const entries = await readdir(join(root, folder), { recursive: true, withFileTypes: true })
  return entries.filter((entry) => entry.isFile() && /\.ya?ml$/.test(entry.name))
    .map((entry) => relative(root, join(entry.parentPath, entry.name))).sort()
}

/** The README's section on releasing, and its shell blocks in order. */
async function releaseSection (): Promise<{ text: string, blocks: string[] }> {
  const readme = await readFile(join(root, 'README.md'), 'utf8')
  const start = readme.indexOf('### Releasing on Kubernetes')
  if (start < 0) throw new Error('README.md has no "### Releasing on Kubernetes" section')
  const rest = readme.slice(start + 1)
  const end = rest.search(/\n#{2,3} /)
  const text = end < 0 ? rest : rest.slice(0, end)
  const blocks = [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((block) => block[1] ?? '')
  return { text, blocks }
}

/** A free TCP port on the loopback interface. */
async function freePort (): Promise<number> {
  const probe = net.createServer().listen(0, '127.0.0.1')
  await once(probe, 'listening')
  const { port } = probe.address() as net.AddressInfo
  probe.close()
  await once(probe, 'close')
  return port
}

/** An address where no PostgreSQL answers: the connection is refused. */
async function deadDatabaseUrl (): Promise<string> {
  return `postgres://postgres@127.0.0.1:${await freePort()}/users`
}

// --- Blocker: one pinned image per release -----------------------------------

t.test('a release is one image by digest, the same for the Deployment and the migration Job', async (t) => {
  for (const [what, container] of [['Deployment', server], ['Job', migrate], ['PgBouncer', pgbouncer]] as const) {
    t.match(container.image, /@sha256:[0-9a-f]{64}$/, `${what}: ${container.image} is pinned by digest`)
    t.notMatch(container.image, /:latest(@|$)/, `${what}: never :latest`)
  }
  t.equal(migrate.image, server.image, 'the Job migrates with the image the Deployment runs')
  // The manifests name the image only; the release component pins it, once.
  for (const file of ['deployment.yaml', 'migration/job.yaml']) {
    const text = await readFile(join(root, KUBERNETES, file), 'utf8')
    t.match(text, /^\s+image: users-service$/m, `${file} leaves the image to the release`)
  }
  const version = deployment.spec.template.metadata.labels['app.kubernetes.io/version']
  t.ok(version, 'the pods carry the release\'s version')
  t.equal(job.spec.template.metadata.labels['app.kubernetes.io/version'], version)
})

// --- Blocker: a migration Job per release, run and waited on before the rollout

t.test('each release has its own migration Job, apart from what `apply -k deploy/kubernetes` applies', async (t) => {
  t.notOk(app.some((manifest) => manifest.kind === 'Job'), 'the Deployment\'s kustomization holds no Job')
  t.equal(migration.filter((manifest) => manifest.kind === 'Job').length, 1)
  const version = deployment.spec.template.metadata.labels['app.kubernetes.io/version']
  t.equal(job.metadata.name, `users-service-migrate-${version}`, 'the Job is named by the release')
  t.equal(job.spec.template.spec.restartPolicy, 'Never')
  t.equal(job.spec.backoffLimit, 3)
  t.equal(job.spec.activeDeadlineSeconds, 600)
  t.ok((job.spec.ttlSecondsAfterFinished ?? 0) > 0, 'finished Jobs are cleaned up')
})

t.test('the README\'s release steps, run on a copy: a new version renders a new Job and image', async (t) => {
  const { blocks } = await releaseSection()
  const write = blocks.find((block) => block.includes(`cat > ${KUBERNETES}/release/kustomization.yaml`))
  t.ok(write, 'a block writes the release file')
  const copy = await mkdtemp(join(tmpdir(), 'users-deploy-'))
  t.teardown(() => rm(copy, { recursive: true, force: true }))
  await cp(join(root, 'deploy'), join(copy, 'deploy'), { recursive: true })
  const digest = `sha256:${'ab'.repeat(32)}`
  // Only the heredoc: the build and push around it need a registry.
  const heredoc = /cat > [^\n]*<< EOF\n[\s\S]*?\nEOF\n/.exec(write ?? '')?.[0] ?? ''
  await run('bash', ['-euc', heredoc], {
    cwd: copy,
    env: { ...process.env, VERSION: '2.3.4', IMAGE: 'registry.example.com/team/users-service', DIGEST: digest }
  })
  const [released, releasedJob] = await Promise.all([render(KUBERNETES, copy), render(`${KUBERNETES}/migration`, copy)])
  const releasedServer = onlyContainer(find<Deployment>(released, 'Deployment', 'users-service').spec.template)
  const newJob = find<Job>(releasedJob, 'Job', /^users-service-migrate-/)
  t.equal(releasedServer.image, `registry.example.com/team/users-service@${digest}`)
  t.equal(onlyContainer(newJob.spec.template).image, releasedServer.image)
  t.equal(newJob.metadata.name, 'users-service-migrate-2.3.4', 'a new release is a new Job')
  t.not(newJob.metadata.name, job.metadata.name)
})

t.test('the README\'s first install creates every Secret and key the pods cannot start without', async (t) => {
  const { blocks } = await releaseSection()
  const install = blocks.find((block) => block.includes('kubectl create secret')) ?? ''
  const created = new Map<string, string[]>()
  for (const command of install.replace(/\\\n/g, ' ').split('\n')) {
    const match = /kubectl create secret generic (\S+)(.*)$/.exec(command)
    if (match !== null) created.set(match[1] ?? '', [...(match[2] ?? '').matchAll(/--from-literal=([\w.-]+)=/g)].map((key) => key[1] ?? ''))
  }
  const required: Array<[string, string]> = []
  for (const container of [server, migrate]) {
    for (const variable of container.env ?? []) {
      const reference = variable.valueFrom?.secretKeyRef
      if (reference !== undefined && reference.optional !== true) required.push([reference.name, reference.key])
    }
  }
  for (const volume of bouncer.spec.template.spec.volumes ?? []) {
    if (volume.secret !== undefined) required.push([volume.secret.secretName, 'userlist.txt'])
  }
  t.ok(required.length >= 3, 'the pods and PgBouncer need Secrets')
  for (const [name, key] of required) t.ok(created.get(name)?.includes(key), `the README creates ${name} with the key ${key}`)
})

t.test('the README migrates, waits with a timeout past the Job\'s deadline, and only then rolls', async (t) => {
  const { text, blocks } = await releaseSection()
  const release = blocks.find((block) => block.includes('kubectl wait'))
  t.ok(release, 'a block waits for the migration')
  // One && chain: a Job that fails or outlives the wait stops the release.
  const steps = (release ?? '').replace(/\\\n/g, ' ').split(/\s*&&\s*/).map((step) => step.replace(/^#.*\n/gm, '').trim())
  const migrateAt = steps.findIndex((step) => step === `kubectl apply -k ${KUBERNETES}/migration`)
  const waitAt = steps.findIndex((step) => step.startsWith('kubectl wait --for=condition=complete'))
  const rollAt = steps.findIndex((step) => step === `kubectl apply -k ${KUBERNETES}`)
  t.ok(migrateAt >= 0, 'the Job is applied')
  t.equal(waitAt, migrateAt + 1, 'then waited for, in the same && chain')
  t.equal(rollAt, waitAt + 1, 'then the Deployment changes, only if the wait succeeded')
  const wait = steps[waitAt] ?? ''
  t.match(wait, /job\/users-service-migrate-"?\$VERSION"?/, 'it waits for this release\'s Job')
  const timeout = /--timeout=(\d+)s/.exec(wait)
  t.ok(timeout, 'with an explicit --timeout in seconds')
  t.ok(Number(timeout?.[1]) > (job.spec.activeDeadlineSeconds ?? Infinity),
    'longer than the Job may run, so a failing Job ends as failed, not as a wait timing out first')
  t.match(text, /First install/)
  t.match(text, /Upgrade/)
})

// --- Should: replicas, memory, spread, PDB, Secrets, NetworkPolicy, connections

t.test('the autoscaler owns the replica count', async (t) => {
  t.equal(deployment.spec.replicas, undefined, 'the Deployment sets no replicas for an apply to reset')
  t.strictSame(hpa.spec.scaleTargetRef, { apiVersion: deployment.apiVersion, kind: 'Deployment', name: deployment.metadata.name })
  t.ok(hpa.spec.minReplicas >= 2, 'at least two pods')
  t.ok(hpa.spec.maxReplicas >= hpa.spec.minReplicas)
  t.ok(server.resources?.requests?.cpu, 'CPU utilization needs a CPU request')
  const { text } = await releaseSection()
  t.match(text, /kubectl apply edit-last-applied deployment\/users-service|set-last-applied/,
    'the README says how to move an applied Deployment over')
})

t.test('memory: request and limit from the measurement, a heap ceiling V8 collects under', async (t) => {
  const comment = await readFile(join(root, KUBERNETES, 'deployment.yaml'), 'utf8')
  const measured = /Measured peak RSS: (\d+) MiB, of which (\d+) MiB outside the heap/.exec(comment)
  t.ok(measured, 'deployment.yaml gives the measurement it is sized from')
  const peakRss = Number(measured?.[1])
  const outsideHeap = Number(measured?.[2])
  const request = mebibytes(server.resources?.requests?.memory)
  const limit = mebibytes(server.resources?.limits?.memory)
  t.equal(request, limit, 'a pod never runs above its request, where evictions start')
  t.ok(request >= peakRss * 1.25, `${request}Mi is the measured ${peakRss} MiB with a quarter to spare`)
  const image = await readImage()
  const options = envOf(server).NODE_OPTIONS ?? ''
  for (const flag of (image.env.NODE_OPTIONS ?? '').split(/\s+/)) {
    t.ok(options.split(/\s+/).includes(flag), `NODE_OPTIONS keeps the image's ${flag}`)
  }
  const oldSpace = Number(/--max-old-space-size=(\d+)/.exec(options)?.[1])
  // V8's young generation is three semi-spaces.
  const youngSpace = 3 * Number(/--max-semi-space-size=(\d+)/.exec(options)?.[1] ?? 16)
  t.ok(oldSpace > 0, '--max-old-space-size is set')
  t.ok(oldSpace + youngSpace + outsideHeap < limit,
    `the heap ceiling ${oldSpace} + ${youngSpace} MiB and the ${outsideHeap} MiB outside it fit the ${limit}Mi limit`)
  t.ok(oldSpace >= peakRss - outsideHeap, 'and leave the measured heap room')
})

t.test('the pods spread over zones and nodes, each rollout on its own', async (t) => {
  for (const [what, template] of [['users-service', deployment.spec.template], ['pgbouncer', bouncer.spec.template]] as const) {
    const constraints = template.spec.topologySpreadConstraints ?? []
    for (const key of ['topology.kubernetes.io/zone', 'kubernetes.io/hostname']) {
      const constraint = constraints.find((candidate) => candidate.topologyKey === key)
      t.ok(constraint, `${what}: spread over ${key}`)
      t.strictSame(constraint?.matchLabelKeys, ['pod-template-hash'], `${what}: ${key} counts the new ReplicaSet's pods`)
      t.ok(selects(constraint?.labelSelector.matchLabels ?? { none: 'x' }, template.metadata.labels), `${what}: ${key} counts its own pods`)
      t.equal(constraint?.maxSkew, 1)
    }
  }
})

t.test('a budget that lets a drain evict unready pods', async (t) => {
  for (const budget of [pdb, find<PodDisruptionBudget>(pooler, 'PodDisruptionBudget', 'pgbouncer')]) {
    t.equal(budget.spec.unhealthyPodEvictionPolicy, 'AlwaysAllow', `${budget.metadata.name}: a database outage does not block drains`)
    t.equal(budget.spec.maxUnavailable, 1)
  }
  t.ok(selects(pdb.spec.selector.matchLabels, deployment.spec.template.metadata.labels))
  t.notOk(selects(pdb.spec.selector.matchLabels, job.spec.template.metadata.labels))
})

t.test('no Secret is applied from the repository; the examples are the names and keys the pods read', async (t) => {
  for (const file of await yamlFilesUnder(KUBERNETES)) {
    const text = await readFile(join(root, file), 'utf8')
    t.notMatch(text, /^kind:\s*Secret\s*$/m, `${file} holds no Secret (kubectl apply -f -R would apply it)`)
  }
  for (const rendered of [app, migration, pooler]) t.notOk(rendered.some((manifest) => manifest.kind === 'Secret'))

  for (const [what, container] of [['Deployment', server], ['Job', migrate]] as const) {
    for (const variable of container.env ?? []) {
      const reference = variable.valueFrom?.secretKeyRef
      if (reference === undefined) continue
      const value = exampleSecret(reference.name, reference.key)
      t.type(value, 'string', `${what}: ${variable.name} from ${reference.name}/${reference.key} has an example`)
      t.match(value, /CHANGE_ME/, `${what}: ${variable.name}'s example says it is a placeholder`)
    }
  }
  const auth = bouncer.spec.template.spec.volumes?.find((volume) => volume.secret !== undefined)?.secret?.secretName ?? ''
  t.match(exampleSecret(auth, 'userlist.txt'), /^"users" "CHANGE_ME"/, 'PgBouncer\'s userlist has an example')
  const databaseUrl = server.env?.find((variable) => variable.name === 'DATABASE_URL')
  t.equal(databaseUrl?.value, undefined, 'DATABASE_URL is never written in a manifest')
  t.strictSame(databaseUrl?.valueFrom, { secretKeyRef: { name: 'users-service-db', key: 'url' } })
})

/** The policy selecting `labels`' pods, and whether one of its egress rules lets TCP to `port` out. */
function egressAllows (policies: NetworkPolicy[], labels: Labels, port: number, podLabels?: Labels): boolean {
  const policy = policies.find((candidate) => selects(candidate.spec.podSelector.matchLabels, labels))
  return (policy?.spec.egress ?? []).some((rule) =>
    (rule.ports ?? []).some((allowed) => allowed.port === port && (allowed.protocol ?? 'TCP') === 'TCP') &&
    (rule.to === undefined || (podLabels !== undefined &&
      rule.to.some((peer) => selects(peer.podSelector?.matchLabels ?? { none: 'x' }, podLabels)))))
}

/** The TCP port of each URL in a comma-separated list. */
function ports (urls: string): number[] {
  const defaults: Record<string, number> = { 'https:': 443, 'http:': 80, 'postgres:': 5432, 'redis:': 6379, 'amqp:': 5672, 'amqps:': 5671 }
  return urls.split(',').map((text) => {
    const url = new URL(text)
    return url.port === '' ? defaults[url.protocol] ?? -1 : Number(url.port)
  })
}

t.test('the NetworkPolicies let in the service port and let out to every URL the pods are given', async (t) => {
  const policies = [...app, ...migration, ...pooler].filter((manifest) => manifest.kind === 'NetworkPolicy') as NetworkPolicy[]
  const podLabels = deployment.spec.template.metadata.labels
  const bouncerLabels = bouncer.spec.template.metadata.labels
  const ownPolicy = policies.find((policy) => selects(policy.spec.podSelector.matchLabels, podLabels))
  t.strictSame(ownPolicy?.spec.policyTypes, ['Ingress', 'Egress'], 'the service\'s pods are held both ways')
  const ingressPorts = (ownPolicy?.spec.ingress ?? []).flatMap((rule) => rule.ports ?? [])
  t.strictSame(ingressPorts.map((allowed) => containerPort(server, allowed.port)), [configOf(server).port],
    'in: only the port the service listens on')
  for (const [what, labels] of [['users-service', podLabels], ['migration', job.spec.template.metadata.labels], ['pgbouncer', bouncerLabels]] as const) {
    t.ok(egressAllows(policies, labels, 53, { 'k8s-app': 'kube-dns' }), `${what}: DNS over TCP`)
    const policy = policies.find((candidate) => selects(candidate.spec.podSelector.matchLabels, labels))
    t.ok(policy?.spec.egress?.some((rule) => rule.ports?.some((allowed) => allowed.port === 53 && allowed.protocol === 'UDP')), `${what}: DNS over UDP`)
  }

  // Every URL of the service, from its ConfigMap and the example Secrets.
  const env = envOf(server)
  const urls = ['DATABASE_READ_URL', 'REDIS_URL', 'EVENTS_AMQP_URL', 'AUTH_JWKS_URL', 'OTEL_EXPORTER_OTLP_ENDPOINT']
  for (const name of urls) {
    t.type(env[name], 'string', `${name} has an example value`)
    for (const port of ports(env[name] ?? '')) t.ok(egressAllows(policies, podLabels, port), `users-service: out to ${name}'s port ${port}`)
  }
  // DATABASE_URL goes to PgBouncer's pods, which let the service in.
  const [poolerPort] = ports(env.DATABASE_URL ?? '')
  t.equal(new URL(env.DATABASE_URL ?? '').hostname, bouncerService.metadata.name, 'DATABASE_URL is PgBouncer\'s Service')
  const servicePort = bouncerService.spec.ports.find((candidate) => candidate.port === poolerPort)
  t.ok(servicePort, `PgBouncer's Service has port ${poolerPort}`)
  const podPort = containerPort(pgbouncer, servicePort?.targetPort ?? -1) ?? -1
  t.ok(egressAllows(policies, podLabels, podPort, bouncerLabels), `users-service: out to PgBouncer's pods on ${podPort}`)
  const bouncerPolicy = policies.find((policy) => selects(policy.spec.podSelector.matchLabels, bouncerLabels))
  t.ok(bouncerPolicy?.spec.ingress?.some((rule) =>
    rule.from?.some((peer) => selects(peer.podSelector?.matchLabels ?? { none: 'x' }, podLabels)) &&
    rule.ports?.some((allowed) => containerPort(pgbouncer, allowed.port) === podPort)), 'PgBouncer lets the service in')
  t.notOk(bouncerPolicy?.spec.ingress?.some((rule) => rule.from === undefined), 'and no one else')

  // The migration Job and PgBouncer reach PostgreSQL itself.
  for (const port of ports(envOf(migrate).MIGRATIONS_DATABASE_URL ?? '')) {
    t.ok(egressAllows(policies, job.spec.template.metadata.labels, port), `migration: out to MIGRATIONS_DATABASE_URL's port ${port}`)
  }
  const primary = /^users\s*=.*\bport=(\d+)/m.exec(bouncerConfig.data['pgbouncer.ini'] ?? '')
  t.ok(egressAllows(policies, bouncerLabels, Number(primary?.[1])), 'pgbouncer: out to its [databases] port')
})

/** `key = value` settings of pgbouncer.ini. */
function iniSettings (text: string): Record<string, string> {
  const settings: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const match = /^\s*([a-z_]+)\s*=\s*(.*?)\s*$/.exec(line)
    if (match !== null && !line.trimStart().startsWith(';')) settings[match[1] ?? ''] = match[2] ?? ''
  }
  return settings
}

t.test('connections fit PgBouncer and PostgreSQL during a rollout at the autoscaler\'s maximum', async (t) => {
  const ini = iniSettings(bouncerConfig.data['pgbouncer.ini'] ?? '')
  t.equal(ini.pool_mode, 'transaction')
  t.equal(envOf(server).DATABASE_POOLER, 'transaction', 'the service knows a transaction pooler sits in between')
  t.equal(String(pgbouncer.ports?.[0]?.containerPort), ini.listen_port, 'PgBouncer listens on its container port')
  const { database } = configOf(server)
  const perPod = database.poolMax + database.readPipelineConnections
  // Old pods terminate only after new ones are ready, and each keeps its
  // pools for up to its grace period: in a fast rollout every old pod can
  // still be terminating while the new ones run.
  const surge = Number(deployment.spec.strategy.rollingUpdate.maxSurge)
  const clients = (2 * hpa.spec.maxReplicas + surge) * perPod
  t.ok(clients <= Number(ini.max_client_conn),
    `(2 x ${hpa.spec.maxReplicas} + ${surge}) pods x ${perPod} = ${clients} clients <= max_client_conn ${ini.max_client_conn}`)
  // PostgreSQL's default max_connections, 100, less 3 for superusers, less the
  // migration Job's one; PgBouncer's surge pod during its own rollout included.
  const bouncerPods = (bouncer.spec.replicas ?? 1) + Number(bouncer.spec.strategy.rollingUpdate.maxSurge)
  const servers = bouncerPods * Number(ini.max_db_connections)
  t.ok(servers + 1 <= 97, `${bouncerPods} PgBouncer pods x max_db_connections ${ini.max_db_connections} + 1 = ${servers + 1} <= 97`)
  t.ok(Number(ini.default_pool_size) + Number(ini.reserve_pool_size) <= Number(ini.max_db_connections))
  t.match(ini.ignore_startup_parameters, /statement_timeout/, 'PgBouncer accepts node-postgres\' statement_timeout')
  const { text } = await releaseSection()
  t.match(text, /max_client_conn/, 'the README shows the arithmetic')
})

t.test('the rendered pgbouncer.ini runs: Debian\'s PgBouncer pools in transaction mode and takes node-postgres\' statement_timeout', async (t) => {
  // What an operator changes (the primary's host) and what this machine
  // needs (a port, a userlist file, an admin for SHOW); the rest as shipped.
  const folder = await makeThrowawayFolder('users-pgbouncer-')
  t.teardown(() => rm(folder, { recursive: true, force: true }))
  const database = new URL(await createTestDatabase(t))
  const port = await freePort()
  const user = decodeURIComponent(database.username)
  const ini = (bouncerConfig.data['pgbouncer.ini'] ?? '')
    // The server's own login where it asks for one (the embedded PostgreSQL does).
    .replace(/^users\s*=.*$/m, `users = host=${database.hostname} port=${database.port || 5432} dbname=${database.pathname.slice(1)}` +
      (database.password === '' ? '' : ` user=${user} password=${decodeURIComponent(database.password)}`))
    .replace(/^listen_addr\s*=.*$/m, 'listen_addr = 127.0.0.1')
    .replace(/^listen_port\s*=.*$/m, `listen_port = ${port}`)
    .replace(/^auth_file\s*=.*$/m, `auth_file = ${join(folder, 'userlist.txt')}\nadmin_users = ${user}`)
  await writeFile(join(folder, 'pgbouncer.ini'), ini)
  await writeFile(join(folder, 'userlist.txt'), `"${user}" "secret"\n`)
  await chmod(join(folder, 'pgbouncer.ini'), 0o644)
  await chmod(join(folder, 'userlist.txt'), 0o644)

  // PgBouncer refuses to run as root: as the machine's postgres user then.
  const ids = userInfo().uid === 0
    ? await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]).then(([uid, gid]) =>
      ({ uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) }))
    : {}
  const bouncerProcess = spawn('pgbouncer', [join(folder, 'pgbouncer.ini')], { ...ids, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  bouncerProcess.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  bouncerProcess.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  t.teardown(async () => {
    if (bouncerProcess.exitCode === null) {
      bouncerProcess.kill('SIGINT')
      await once(bouncerProcess, 'exit')
    }
  })

  // node-postgres sends statement_timeout as a startup parameter, as the
  // service does; PgBouncer would refuse the connection if it were not ignored.
  const connect = async (name: string): Promise<pg.Client> => {
    for (let attempt = 0; ; attempt++) {
      // A bounded wait: PgBouncer holds a client while its server login retries.
      const client = new pg.Client({ host: '127.0.0.1', port, user, password: 'secret', database: name, statement_timeout: 5000, connectionTimeoutMillis: 5_000 })
      client.on('error', () => {})
      try {
        await client.connect()
        return client
      } catch (error) {
        await client.end().catch(() => {})
        if (bouncerProcess.exitCode !== null || attempt >= 100) throw new Error(`${(error as Error).message}\n${output}`)
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
  }
  const client = await connect('users')
  t.teardown(() => client.end())
  const { rows } = await client.query('SELECT 1 + 1 AS two')
  t.equal(rows[0].two, 2, 'a query through PgBouncer')
  await client.query('BEGIN')
  await client.query('CREATE TEMPORARY TABLE scratch (n int) ON COMMIT DROP')
  await client.query('COMMIT')

  const admin = await connect('pgbouncer')
  t.teardown(() => admin.end())
  const pools = await admin.query('SHOW POOLS')
  t.equal(pools.rows.find((row) => row.database === 'users')?.pool_mode, 'transaction', 'the service\'s pool is per transaction')
  const databases = await admin.query('SHOW DATABASES')
  const users = databases.rows.find((row) => row.name === 'users')
  t.equal(Number(users?.max_connections), Number(iniSettings(ini).max_db_connections), 'at most max_db_connections to PostgreSQL')
  t.notMatch(output, /ERROR|FATAL/, 'PgBouncer logs no error about its configuration')
})

// --- Every variable is one the code reads ----------------------------------

t.test('every variable the pods set is one the service reads, with a value it accepts', async (t) => {
  const known = Object.keys(ConfigSchema.properties)
  for (const [what, container] of [['Deployment', server], ['Job', migrate]] as const) {
    t.equal(container.envFrom, undefined, `${what}: no envFrom, whose names nothing checks`)
    const names = (container.env ?? []).map((variable) => variable.name)
    t.equal(new Set(names).size, names.length, `${what}: each variable set once`)
    for (const variable of container.env ?? []) {
      t.ok(known.includes(variable.name) || READ_BY_NODE.includes(variable.name),
        `${what}: ${variable.name} is read by the service`)
      if (variable.value !== undefined) t.type(variable.value, 'string', `${what}: ${variable.name} is text, as Kubernetes requires`)
      const reference = variable.valueFrom?.configMapKeyRef
      if (reference !== undefined) {
        t.equal(reference.name, settings.metadata.name)
        t.equal(reference.key, variable.name, `${what}: settings.env names ${variable.name} as the pods do`)
      }
    }
    t.doesNotThrow(() => configOf(container), `${what}: the configuration loads`)
    t.equal(configOf(container).production, true, `${what}: NODE_ENV=production, no embedded database`)
  }
  for (const key of Object.keys(settings.data)) {
    t.ok(server.env?.some((variable) => variable.valueFrom?.configMapKeyRef?.key === key), `settings.env's ${key} is read by the pods`)
  }
  t.equal(envOf(server).MIGRATE_ON_START, 'false', 'the Job migrates, not the pods')
  t.equal(configOf(server).migrateOnStart, false)
  // The explicit choice issue 14 asks for: a key source, or AUTH_MODE=none.
  const auth = envOf(server)
  t.ok(auth.AUTH_MODE === 'none' || auth.AUTH_JWKS_URL !== undefined || auth.AUTH_PUBLIC_KEY !== undefined,
    'production pods name a key source or AUTH_MODE=none')
  t.ok(auth.AUTH_ISSUER !== undefined && auth.AUTH_AUDIENCE !== undefined, 'with the issuer and audience tokens must have')
})

// --- What was already right, kept so --------------------------------------

t.test('the probes reach GET routes of the real app, on the port the service listens on', async (t) => {
  const config = configOf(server)
  const port = server.ports?.find((candidate) => candidate.containerPort === config.port)
  t.equal(port?.name, 'http', `the container port named http is PORT (${config.port})`)
  t.ok((await readImage()).expose.includes(config.port), 'the Dockerfile EXPOSEs it')
  const annotations = deployment.spec.template.metadata.annotations ?? {}
  t.equal(annotations['prometheus.io/port'], String(config.port), 'Prometheus scrapes that port')
  const probes = { startup: server.startupProbe, readiness: server.readinessProbe, liveness: server.livenessProbe }
  for (const [name, probe] of Object.entries(probes)) {
    t.equal(containerPort(server, probe?.httpGet?.port ?? -1), config.port, `${name} probe port is the listening port`)
  }
  t.equal(probes.liveness?.httpGet?.path, '/health/live', 'liveness never touches the database')
  t.equal(probes.readiness?.httpGet?.path, '/health/ready')
  t.equal(probes.startup?.httpGet?.path, '/health/live', 'startup waits for the process, not the database')

  const env = { ...literalEnv(server), NODE_ENV: 'test' }
  const built = await buildApp(testConfig(await createTestDatabase(t), env), { logger: false })
  t.teardown(() => built.close())
  const paths = [...Object.values(probes).map((probe) => probe?.httpGet?.path ?? ''), annotations['prometheus.io/path'] ?? '']
  for (const url of paths) {
    const response = await built.inject({ method: 'GET', url })
    t.equal(response.statusCode, 200, `GET ${url} answers 200 on a migrated database`)
  }
})

t.test('with the database down, the liveness probe passes and the readiness probe fails', async (t) => {
  const env = { ...literalEnv(server), NODE_ENV: 'test', DATABASE_CONNECT_TIMEOUT_MS: '500' }
  const built = await buildApp(testConfig(await deadDatabaseUrl(), env), { logger: false })
  t.teardown(() => built.close())
  t.equal((await built.inject({ method: 'GET', url: server.livenessProbe?.httpGet?.path ?? '' })).statusCode, 200)
  t.equal((await built.inject({ method: 'GET', url: server.readinessProbe?.httpGet?.path ?? '' })).statusCode, 503)
})

t.test('the pods run the image\'s programs: its CMD for the server, dist/migrate.js for the Job', async (t) => {
  const image = await readImage()
  t.strictSame(image.cmd, ['node', 'dist/server.js'])
  t.equal(server.command, undefined, 'the Deployment keeps the image\'s command')
  t.strictSame(migrate.command, ['node', 'dist/migrate.js'])
  t.equal(image.workdir, '/app')
  t.ok(image.copied.includes('migrations'), 'the image holds migrations/ for the Job')
  const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8'))
  t.equal(pkg.scripts.migrate, 'node dist/migrate.js', '`npm run migrate` is what the Job runs')
})

t.test('shutdown fits in the grace period: a preStop sleep, then SHUTDOWN_GRACE_MS', async (t) => {
  const sleep = server.lifecycle?.preStop?.sleep?.seconds ?? 0
  t.ok(sleep > 0, 'the kubelet pauses before SIGTERM, with no process of its own')
  t.equal(server.lifecycle?.preStop?.exec, undefined, 'no shell or node process for a pause')
  const graceSeconds = deployment.spec.template.spec.terminationGracePeriodSeconds ?? 30
  t.ok(graceSeconds * 1000 > sleep * 1000 + configOf(server).shutdownGraceMs,
    `terminationGracePeriodSeconds ${graceSeconds} s > ${sleep} s + SHUTDOWN_GRACE_MS`)
})

t.test('the Service, the PDB and the HPA reach the Deployment\'s pods, and never the Job\'s', async (t) => {
  const podLabels = deployment.spec.template.metadata.labels
  const jobLabels = job.spec.template.metadata.labels
  t.ok(selects(deployment.spec.selector.matchLabels, podLabels))
  t.notOk(selects(deployment.spec.selector.matchLabels, jobLabels))
  t.strictSame(Object.keys(deployment.spec.selector.matchLabels).sort(), ['app.kubernetes.io/component', 'app.kubernetes.io/name'],
    'the selector an existing Deployment was created with (it cannot change)')
  t.ok(selects(service.spec.selector, podLabels))
  t.notOk(selects(service.spec.selector, jobLabels))
  for (const port of service.spec.ports) t.equal(containerPort(server, port.targetPort), configOf(server).port)
  t.ok(selects(bouncerService.spec.selector, bouncer.spec.template.metadata.labels), 'PgBouncer\'s Service reaches its pods')
  t.strictSame(deployment.spec.strategy.rollingUpdate, { maxUnavailable: 0, maxSurge: 1 }, 'rollouts never lower capacity')
})

t.test('the pods run as the image\'s numeric user, read-only, without privileges', async (t) => {
  const image = await readImage()
  t.match(image.user, /^\d+(:\d+)?$/, 'the image\'s USER is numeric, which runAsNonRoot can check')
  const uid = Number(image.user?.split(':')[0])
  t.not(uid, 0)
  for (const [what, template] of [['Deployment', deployment.spec.template], ['Job', job.spec.template], ['PgBouncer', bouncer.spec.template]] as const) {
    t.equal(template.spec.automountServiceAccountToken, false, `${what}: no API token`)
    for (const container of template.spec.containers) {
      const context = { ...template.spec.securityContext, ...container.securityContext }
      t.equal(context.runAsNonRoot, true, `${what}: runAsNonRoot`)
      if (what !== 'PgBouncer') t.equal(context.runAsUser, uid, `${what}: runs as the image's user`)
      t.equal(context.readOnlyRootFilesystem, true, `${what}: read-only root filesystem`)
      t.equal(context.allowPrivilegeEscalation, false)
      t.ok(context.capabilities?.drop?.includes('ALL'))
      t.equal(context.capabilities?.add, undefined)
      t.equal(context.seccompProfile?.type, 'RuntimeDefault')
      t.ok(container.volumeMounts?.some((mount) => mount.mountPath === '/tmp'), `${what}: /tmp is writable`)
    }
  }
})

// --- Nice ------------------------------------------------------------------

t.test('a ServiceAccount of its own, version and instance labels, an image that says what it is', async (t) => {
  const account = find<Manifest>(app, 'ServiceAccount', 'users-service')
  t.equal(account.automountServiceAccountToken, false)
  t.equal(deployment.spec.template.spec.serviceAccountName, 'users-service')
  t.equal(job.spec.template.spec.serviceAccountName, 'users-service')
  t.strictSame(find<Manifest>(migration, 'ServiceAccount', 'users-service'), account, 'the Job\'s kustomization applies the same one')
  for (const manifest of [...app, ...migration]) {
    const labels = manifest.metadata.labels ?? {}
    t.equal(labels['app.kubernetes.io/instance'], 'users-service', `${manifest.kind}/${manifest.metadata.name}: instance label`)
    t.equal(labels['app.kubernetes.io/version'], deployment.spec.template.metadata.labels['app.kubernetes.io/version'],
      `${manifest.kind}/${manifest.metadata.name}: version label`)
  }
  for (const manifest of pooler) {
    t.equal(manifest.metadata.labels?.['app.kubernetes.io/version'], undefined, `${manifest.kind}/${manifest.metadata.name}: a release does not restart PgBouncer`)
  }
  const image = await readImage()
  for (const label of ['title', 'description', 'version', 'revision']) {
    t.ok(image.labels.includes(`org.opencontainers.image.${label}`), `the image has the OCI label ${label}`)
  }
  const ignore = (await readFile(join(root, '.dockerignore'), 'utf8')).split('\n').filter((line) => line !== '' && !line.startsWith('#'))
  t.equal(ignore[0], '*', '.dockerignore is an allow-list')
  for (const source of image.copied) {
    t.ok(ignore.some((line) => line.replace(/^!/, '').replace(/\/$/, '') === source.replace(/\/$/, '')),
      `.dockerignore lets ${source} in, as the Dockerfile needs`)
  }
})
