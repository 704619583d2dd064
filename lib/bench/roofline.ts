/**
 * The machine's rooflines, measured in the same run as the kernels.
 *
 * Copy bandwidth: two worker threads (one per core of the 2-core machines
 * this targets; `threads` in general) each Buffer.copy their half of a large
 * SharedArrayBuffer into another, started together; read + write bytes are
 * counted; best of several repetitions. Buffer.copy is a memmove in libuv's
 * process, so this is the same figure as a native 2-thread memcpy, measured
 * without any native helper. (ops.gather was considered: it also sorts its
 * destination slots to check they are distinct, which is not a copy.)
 *
 * FMA peak cannot be measured from JavaScript. If the native micro-benchmark
 * bench_window_scores (bench/native, built by the native CMake build into
 * build-native/) is present, it is started, its first lines ("measured FMA
 * peak ...: X GFLOP/s; copy bandwidth: Y GB/s") are read, and it is stopped;
 * otherwise the peak is reported as unavailable. Nothing is derived from the
 * CPU's clock.
 */
import { Worker } from 'worker_threads';
import { backend } from '../backend';

export interface CopyRoofline {
  gbps: number;
  method: string;
  bytes: number;
  threads: number;
}

const WORKER = `
const { parentPort, workerData } = require('worker_threads');
const { src, dst, off, len, flag } = workerData;
const s = Buffer.from(src, off, len);
const d = Buffer.from(dst, off, len);
const f = new Int32Array(flag);
let seen = 0;
parentPort.on('message', (m) => {
  if (m === 'exit') { parentPort.close(); return; }
  // wait for the start signal (generation counter), then copy
  Atomics.wait(f, 0, seen);
  seen = Atomics.load(f, 0);
  s.copy(d);
  parentPort.postMessage('done');
});
`;

/** 2-thread (or `threads`) copy bandwidth in GB/s (read + write), best of `reps`. */
export async function copyBandwidth(opts: { mib?: number; reps?: number; threads?: number } = {}): Promise<CopyRoofline> {
  const threads = opts.threads ?? 2;
  const bytes = Math.floor(((opts.mib ?? 256) << 20) / (threads * 4096)) * threads * 4096;
  const reps = opts.reps ?? 5;
  const src = new SharedArrayBuffer(bytes);
  const dst = new SharedArrayBuffer(bytes);
  new Uint8Array(src).fill(7);
  new Uint8Array(dst).fill(1);
  const flag = new SharedArrayBuffer(4);
  const f = new Int32Array(flag);
  const len = bytes / threads;
  const workers = Array.from({ length: threads }, (_, i) => new Worker(WORKER, { eval: true, workerData: { src, dst, off: i * len, len, flag } }));
  let best = 0;
  try {
    for (let r = 0; r < reps + 1; r++) {
      const done = workers.map((w) => new Promise<void>((res) => w.once('message', () => res())));
      workers.forEach((w) => w.postMessage('go'));
      await new Promise((res) => setTimeout(res, 20)); // let every worker reach Atomics.wait
      const t0 = process.hrtime.bigint();
      Atomics.add(f, 0, 1);
      Atomics.notify(f, 0);
      await Promise.all(done);
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (r > 0) best = Math.max(best, (2 * bytes) / s / 1e9); // the first run touches the pages
    }
  } finally {
    for (const w of workers) {
      w.postMessage('exit');
      await w.terminate();
    }
  }
  return { gbps: best, method: `Buffer.copy in ${threads} worker threads, ${(bytes / 2 ** 20).toFixed(0)} MiB, read+write bytes, best of ${reps}`, bytes, threads };
}

export interface NativePeak {
  fmaGflops: number | null;
  /** the helper's own memcpy figure (read + write), for comparison */
  memcpyGbps: number | null;
  source: string;
}

/**
 * The FMA peak (and the addon's own memcpy figure), measured in-process by the
 * addon on the kernels' thread pool (native/cpu/roofline.cc): 12 independent
 * 8-lane FMA chains per thread, best of three.
 */
export function nativePeak(_root: string): Promise<NativePeak> {
  try {
    const r = backend.measureRoofline({ millis: 300 });
    return Promise.resolve({
      fmaGflops: r.fmaGflops > 0 ? r.fmaGflops : null,
      memcpyGbps: r.copyGbps > 0 ? r.copyGbps : null,
      source: `measured in-process (${r.simd ? 'AVX2 FMA' : 'portable'} loop on ${r.threads} pool threads)`,
    });
  } catch (e) {
    return Promise.resolve({ fmaGflops: null, memcpyGbps: null, source: `n/a (${e instanceof Error ? e.message : String(e)})` });
  }
}
