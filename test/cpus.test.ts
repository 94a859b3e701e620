import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { cpuQuota, usableCpus } from '../src/cpus.js'

/** A fake /sys/fs/cgroup holding the given files. */
async function cgroup (t: Test, files: Record<string, string>): Promise<string> {
  const root = await mkdtemp(join(os.tmpdir(), 'cgroup-'))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(root, path, '..'), { recursive: true })
    await writeFile(join(root, path), `${text}\n`)
  }
  return root
}

t.test('a cgroup v2 quota, or none', async (t) => {
  t.equal(cpuQuota(await cgroup(t, { 'cpu.max': '150000 100000' })), 1.5)
  t.equal(cpuQuota(await cgroup(t, { 'cpu.max': 'max 100000' })), undefined, 'max means no limit')
})

t.test('a cgroup v1 quota, or none', async (t) => {
  t.equal(cpuQuota(await cgroup(t, { 'cpu/cpu.cfs_quota_us': '50000', 'cpu/cpu.cfs_period_us': '100000' })), 0.5)
  t.equal(cpuQuota(await cgroup(t, { 'cpu,cpuacct/cpu.cfs_quota_us': '200000', 'cpu,cpuacct/cpu.cfs_period_us': '100000' })), 2)
  t.equal(cpuQuota(await cgroup(t, { 'cpu/cpu.cfs_quota_us': '-1', 'cpu/cpu.cfs_period_us': '100000' })), undefined, '-1 means no limit')
})

t.test('usable CPUs: the quota rounded up, never more than the CPUs, never less than one', async (t) => {
  const cpus = os.availableParallelism()
  t.equal(usableCpus(await cgroup(t, { 'cpu.max': '50000 100000' })), 1, 'half a CPU still runs one process')
  t.equal(usableCpus(await cgroup(t, { 'cpu.max': '150000 100000' })), Math.min(cpus, 2))
  t.equal(usableCpus(await cgroup(t, { 'cpu.max': `${(cpus + 8) * 100000} 100000` })), cpus, 'a quota above the CPUs')
  t.equal(usableCpus(await cgroup(t, {})), cpus, 'no cgroup files: every CPU')
})
