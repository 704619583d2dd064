/**
 * `kvsqueeze bench --backend cpu [--json] [--kernel NAME[,NAME]] [--quick]`
 *
 * Rooflines first (roofline.ts), then per kernel: median wall time of at
 * least 10 runs after warm-up on fresh random inputs, GB/s of the bytes the
 * kernel must move and % of the measured copy bandwidth, GFLOP/s and % of the
 * FMA peak where a native helper measured one (else n/a), the plain
 * TypeScript reference on the same shape as the baseline (on a scaled-down
 * shape, scaled linearly by the work ratio, when the full one would take
 * more than ~20 s: the row says so), and for decode attention
 * onnxruntime-node's CPU attention on the same shape when it is installed.
 */
import type { Command } from 'commander';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { CliIO } from '../cli';
import { backend } from '../backend';
import { KvsqRangeError, UnsupportedError } from '../errors';
import { fullCases, KernelCase, quickCases } from './kernels';
import { ortDecode, ortUnavailable } from './ort';
import { copyBandwidth, nativePeak, NativePeak, CopyRoofline } from './roofline';

export interface BenchOptions {
  backend?: string;
  kernels?: string[];
  quick?: boolean;
  ort?: boolean;
  nativePeak?: boolean;
  /** progress lines (human mode) */
  log?: (s: string) => void;
}

export interface OrtResult {
  ms: number;
  speedup: number;
  /** max |ORT output - ours|, a check that both compute the same attention */
  maxAbsDiff: number;
}

export interface BenchRow {
  kernel: string;
  id: string;
  shape: string;
  dtype: string;
  bound: 'memory' | 'compute';
  /** median wall ms of the native kernel */
  ms: number;
  runs: number;
  bytes: number;
  gbps: number;
  /** % of the measured copy bandwidth */
  rooflinePct: number;
  gflops: number | null;
  /** % of the FMA peak, null when no peak was measured */
  peakPct: number | null;
  /** ms of the TypeScript reference on this shape (measured or linearly scaled) */
  baseline: number;
  baselineName: string;
  /** how the baseline was obtained */
  baselineNote: string;
  /** baseline / ms */
  speedup: number;
  /** decode attention only: onnxruntime-node on the same shape, or why not */
  ort?: OrtResult | 'unavailable';
  ortNote?: string;
  /** set when the kernel's bytes fit in the last-level cache: its GB/s is cache bandwidth and may pass the copy roofline */
  note?: string;
}

export interface BenchReport {
  backend: string;
  quick: boolean;
  machine: { cpu: string; threads: number; simd: string; loadavg: number[]; node: string; llcBytes: number | null };
  rooflines: {
    copyGbps: number;
    copyMethod: string;
    nativeMemcpyGbps: number | null;
    fmaPeakGflops: number | null;
    fmaPeakSource: string;
  };
  rows: BenchRow[];
}

const BASELINE_LIMIT_MS = 20000;

/** Size of the last-level cache from sysfs (Linux), null when unknown. */
function llcBytes(): number | null {
  for (const idx of [3, 2]) {
    try {
      const t = fs.readFileSync(`/sys/devices/system/cpu/cpu0/cache/index${idx}/size`, 'utf8').trim();
      const m = /^(\d+)([KMG]?)$/.exec(t);
      if (m) return Number(m[1]) * ({ '': 1, K: 1024, M: 2 ** 20, G: 2 ** 30 } as Record<string, number>)[m[2]];
    } catch {
      // try the next level
    }
  }
  return null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}
function timeOnce(f: () => void): number {
  const t0 = nowMs();
  f();
  return nowMs() - t0;
}

/** Median of >= minRuns timed runs after 2 warm-ups; more runs while under budgetMs (at most maxRuns). */
function timeKernel(f: () => void, minRuns = 10, budgetMs = 3000, maxRuns = 50): { ms: number; runs: number } {
  f();
  f();
  const ts: number[] = [];
  const t0 = nowMs();
  while (ts.length < minRuns || (ts.length < maxRuns && nowMs() - t0 < budgetMs)) ts.push(timeOnce(f));
  return { ms: median(ts), runs: ts.length };
}

