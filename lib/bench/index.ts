/**
 * `kvsqueeze bench --backend cpu|cuda[:N] [--json] [--kernel NAME[,NAME]] [--method NAME[,NAME]] [--quick]`
 *
 * Rooflines first (roofline.ts), then per kernel: median wall time of at
 * least 10 runs after warm-up on fresh random inputs, GB/s of the bytes the
 * kernel must move and % of the measured copy bandwidth, GFLOP/s and % of the
 * FMA peak measured in-process by the addon, the plain
 * TypeScript reference on the same shape as the baseline (on a scaled-down
 * shape, scaled linearly by the work ratio, when the full one would take
 * more than ~20 s: the row says so), and for decode attention
 * onnxruntime-node's CPU attention on the same shape when it is installed.
 *
 * Then the method-level rows (methods.ts, CPU only): prefill compression
 * time per method with the memory it frees, a decode step per method, and
 * the two decode ratios with their targets.
 *
 * --backend cuda[:N]: when CUDA is unavailable, one line saying why and no
 * rows (exit 0; JSON: empty rows and `skipped`). Otherwise the kernel rows
 * with every tensor on the device; the ops are synchronous (they return
 * finished results), so wall time around a call is the launch sequence's
 * time. Between timed launches the L2 is flushed (not timed) by writing a
 * 100 MB device tensor (Tensor.zeros: a cudaMemset) and reading one value
 * back (a synchronising copy). Best effort: host overhead is included; the
 * precise GPU figures come from the native CUDA benchmarks.
 */
import type { Command } from 'commander';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { CliIO } from '../cli';
import { backend } from '../backend';
import { KvsqRangeError } from '../errors';
import { ops } from '../ops';
import { Tensor } from '../tensor';
import { fullCases, KernelCase, quickCases } from './kernels';
import { decodeRows, fullMethodShape, METHOD_IDS, MethodRatio, MethodRow, prefillRows, quickMethodShape, selectMethodIds } from './methods';
import { ortDecode, ortUnavailable } from './ort';
import { copyBandwidth, nativePeak, NativePeak, CopyRoofline } from './roofline';

export type { MethodRatio, MethodRow } from './methods';

