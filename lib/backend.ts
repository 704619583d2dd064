/** What this build and this machine can do. Touches CUDA at first call, never at load. */
import { KvsqRangeError, show } from './errors';
import { native } from './native';

export interface CudaDevice {
  name: string;
  /** e.g. "9.0" */
  computeCapability: string;
  memoryBytes: number;
  /** Whether this build has CUDA code that runs on it (its architectures cover the capability). */
  runnable: boolean;
  /** Why not, when not runnable (ops on it fail with KVSQ_CUDA and this text). */
  why?: string;
  /**
   * The sm_90a tensor-core (wgmma) kernels on this device: 'off' (not a 9.0
   * device, a build without 90a code, or KVSQ_NO_WGMMA set), 'unchecked'
   * until a kernel first wants them, then 'ok', or 'failed: ...' when the
   * device did not compute the one-time layout check's product exactly (its
   * kernels then run on mma.sync: same results, slower).
   */
  wgmma: string;
}

export interface BackendInfo {
  version: string;
  cpu: { threads: number; hardwareThreads: number; avx2: boolean; fma: boolean; f16c: boolean; avx512f: boolean; simd: string };
  cuda: {
    compiled: boolean;
    available: boolean;
    /** Why CUDA is unavailable ("driver not installed", "no CUDA device", ...); null when available. */
    reason: string | null;
    runtimeVersion: number;
    driverVersion: number;
    archs: string;
    devices: CudaDevice[];
  };
  build: { cuda: boolean; cudaArchs: string; napiVersion: number; compiler?: string };
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
const pkg = require('../package.json') as { version: string };

export const backend = {
  info(): BackendInfo {
    const raw = native.backendInfo() as Omit<BackendInfo, 'version'>;
    return { version: pkg.version, ...raw };
  },
  /** Threads of the CPU kernel pool (0 = default: KVSQ_THREADS or all cores). Returns the count in use. */
  setThreads(n: number): number {
    if (!Number.isInteger(n) || n < 0 || n > 256) throw new KvsqRangeError(`setThreads: expected an integer in [0, 256], got ${show(n)}`);
    return native.setThreads(n);
  },
  /**
   * The CPU rooflines, measured now on the kernel thread pool (best of a few
   * runs): FMA peak, streaming copy (read + write bytes) and read bandwidth.
   */
  measureRoofline(o: { millis?: number; bytes?: number } = {}): { fmaGflops: number; copyGbps: number; readGbps: number; threads: number; simd: boolean } {
    return (native as unknown as { measureRoofline(o: unknown): ReturnType<typeof backend.measureRoofline> }).measureRoofline(o);
  },
  /** @internal tests: force the portable (0) or SIMD (1) CPU paths; -1 restores detection. */
  forceSimd(mode: -1 | 0 | 1): void {
    native.forceSimd(mode);
  },
};