function timeBaseline(b: { run(div: number): void; maxDiv: number; shapeAt(div: number): string }, fullShape: string): { ms: number; note: string } {
  // The first call compiles the reference (JIT): a warm-up on the smallest shape, not timed.
  const warm = timeOnce(() => b.run(b.maxDiv));
  if (b.maxDiv > 1) {
    const t = timeOnce(() => b.run(b.maxDiv));
    const est = t * b.maxDiv;
    if (est > BASELINE_LIMIT_MS)
      return { ms: est, note: `scaled: measured ${t.toFixed(0)} ms on ${b.shapeAt(b.maxDiv)} (1 run after a warm-up) x ${b.maxDiv}` };
  } else if (warm > BASELINE_LIMIT_MS / 2) {
    return { ms: warm, note: `measured on ${fullShape} (1 run, no warm-up: too slow to repeat)` };
  }
  const ts = [timeOnce(() => b.run(1))];
  // repeat fast baselines for a median (at most 7 runs, ~5 s)
  while (ts.length < 7 && ts[0] * (ts.length + 1) < 5000) ts.push(timeOnce(() => b.run(1)));
  return { ms: median(ts), note: `measured on ${fullShape} (median of ${ts.length} after a warm-up)` };
}

export async function runBench(o: BenchOptions = {}): Promise<BenchReport> {
  const be = o.backend ?? 'cpu';
  if (be === 'cuda' || be.startsWith('cuda:')) throw new UnsupportedError('bench: the CUDA kernels are not in this build yet; use --backend cpu');
  if (be !== 'cpu') throw new KvsqRangeError(`bench: --backend ${be}: expected cpu`);
  const log = o.log ?? (() => undefined);
  const quick = Boolean(o.quick);
  let cases = quick ? quickCases() : fullCases();
  if (o.kernels && o.kernels.length) {
    const ids = new Set(cases.map((c) => c.id));
    const names = new Set(cases.map((c) => c.kernel));
    for (const k of o.kernels)
      if (!ids.has(k) && !names.has(k))
        throw new KvsqRangeError(`bench: unknown kernel '${k}': expected one of ${[...ids].join(', ')} (or a kernel name: ${[...names].join(', ')})`);
    cases = cases.filter((c) => o.kernels!.includes(c.id) || o.kernels!.includes(c.kernel));
  }

  const info = backend.info();
  log(`measuring rooflines (copy bandwidth${o.nativePeak === false ? '' : ', native FMA peak'}) ...`);
  const root = path.join(__dirname, '..', '..');
  const peak: NativePeak =
    o.nativePeak === false ? { fmaGflops: null, memcpyGbps: null, source: 'n/a (--no-native-peak)' } : await nativePeak(root);
  const copy: CopyRoofline = await copyBandwidth(quick ? { mib: 64, reps: 3 } : { mib: 256, reps: 5 });
  const ortWhy = o.ort === false ? 'skipped (--no-ort)' : ortUnavailable();

  const llc = llcBytes();
  const rows: BenchRow[] = [];
  for (const c of cases) {
    log(`${c.kernel} ${c.dtype} ${c.shape} ...`);
    const p = c.setup();
    try {
      const t = timeKernel(() => p.run(), 10, quick ? 300 : 3000);
      const gbps = p.bytes / (t.ms * 1e6);
      const gflops = p.flops ? p.flops / (t.ms * 1e6) : null;
      const b = timeBaseline(p.baseline, c.shape);
      const row: BenchRow = {
        kernel: c.kernel,
        id: c.id,
        shape: c.shape,
        dtype: c.dtype,
        bound: c.bound,
        ms: t.ms,
        runs: t.runs,
        bytes: p.bytes,
        gbps,
        rooflinePct: (100 * gbps) / copy.gbps,
        gflops,
        peakPct: gflops !== null && peak.fmaGflops ? (100 * gflops) / peak.fmaGflops : null,
        baseline: b.ms,
        baselineName: 'ts-reference',
        baselineNote: b.note,
        speedup: b.ms / t.ms,
      };
      if (llc !== null && p.bytes < llc)
        row.note = `${(p.bytes / 2 ** 20).toFixed(1)} MiB moved < ${(llc / 2 ** 20).toFixed(0)} MiB last-level cache: cache-resident between runs, GB/s is not a DRAM figure`;
      if (p.ort) {
        if (ortWhy) {
          row.ort = 'unavailable';
          row.ortNote = ortWhy;
        } else {
          try {
            const s = await ortDecode({ ...p.ort, threads: info.cpu.threads }, p.ort.q, p.ort.k, p.ort.v);
            try {
              await s.run();
              await s.run();
              const ts: number[] = [];
              const t0 = nowMs();
              while (ts.length < 10 || (ts.length < 30 && nowMs() - t0 < (quick ? 300 : 3000))) {
                const a = nowMs();
                await s.run();
                ts.push(nowMs() - a);
              }
              const ms = median(ts);
              const ours = p.ort.ours();
              const theirs = s.output();
              let diff = 0;
              for (let i = 0; i < ours.length; i++) diff = Math.max(diff, Math.abs(ours[i] - theirs[i]));
              row.ort = { ms, speedup: ms / t.ms, maxAbsDiff: diff };
              row.ortNote = `onnxruntime-node CPU, dense [Hkv, L, D] K/V${p.ort.kvDtype === 'f16' ? ' (Cast to f32 in the graph)' : ''}, ${info.cpu.threads} intra-op threads, median of ${ts.length}`;
            } finally {
              await s.dispose();
            }
          } catch (e) {
            row.ort = 'unavailable';
            row.ortNote = `onnxruntime-node failed: ${(e as Error).message.split('\n')[0]}`;
          }
        }
      }
      rows.push(row);
    } finally {
      p.dispose();
    }
  }
  return {
    backend: be,
    quick,
    machine: { cpu: os.cpus()[0]?.model ?? 'unknown', threads: info.cpu.threads, simd: info.cpu.simd, loadavg: os.loadavg(), node: process.version, llcBytes: llc },
    rooflines: {
      copyGbps: copy.gbps,
      copyMethod: copy.method,
      nativeMemcpyGbps: peak.memcpyGbps,
      fmaPeakGflops: peak.fmaGflops,
      fmaPeakSource: peak.source,
    },
    rows,
  };
}