export interface BenchOptions {
  backend?: string;
  /** kernel rows by id or kernel name; given alone, no method rows run */
  kernels?: string[];
  /** method rows (ids, 'prefill', 'decode', 'all' or method names); given alone, no kernel rows run */
  methods?: string[];
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
  /** where the kernel rows ran: 'cpu' or 'cuda:N' */
  device: string;
  quick: boolean;
  machine: { cpu: string; threads: number; simd: string; loadavg: number[]; node: string; llcBytes: number | null; gpu?: string };
  /** null when the run was skipped */
  rooflines: {
    copyGbps: number;
    copyMethod: string;
    nativeMemcpyGbps: number | null;
    fmaPeakGflops: number | null;
    fmaPeakSource: string;
  } | null;
  rows: BenchRow[];
  /** method-level rows (CPU): prefill compression and decode steps */
  methodRows: MethodRow[];
  /** decode ratios with their targets */
  ratios: MethodRatio[];
  /** what was left out and why (e.g. a kernel the device build lacks) */
  notes: string[];
  /** set when nothing ran (e.g. "CUDA unavailable: ...") */
  skipped?: string;
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

/**
 * Median of >= minRuns timed runs after 2 warm-ups; more runs while under
 * budgetMs (at most maxRuns). `before` runs ahead of each timed run, untimed
 * (the L2 flush on a GPU).
 */
function timeKernel(f: () => void, minRuns = 10, budgetMs = 3000, maxRuns = 50, before?: () => void): { ms: number; runs: number } {
  f();
  f();
  const ts: number[] = [];
  const t0 = nowMs();
  while (ts.length < minRuns || (ts.length < maxRuns && nowMs() - t0 < budgetMs)) {
    before?.();
    ts.push(timeOnce(f));
  }
  return { ms: median(ts), runs: ts.length };
}

const FLUSH_BYTES = 100 * 1000 * 1000;

interface DeviceTools {
  /** writes 100 MB on the device (evicting the L2) and waits for it */
  flush(): void;
  /** waits for the device's queued work: a one-value read back */
  sync(): void;
  dispose(): void;
}

function deviceTools(device: string): DeviceTools {
  const tiny = Tensor.zeros([1], { dtype: 'f32', device });
  const sync = () => void tiny.toArray();
  return {
    sync,
    flush() {
      const big = Tensor.zeros([FLUSH_BYTES / 4], { dtype: 'f32', device });
      sync();
      big.dispose();
    },
    dispose: () => tiny.dispose(),
  };
}

/**
 * Device copy bandwidth, best effort, read + write bytes, best of 5 with the
 * L2 flushed before each: (a) a device-to-device cudaMemcpy (Tensor.to on
 * the same device; the allocation of the copy is included), (b) ops.gather
 * of contiguous K and V rows into pages (host argument checks included).
 * The faster one is the roofline; both are lower bounds.
 */
function deviceCopyBandwidth(device: string, quick: boolean, dt: DeviceTools): CopyRoofline {
  const found: CopyRoofline[] = [];
  const errors: string[] = [];
  const best = (f: () => void, after?: () => void) => {
    f();
    after?.();
    let ms = Infinity;
    for (let r = 0; r < 5; r++) {
      dt.flush();
      ms = Math.min(ms, timeOnce(f));
      after?.();
    }
    return ms;
  };
  try {
    const bytes = (quick ? 128 : 512) * 2 ** 20;
    const src = Tensor.zeros([bytes / 4], { dtype: 'f32', device });
    let out: Tensor | undefined;
    try {
      const ms = best(
        () => {
          out = src.to(device);
          dt.sync();
        },
        () => out?.dispose(),
      );
      found.push({ gbps: (2 * bytes) / (ms * 1e6), method: `device-to-device copy of ${bytes / 2 ** 20} MiB (Tensor.to, allocation included), read+write bytes, best of 5, L2 flushed`, bytes: 2 * bytes, threads: 0 });
    } finally {
      src.dispose();
    }
  } catch (e) {
    errors.push(`Tensor.to: ${(e as Error).message.split('\n')[0]}`);
  }
  try {
    const R = quick ? 1 << 16 : 1 << 18;
    const D = 128;
    const P = 16;
    const idx = Int32Array.from({ length: R }, (_, i) => i);
    const t = {
      kSrc: Tensor.zeros([1, R, D], { dtype: 'f16', device }),
      vSrc: Tensor.zeros([1, R, D], { dtype: 'f16', device }),
      srcRow: Tensor.from(idx, [R], { device }),
      dstSlot: Tensor.from(idx, [R], { device }),
      kPool: Tensor.zeros([R / P, P, D], { dtype: 'f16', device }),
      vPool: Tensor.zeros([R / P, P, D], { dtype: 'f16', device }),
    };
    try {
      const ms = best(() => ops.gather(t));
      const bytes = 2 * 2 * R * D * 2;
      found.push({ gbps: bytes / (ms * 1e6), method: `ops.gather of ${R} contiguous K and V rows (D ${D}, f16), ${bytes / 2 ** 20} MiB read+write, best of 5, L2 flushed`, bytes, threads: 0 });
    } finally {
      Object.values(t).forEach((x) => x.dispose());
    }
  } catch (e) {
    errors.push(`ops.gather: ${(e as Error).message.split('\n')[0]}`);
  }
  if (!found.length) throw new Error(`bench: could not measure the copy bandwidth of ${device}: ${errors.join('; ')}`);
  found.sort((x, y) => y.gbps - x.gbps);
  const r = found[0];
  return { ...r, method: `${device}: ${r.method}; a lower bound${found.length > 1 ? ` (also: ${found[1].gbps.toFixed(0)} GB/s by ${found[1].method.split(' ')[0]})` : ''}` };
}

/** 'cuda' -> 'cuda:0'; null for cpu. */
function cudaDevice(be: string): string | null {
  if (be === 'cuda') return 'cuda:0';
  const m = /^cuda:(\d+)$/.exec(be);
  if (m) return `cuda:${Number(m[1])}`;
  if (be === 'cpu') return null;
  throw new KvsqRangeError(`bench: --backend ${be}: expected cpu, cuda or cuda:N`);
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
  const cuda = cudaDevice(be);
  const device = cuda ?? 'cpu';
  const log = o.log ?? (() => undefined);
  const quick = Boolean(o.quick);
  const kernelsGiven = Boolean(o.kernels && o.kernels.length);
  const methodsGiven = Boolean(o.methods && o.methods.length);
  // --kernel alone: kernel rows only; --method alone: method rows only; neither: everything.
  let cases = kernelsGiven || !methodsGiven ? (quick ? quickCases(device) : fullCases(device)) : [];
  if (kernelsGiven) {
    const ids = new Set(cases.map((c) => c.id));
    const names = new Set(cases.map((c) => c.kernel));
    for (const k of o.kernels!)
      if (!ids.has(k) && !names.has(k))
        throw new KvsqRangeError(`bench: unknown kernel '${k}': expected one of ${[...ids].join(', ')} (or a kernel name: ${[...names].join(', ')})`);
    cases = cases.filter((c) => o.kernels!.includes(c.id) || o.kernels!.includes(c.kernel));
  }
  let methodIds = methodsGiven ? selectMethodIds(o.methods!) : kernelsGiven ? [] : selectMethodIds(['all']);

  const info = backend.info();
  const machine: BenchReport['machine'] = {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    threads: info.cpu.threads,
    simd: info.cpu.simd,
    loadavg: os.loadavg(),
    node: process.version,
    llcBytes: llcBytes(),
  };
  const notes: string[] = [];
  if (cuda) {
    if (!info.cuda.available) {
      return {
        backend: be, device, quick, machine, rooflines: null, rows: [], methodRows: [], ratios: [], notes,
        skipped: `CUDA unavailable: ${info.cuda.reason ?? 'unknown reason'}`,
      };
    }
    const n = Number(device.slice(5));
    if (n >= info.cuda.devices.length) throw new KvsqRangeError(`bench: --backend ${be}: this machine has ${info.cuda.devices.length} CUDA device(s)`);
    machine.gpu = info.cuda.devices[n].name;
    if (methodIds.length) {
      notes.push(`method rows run on the CPU only (use --backend cpu): left out ${methodIds.join(', ')}`);
      methodIds = [];
    }
  }

  const tools = cuda && cases.length ? deviceTools(device) : undefined;
  // Rooflines only when kernel rows run (they are what the rooflines are compared with).
  if (cases.length) log(`measuring rooflines (copy bandwidth${o.nativePeak === false || cuda ? '' : ', native FMA peak'}) ...`);
  const root = path.join(__dirname, '..', '..');
  const peak: NativePeak | null = !cases.length
    ? null
    : cuda
      ? { fmaGflops: null, memcpyGbps: null, source: 'n/a on CUDA (the native helper is a CPU benchmark; see the native CUDA benchmarks)' }
      : o.nativePeak === false
        ? { fmaGflops: null, memcpyGbps: null, source: 'n/a (--no-native-peak)' }
        : await nativePeak(root);
  const copy: CopyRoofline | null = !cases.length
    ? null
    : cuda
      ? deviceCopyBandwidth(device, quick, tools!)
      : await copyBandwidth(quick ? { mib: 64, reps: 3 } : { mib: 256, reps: 5 });
  const ortWhy = o.ort === false ? 'skipped (--no-ort)' : cuda ? null : ortUnavailable();
  const flush = tools ? () => tools.flush() : undefined;

  const llc = cuda ? null : machine.llcBytes;
  const rows: BenchRow[] = [];
  for (const c of cases) {
    log(`${c.kernel} ${c.dtype} ${c.shape}${cuda ? ` on ${device}` : ''} ...`);
    let p: ReturnType<KernelCase['setup']>;
    try {
      p = c.setup();
    } catch (e) {
      if (!cuda) throw e;
      notes.push(`${c.id}: setup on ${device} failed: ${(e as Error).message.split('\n')[0]}`);
      continue;
    }
    try {
      let t: { ms: number; runs: number };
      try {
        t = timeKernel(() => p.run(), 10, quick ? 300 : 3000, 50, flush);
      } catch (e) {
        if (!cuda) throw e;
        notes.push(`${c.id}: not run on ${device}: ${(e as Error).message.split('\n')[0]}`);
        continue;
      }
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
        rooflinePct: (100 * gbps) / copy!.gbps,
        gflops,
        peakPct: gflops !== null && peak!.fmaGflops ? (100 * gflops) / peak!.fmaGflops : null,
        baseline: b.ms,
        baselineName: 'ts-reference',
        baselineNote: cuda ? `CPU, ${b.note}` : b.note,
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
  tools?.dispose();
  if (cuda && cases.length)
    notes.push(
      `${device}: wall time of the synchronous op (launches + sync + host argument checks); L2 flushed before every timed launch by a ${FLUSH_BYTES / 1e6} MB device write (not timed). Best effort: the precise GPU figures come from the native CUDA benchmarks`,
    );

  const methodRows: MethodRow[] = [];
  let ratios: MethodRatio[] = [];
  if (methodIds.length) {
    const shape = quick ? quickMethodShape() : fullMethodShape();
    methodRows.push(...prefillRows(shape, methodIds, log));
    const d = decodeRows(shape, methodIds, log);
    methodRows.push(...d.rows);
    ratios = d.ratios;
  }
  machine.loadavg = os.loadavg();
  return {
    backend: be,
    device,
    quick,
    machine,
    rooflines:
      copy && peak
        ? { copyGbps: copy.gbps, copyMethod: copy.method, nativeMemcpyGbps: peak.memcpyGbps, fmaPeakGflops: peak.fmaGflops, fmaPeakSource: peak.source }
        : null,
    rows,
    methodRows,
    ratios,
    notes,
  };
}

// ------------------------------------------------------------------ human output

function fmt(x: number | null | undefined, digits = 2): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return 'n/a';
  if (x >= 1000) return x.toFixed(0);
  if (x >= 100) return x.toFixed(Math.min(digits, 1));
  return x.toFixed(digits);
}

/** Columns aligned per `align` ('l' or 'r' per column). */
function table(head: string[], body: string[][], align: string): string[] {
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (align[i] === 'l' ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ').trimEnd();
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...body.map(line)];
}

const mib = (b: number) => (b / 2 ** 20).toFixed(1);

export function formatReport(r: BenchReport): string {
  if (r.skipped) return `${r.skipped}\n`;
  const L: string[] = [];
  const m = r.machine;
  L.push(
    `kvsqueeze bench (${r.backend}${r.quick ? ', quick shapes' : ''}) on ${m.cpu}, ${m.threads} threads, SIMD ${m.simd}${m.gpu ? `, kernels on ${r.device} (${m.gpu})` : ''}, load ${m.loadavg.map((x) => x.toFixed(1)).join(' ')}`,
  );
  const rf = r.rooflines;
  if (rf) {
    L.push(`copy roofline: ${fmt(rf.copyGbps, 1)} GB/s (${rf.copyMethod})${rf.nativeMemcpyGbps ? `; addon memcpy ${fmt(rf.nativeMemcpyGbps, 1)} GB/s` : ''}`);
    L.push(`FMA peak: ${rf.fmaPeakGflops ? `${fmt(rf.fmaPeakGflops, 1)} GFLOP/s` : 'n/a'} (${rf.fmaPeakSource})`);
  }
  if (r.rows.length) {
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
      fmt(x.baseline, 1) + (x.baselineNote.includes('scaled') ? '*' : ''),
      fmt(x.speedup, 1) + 'x',
      x.ort === undefined ? '-' : x.ort === 'unavailable' ? 'unavailable' : fmt(x.ort.ms, 2),
      x.ort === undefined || x.ort === 'unavailable' ? '-' : fmt(x.ort.speedup, 2) + 'x',
    ]);
    L.push(...table(head, body, 'lll' + 'r'.repeat(9)));
    const scaled = r.rows.filter((x) => x.baselineNote.includes('scaled'));
    if (scaled.length) {
      L.push('');
      for (const x of scaled) L.push(`* ${x.kernel} ${x.dtype}: TS reference ${x.baselineNote}`);
    }
    const cached = r.rows.filter((x) => x.note);
    if (cached.length) {
      L.push('');
      L.push(`+ working set smaller than the ${m.llcBytes ? (m.llcBytes / 2 ** 20).toFixed(0) + ' MiB ' : ''}last-level cache (stays cached between runs): ${cached.map((x) => x.kernel + (x.dtype !== 'f32' ? ' ' + x.dtype : '')).join(', ')}; their % copy compares cache bandwidth with the DRAM copy roofline`);
    }
    const orts = r.rows.filter((x) => x.ortNote);
    if (orts.length) {
      L.push('');
      for (const x of orts)
        L.push(`ORT ${x.kernel} ${x.dtype}: ${x.ortNote}${x.ort && x.ort !== 'unavailable' ? `; max |ORT - ours| ${x.ort.maxAbsDiff.toExponential(2)}` : ''}`);
    }
    L.push('');
    L.push('GB/s: bytes the kernel must move / median time; % copy: of the copy roofline above. GFLOP/s: window scores (QK flops, compute-bound) and decode (QK + PV flops).');
  }

