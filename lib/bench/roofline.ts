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
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';

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

/** Where the native micro-benchmark may be (package root relative), first found wins. */
function helperCandidates(root: string): string[] {
  const env = process.env.KVSQ_NATIVE_BENCH;
  const c = ['build-native', 'build', 'build/Release', 'build-cuda'].map((d) => path.join(root, d, 'bench_window_scores'));
  return env ? [env, ...c] : c;
}

/** Starts the native helper just long enough to read its FMA peak line; n/a when it is absent. */
export function nativePeak(root: string, timeoutMs = 30000): Promise<NativePeak> {
  const exe = helperCandidates(root).find((p) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  });
  if (!exe) return Promise.resolve({ fmaGflops: null, memcpyGbps: null, source: 'n/a (native helper bench_window_scores not built)' });
  return new Promise((resolve) => {
    const child = spawn(exe, ['1'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    let settled = false;
    const finish = (r: NativePeak) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null) child.kill('SIGTERM');
      resolve(r);
    };
    const timer = setTimeout(() => finish({ fmaGflops: null, memcpyGbps: null, source: `n/a (${exe} gave no peak line in time)` }), timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /measured FMA peak[^:]*:\s*([\d.]+)\s*GFLOP\/s(?:;\s*copy bandwidth:\s*([\d.]+)\s*GB\/s)?/.exec(out);
      if (m) {
        const peak = Number(m[1]);
        finish({
          fmaGflops: peak > 0 ? peak : null,
          memcpyGbps: m[2] ? Number(m[2]) : null,
          source: peak > 0 ? `${path.relative(root, exe)} (AVX2 FMA loop, all pool threads)` : `n/a (${path.relative(root, exe)}: no SIMD)`,
        });
      }
    });
    child.on('error', () => finish({ fmaGflops: null, memcpyGbps: null, source: `n/a (${exe} failed to start)` }));
    child.on('exit', () => finish({ fmaGflops: null, memcpyGbps: null, source: `n/a (${exe} exited without a peak line)` }));
  });
}
