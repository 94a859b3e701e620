import { readFileSync } from 'node:fs'
import os from 'node:os'

/**
 * How many CPUs this process may keep busy: the CPUs it may run on, capped
 * by a CPU quota (a container's `resources.limits.cpu`, which Node's
 * availableParallelism does not see). Used for WEB_CONCURRENCY=auto, so a
 * pod limited to one CPU runs one process on a 64-core node, not 64.
 */
export function usableCpus (cgroupRoot = '/sys/fs/cgroup'): number {
  const quota = cpuQuota(cgroupRoot)
  const cpus = os.availableParallelism()
  return quota === undefined ? cpus : Math.max(1, Math.min(cpus, Math.ceil(quota)))
}

/** The cgroup's CPU quota in CPUs (2.5 for "250000 100000"), or undefined for none. */
export function cpuQuota (cgroupRoot: string): number | undefined {
  // cgroup v2: "max 100000" or "<quota> <period>".
  const v2 = readText(`${cgroupRoot}/cpu.max`)
  if (v2 !== undefined) {
    const [quota, period] = v2.split(/\s+/)
    return perPeriod(quota, period)
  }
  // cgroup v1: quota -1 means none.
  for (const folder of ['cpu', 'cpu,cpuacct']) {
    const quota = readText(`${cgroupRoot}/${folder}/cpu.cfs_quota_us`)
    if (quota !== undefined) return perPeriod(quota, readText(`${cgroupRoot}/${folder}/cpu.cfs_period_us`))
  }
  return undefined
}

function perPeriod (quota: string | undefined, period: string | undefined): number | undefined {
  const share = Number(quota) / Number(period)
  return Number.isFinite(share) && share > 0 ? share : undefined
}

function readText (path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return undefined
  }
}