  const pre = r.methodRows.filter((x) => x.kind === 'prefill');
  if (pre.length) {
    L.push('');
    L.push(`Prefill compression per method (CPU, f16, ${pre[0].shape.replace(/^L\d+ /, '')}): seq.prefill of one layer, median of runs on fresh inputs; memory from seq.stats() against keeping the whole prompt`);
    const head = ['method', 'L', 'params', 'ms', 'runs', 'kept/head', 'held MiB', 'full MiB', 'freed MiB', 'freed %', 'pages freed'];
    const body = pre.map((x) => [
      x.method + (x.note ? ` [${pre.filter((y) => y.note).indexOf(x) + 1}]` : ''),
      String(x.L),
      x.params,
      fmt(x.ms, 2),
      String(x.runs),
      fmt(x.tokensKept, 1),
      x.memory ? mib(x.memory.bytesHeld) : '-',
      x.memory ? mib(x.memory.bytesFull) : '-',
      x.memory ? mib(x.memory.bytesSaved) : '-',
      x.memory ? fmt(x.memory.freedPct, 1) : '-',
      x.memory ? String(Math.round(x.memory.pagesFreed)) : '-',
    ]);
    L.push(...table(head, body, 'lrl' + 'r'.repeat(8)));
    pre.filter((y) => y.note).forEach((x, i) => L.push(`[${i + 1}] ${x.method}: ${x.note}`));
  }
  const dec = r.methodRows.filter((x) => x.kind === 'decode');
  if (dec.length) {
    L.push('');
    L.push(`Decode step per method (CPU, f16, ${dec[0].shape}): cache.decode of one token, fresh q/k/v each step, median over steps after warm-up`);
    const head = ['row', 'method', 'kept/head', 'ms/layer/token', 'steps', 'what'];
    const body = dec.map((x) => [x.id, x.method, fmt(x.tokensKept, 1), fmt(x.ms, 3), String(x.runs), x.params + (x.note ? ` [${dec.filter((y) => y.note).indexOf(x) + 1}]` : '')]);
    L.push(...table(head, body, 'llrrrl'));
    dec.filter((y) => y.note).forEach((x, i) => L.push(`[${i + 1}] ${x.id}: ${x.note}`));
  }
  if (r.ratios.length) {
    L.push('');
    for (const x of r.ratios)
      L.push(`${x.what}: ${fmt(x.value, 2)}x ${x.target === undefined ? '(for comparison: no target)' : `(target ${x.target}): ${x.met ? 'met' : 'NOT met'}`}`);
  }
  if (r.notes.length) {
    L.push('');
    for (const n of r.notes) L.push(`note: ${n}`);
  }
  return L.join('\n') + '\n';
}