// ------------------------------------------------------------------ human output

function fmt(x: number | null | undefined, digits = 2): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return 'n/a';
  if (x >= 1000) return x.toFixed(0);
  if (x >= 100) return x.toFixed(Math.min(digits, 1));
  return x.toFixed(digits);
}

export function formatReport(r: BenchReport): string {
  const L: string[] = [];
  const rf = r.rooflines;
  L.push(`kvsqueeze bench (${r.backend}${r.quick ? ', quick shapes' : ''}) on ${r.machine.cpu}, ${r.machine.threads} threads, SIMD ${r.machine.simd}, load ${r.machine.loadavg.map((x) => x.toFixed(1)).join(' ')}`);
  L.push(`copy roofline: ${fmt(rf.copyGbps, 1)} GB/s (${rf.copyMethod})${rf.nativeMemcpyGbps ? `; native helper memcpy ${fmt(rf.nativeMemcpyGbps, 1)} GB/s` : ''}`);
  L.push(`FMA peak: ${rf.fmaPeakGflops ? `${fmt(rf.fmaPeakGflops, 1)} GFLOP/s` : 'n/a'} (${rf.fmaPeakSource})`);
  L.push('');
  const head = ['kernel', 'dtype', 'shape', 'ms', 'GB/s', '% copy', 'GFLOP/s', '% FMA', 'TS ref ms', 'speedup', 'ORT ms', 'vs ORT'];
  const body = r.rows.map((x) => [
    x.kernel,
    x.dtype,
    x.shape,
    fmt(x.ms, 3),
    fmt(x.gbps, 2),
    fmt(x.rooflinePct, 1) + (x.note ? '+' : ''),
    x.gflops === null ? '-' : fmt(x.gflops, 1),
    x.gflops === null ? '-' : fmt(x.peakPct, 1),
    fmt(x.baseline, 1) + (x.baselineNote.startsWith('scaled') ? '*' : ''),
    fmt(x.speedup, 1) + 'x',
    x.ort === undefined ? '-' : x.ort === 'unavailable' ? 'unavailable' : fmt(x.ort.ms, 2),
    x.ort === undefined || x.ort === 'unavailable' ? '-' : fmt(x.ort.speedup, 2) + 'x',
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i < 3 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  L.push(line(head));
  L.push(w.map((n) => '-'.repeat(n)).join('  '));
  for (const b of body) L.push(line(b));
  const notes = r.rows.filter((x) => x.baselineNote.startsWith('scaled'));
  if (notes.length) {
    L.push('');
    for (const x of notes) L.push(`* ${x.kernel} ${x.dtype}: TS reference ${x.baselineNote}`);
  }
  const cached = r.rows.filter((x) => x.note);
  if (cached.length) {
    L.push('');
    L.push(`+ working set smaller than the ${r.machine.llcBytes ? (r.machine.llcBytes / 2 ** 20).toFixed(0) + ' MiB ' : ''}last-level cache (stays cached between runs): ${cached.map((x) => x.kernel + (x.dtype !== 'f32' ? ' ' + x.dtype : '')).join(', ')}; their % copy compares cache bandwidth with the DRAM copy roofline`);
  }
  const orts = r.rows.filter((x) => x.ortNote);
  if (orts.length) {
    L.push('');
    for (const x of orts)
      L.push(`ORT ${x.kernel} ${x.dtype}: ${x.ortNote}${x.ort && x.ort !== 'unavailable' ? `; max |ORT - ours| ${x.ort.maxAbsDiff.toExponential(2)}` : ''}`);
  }
  L.push('');
  L.push('GB/s: bytes the kernel must move / median time; % copy: of the copy roofline above. GFLOP/s: window scores (QK flops, compute-bound) and decode (QK + PV flops).');
  return L.join('\n') + '\n';
}

// ------------------------------------------------------------------ the command

export function registerBench(program: Command, io: CliIO): void {
  program
    .command('bench')
    .description('kernel timings with GB/s and % of the measured roofline, against the TypeScript reference (and onnxruntime-node for decode)')
    .option('--backend <name>', 'cpu (cuda: not in this build yet)', 'cpu')
    .option('--json', 'print JSON')
    .option('--kernel <names>', 'comma-separated ids or kernel names (decode-f16, decode-f32, topk, window, quest, quest-share, pool1d-max, pool1d-avg, chunk, append, gather)')
    .option('--quick', 'small shapes: a few seconds')
    .option('--no-ort', 'skip the onnxruntime-node baseline')
    .option('--no-native-peak', 'do not start the native FMA-peak helper')
    .action(async (opts: { backend: string; json?: boolean; kernel?: string; quick?: boolean; ort: boolean; nativePeak: boolean }) => {
      const r = await runBench({
        backend: opts.backend,
        kernels: opts.kernel ? opts.kernel.split(',').map((s) => s.trim()).filter(Boolean) : undefined,
        quick: opts.quick,
        ort: opts.ort,
        nativePeak: opts.nativePeak,
        log: opts.json ? undefined : (s) => io.err(s + '\n'),
      });
      io.out(opts.json ? JSON.stringify(r, null, 2) + '\n' : formatReport(r));
    });
}