// ------------------------------------------------------------------ the command

export function registerBench(program: Command, io: CliIO): void {
  program
    .command('bench')
    .description(
      'kernel timings with GB/s and % of the measured roofline, against the TypeScript reference (and onnxruntime-node for decode); then per method: prefill compression time and memory freed, and a decode step (CPU)',
    )
    .option('--backend <name>', 'cpu, or cuda / cuda:N (kernel rows on the GPU; without CUDA: says why and exits 0)', 'cpu')
    .option('--json', 'print JSON')
    .option('--kernel <names>', 'comma-separated ids or kernel names (decode-f16, decode-f32, topk, window, quest, quest-share, quest-select, quest-select-share, pool1d-max, pool1d-avg, chunk, append, gather)')
    .option('--method <names>', `comma-separated method rows: all, prefill, decode, a method name (h2o, quest, ...) or row ids (${METHOD_IDS.join(', ')})`)
    .option('--quick', 'small shapes: a few seconds')
    .option('--no-ort', 'skip the onnxruntime-node baseline')
    .option('--no-native-peak', 'skip the FMA-peak measurement')
    .action(async (opts: { backend: string; json?: boolean; kernel?: string; method?: string; quick?: boolean; ort: boolean; nativePeak: boolean }) => {
      const list = (x?: string) => (x ? x.split(',').map((s) => s.trim()).filter(Boolean) : undefined);
      const r = await runBench({
        backend: opts.backend,
        kernels: list(opts.kernel),
        methods: list(opts.method),
        quick: opts.quick,
        ort: opts.ort,
        nativePeak: opts.nativePeak,
        log: opts.json ? undefined : (s) => io.err(s + '\n'),
      });
      io.out(opts.json ? JSON.stringify(r, null, 2) + '\n' : formatReport(r));
    });
}
