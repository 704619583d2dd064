/**
 * safetensors reader and writer (hand-written, no dependency).
 *
 * Layout: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {k: v}}`
 * (possibly padded with spaces), then the data buffer; offsets are relative to
 * the start of the buffer and data are little-endian.
 *
 * Supported dtypes: F32, F16, BF16 (as Uint16Array bit patterns) and I32.
 * Every malformed file is reported as a FormatError (code KVSQ_FORMAT) before
 * anything is allocated from its sizes; data are copied into fresh, aligned
 * typed arrays (never views of the input).
 *
 * This module does not load the native addon; only toTensor/fromTensor do.
 */
import * as fs from 'fs';
import { ArgumentError, DTypeError, FormatError, ShapeError, show } from '../errors';
import type { DType, Tensor } from '../tensor';

export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'I32';
export type SafetensorsData = Float32Array | Uint16Array | Int32Array;

export interface SafetensorsEntry {
  dtype: SafetensorsDType;
  shape: number[];
  data: SafetensorsData;
}

export interface SafetensorsFile {
  tensors: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
}

export interface ReadSafetensorsOptions {
  /** Largest accepted JSON header, in bytes. Default 100 MB (100,000,000, as the reference implementation). */
  maxHeaderBytes?: number;
}

/** What writeSafetensors accepts: a Map, a plain object or [name, entry] pairs. */
export type SafetensorsInput =
  | ReadonlyMap<string, SafetensorsEntry>
  | Readonly<Record<string, SafetensorsEntry>>
  | Iterable<readonly [string, SafetensorsEntry]>;

export const SAFETENSORS_DTYPES: readonly SafetensorsDType[] = ['F32', 'F16', 'BF16', 'I32'];
export const DEFAULT_MAX_HEADER_BYTES = 100_000_000;
/** Same rank and dimension limits as Tensor (lib/tensor.ts). */
const MAX_RANK = 8;
const MAX_DIM = 2 ** 31;
const METADATA_KEY = '__metadata__';

const ITEM_SIZE: Record<SafetensorsDType, number> = { F32: 4, F16: 2, BF16: 2, I32: 4 };
/** Valid safetensors dtypes that this library does not read. */
const OTHER_DTYPES = new Set([
  'BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'F8_E8M0', 'F6_E2M3', 'F6_E3M2', 'F4',
  'I16', 'U16', 'U32', 'F64', 'I64', 'U64', 'C64',
]);
const TO_DTYPE: Record<SafetensorsDType, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16', I32: 'i32' };
const FROM_DTYPE: Record<DType, SafetensorsDType> = { f32: 'F32', f16: 'F16', bf16: 'BF16', i32: 'I32' };

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------
// Header parsing and validation (shared by the in-memory and file readers)

interface PlannedTensor {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  begin: number;
  end: number;
}

interface Plan {
  tensors: PlannedTensor[]; // in header order
  metadata: Record<string, string>;
  /** Absolute file offset of the data buffer (8 + header length). */
  dataStart: number;
}

function fmt(message: string): FormatError {
  return new FormatError(`safetensors: ${message}`);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v)}`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${show(v)}`;
}

function quote(name: string): string {
  return JSON.stringify(name.length > 80 ? name.slice(0, 80) + '...' : name);
}

/**
 * Reads and checks the 8-byte prefix: returns the header length.
 * `fileSize` is the whole file's size in bytes.
 */
function headerLength(prefix: Uint8Array, fileSize: number, maxHeaderBytes: number): number {
  if (fileSize < 8)
    throw fmt(`file is ${fileSize} bytes; a safetensors file starts with an 8-byte header length`);
  const dv = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const lo = dv.getUint32(0, true);
  const hi = dv.getUint32(4, true);
  const n = hi * 2 ** 32 + lo; // exact up to 2^53; beyond that it is rejected below anyway
  if (n > maxHeaderBytes)
    throw fmt(`header length ${hi > 0x1fffff ? `>= 2^53` : n} bytes is larger than the limit of ${maxHeaderBytes} bytes (oversized header)`);
  if (n > fileSize - 8)
    throw fmt(`header length ${n} bytes is larger than the ${fileSize - 8} bytes that follow the length field (truncated file or corrupt length)`);
  return n;
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function parseHeader(headerBytes: Uint8Array, fileSize: number): Plan {
  const dataStart = 8 + headerBytes.length;
  const bufferLength = fileSize - dataStart;
  let text: string;
  try {
    text = utf8.decode(headerBytes);
  } catch {
    throw fmt('header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw fmt(`header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(header)) throw fmt(`header must be a JSON object, got ${describe(header)}`);

  let metadata: Record<string, string> = {};
  const tensors: PlannedTensor[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      metadata = parseMetadata(info);
      continue;
    }
    tensors.push(parseEntry(name, info, bufferLength));
  }

  // Overlap check: sort a copy by start offset (then end), ranges must not intersect.
  // Empty tensors ([a, a]) occupy no bytes and overlap nothing.
  const sorted = tensors.filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    const cur = sorted[i];
    if (cur.begin < prev.end)
      throw fmt(
        `tensors ${quote(prev.name)} (bytes ${prev.begin}..${prev.end}) and ${quote(cur.name)} ` +
          `(bytes ${cur.begin}..${cur.end}) overlap`,
      );
  }
  return { tensors, metadata, dataStart };
}

function parseMetadata(info: unknown): Record<string, string> {
  if (!isPlainObject(info)) throw fmt(`"__metadata__" must be an object of strings, got ${describe(info)}`);
  const pairs: [string, string][] = [];
  for (const [k, v] of Object.entries(info)) {
    if (typeof v !== 'string')
      throw fmt(`"__metadata__" value for key ${quote(k)} must be a string, got ${describe(v)}`);
    pairs.push([k, v]);
  }
  // fromEntries defines own properties, so a "__proto__" key stays a plain key.
  return Object.fromEntries(pairs);
}

function parseEntry(name: string, info: unknown, bufferLength: number): PlannedTensor {
  const where = `tensor ${quote(name)}`;
  if (!isPlainObject(info)) throw fmt(`${where}: entry must be an object, got ${describe(info)}`);
  for (const key of ['dtype', 'shape', 'data_offsets'])
    if (!Object.prototype.hasOwnProperty.call(info, key)) throw fmt(`${where}: entry is missing "${key}"`);

  const dt = info.dtype;
  if (typeof dt !== 'string') throw fmt(`${where}: dtype must be a string, got ${describe(dt)}`);
  if (!(SAFETENSORS_DTYPES as readonly string[]).includes(dt)) {
    if (OTHER_DTYPES.has(dt))
      throw fmt(`${where}: dtype ${dt} is not supported (expected one of ${SAFETENSORS_DTYPES.join(', ')})`);
    throw fmt(`${where}: unknown dtype ${quote(dt)} (expected one of ${SAFETENSORS_DTYPES.join(', ')})`);
  }
  const dtype = dt as SafetensorsDType;

  const sh = info.shape;
  if (!Array.isArray(sh)) throw fmt(`${where}: shape must be an array of non-negative integers, got ${describe(sh)}`);
  if (sh.length > MAX_RANK) throw fmt(`${where}: shape has ${sh.length} dimensions; at most ${MAX_RANK} are supported`);
  const shape: number[] = [];
  let numel = 1;
  for (let i = 0; i < sh.length; i++) {
    const d: unknown = sh[i];
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || d >= MAX_DIM)
      throw fmt(`${where}: shape[${i}] = ${describe(d)}; expected an integer in [0, 2^31)`);
    shape.push(d);
    numel *= d; // at most (2^31)^8 = 2^248: finite, and any product this large fails the size check
  }

  const off = info.data_offsets;
  if (!Array.isArray(off) || off.length !== 2)
    throw fmt(`${where}: data_offsets must be an array of two integers [begin, end], got ${describe(off)}`);
  const [begin, end] = off as unknown[];
  for (const [label, v] of [['begin', begin], ['end', end]] as const)
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      throw fmt(`${where}: data_offsets ${label} = ${describe(v)}; expected a non-negative integer`);
  const b = begin as number;
  const e = end as number;
  if (b > e) throw fmt(`${where}: data_offsets begin ${b} is after end ${e}`);
  if (e > bufferLength)
    throw fmt(`${where}: data ends at byte ${e} but the data buffer holds only ${bufferLength} bytes (truncated file)`);
  const expected = numel * ITEM_SIZE[dtype];
  if (e - b !== expected)
    throw fmt(
      `${where}: data_offsets span ${e - b} bytes but shape [${shape.join(', ')}] of ${dtype} needs ${expected} bytes`,
    );
  return { name, dtype, shape, begin: b, end: e };
}

// ---------------------------------------------------------------------------
// Copying data out

function allocate(dtype: SafetensorsDType, numel: number): SafetensorsData {
  return dtype === 'F32' ? new Float32Array(numel) : dtype === 'I32' ? new Int32Array(numel) : new Uint16Array(numel);
}

function bytesOf(a: SafetensorsData): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Swaps each element's bytes in place (only used on big-endian hosts). */
function swapInPlace(bytes: Uint8Array, itemSize: number): void {
  for (let i = 0; i + itemSize <= bytes.length; i += itemSize) {
    for (let a = i, b = i + itemSize - 1; a < b; a++, b--) {
      const t = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = t;
    }
  }
}

function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

// ---------------------------------------------------------------------------
// Public reader

function checkOptions(opts: ReadSafetensorsOptions | undefined): number {
  if (opts === undefined) return DEFAULT_MAX_HEADER_BYTES;
  if (opts === null || typeof opts !== 'object') throw new ArgumentError('readSafetensors: options must be an object');
  const m = opts.maxHeaderBytes;
  if (m === undefined) return DEFAULT_MAX_HEADER_BYTES;
  if (typeof m !== 'number' || !Number.isSafeInteger(m) || m < 0)
    throw new ArgumentError(`readSafetensors: maxHeaderBytes must be a non-negative integer, got ${show(m)}`);
  return m;
}

/** Parses a safetensors file held in memory. The result never aliases `bytes`. */
export function readSafetensors(bytes: Uint8Array, opts?: ReadSafetensorsOptions): SafetensorsFile {
  if (!(bytes instanceof Uint8Array)) throw new ArgumentError('readSafetensors: bytes must be a Uint8Array or Buffer');
  const maxHeader = checkOptions(opts);
  const n = headerLength(bytes, bytes.length, maxHeader);
  const plan = parseHeader(bytes.subarray(8, 8 + n), bytes.length);
  const tensors = new Map<string, SafetensorsEntry>();
  for (const t of plan.tensors) {
    const data = allocate(t.dtype, numelOf(t.shape));
    const dst = bytesOf(data);
    dst.set(bytes.subarray(plan.dataStart + t.begin, plan.dataStart + t.end));
    if (!LITTLE_ENDIAN_HOST) swapInPlace(dst, ITEM_SIZE[t.dtype]);
    tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data });
  }
  return { tensors, metadata: plan.metadata };
}

const IO_CHUNK = 1 << 30;

function readFully(fd: number, dst: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < dst.length) {
    const len = Math.min(IO_CHUNK, dst.length - done);
    const got = fs.readSync(fd, dst, done, len, position + done);
    if (got === 0)
      throw fmt(`${path}: file ended at byte ${position + done} while ${dst.length - done} more bytes were expected (truncated file)`);
    done += got;
  }
}

/**
 * Reads a safetensors file. Reads the header first and each tensor straight
 * into its own array, so memory use is the tensors' size, not twice it.
 * File system errors (ENOENT, EACCES, EISDIR, ...) are thrown as Node reports them.
 */
export function readSafetensorsFile(path: string, opts?: ReadSafetensorsOptions): SafetensorsFile {
  if (typeof path !== 'string') throw new ArgumentError('readSafetensorsFile: path must be a string');
  const maxHeader = checkOptions(opts);
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const prefix = new Uint8Array(8);
    if (size >= 8) readFully(fd, prefix, 0, path);
    let n: number;
    try {
      n = headerLength(prefix, size, maxHeader);
    } catch (e) {
      throw e instanceof FormatError ? new FormatError(e.message.replace(/^safetensors: /, `safetensors: ${path}: `)) : e;
    }
    const headerBytes = new Uint8Array(n);
    readFully(fd, headerBytes, 8, path);
    let plan: Plan;
    try {
      plan = parseHeader(headerBytes, size);
    } catch (e) {
      throw e instanceof FormatError ? new FormatError(e.message.replace(/^safetensors: /, `safetensors: ${path}: `)) : e;
    }
    const tensors = new Map<string, SafetensorsEntry>();
    for (const t of plan.tensors) {
      const data = allocate(t.dtype, numelOf(t.shape));
      const dst = bytesOf(data);
      readFully(fd, dst, plan.dataStart + t.begin, path);
      if (!LITTLE_ENDIAN_HOST) swapInPlace(dst, ITEM_SIZE[t.dtype]);
      tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data });
    }
    return { tensors, metadata: plan.metadata };
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------
// Writer

interface Prepared {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  bytes: Uint8Array; // little-endian
  begin: number;
  end: number;
}

function entriesOf(tensors: SafetensorsInput): [string, SafetensorsEntry][] {
  if (tensors === null || typeof tensors !== 'object')
    throw new ArgumentError('writeSafetensors: tensors must be a Map, an object or [name, entry] pairs');
  if (tensors instanceof Map) return [...(tensors as ReadonlyMap<string, SafetensorsEntry>).entries()];
  if (Symbol.iterator in tensors) {
    const out: [string, SafetensorsEntry][] = [];
    for (const pair of tensors as Iterable<readonly [string, SafetensorsEntry]>) {
      if (!Array.isArray(pair) || pair.length !== 2)
        throw new ArgumentError('writeSafetensors: an iterable of tensors must yield [name, entry] pairs');
      out.push([pair[0], pair[1]]);
    }
    return out;
  }
  return Object.entries(tensors as Record<string, SafetensorsEntry>);
}

function prepare(tensors: SafetensorsInput): Prepared[] {
  const seen = new Set<string>();
  const out: Prepared[] = [];
  for (const [name, entry] of entriesOf(tensors)) {
    if (typeof name !== 'string') throw new ArgumentError('writeSafetensors: tensor names must be strings');
    if (name === METADATA_KEY) throw new ArgumentError(`writeSafetensors: "${METADATA_KEY}" is reserved and cannot name a tensor`);
    if (seen.has(name)) throw new ArgumentError(`writeSafetensors: tensor ${quote(name)} is given twice`);
    seen.add(name);
    const where = `writeSafetensors: tensor ${quote(name)}`;
    if (entry === null || typeof entry !== 'object') throw new ArgumentError(`${where}: entry must be { dtype, shape, data }`);
    const dtype = entry.dtype;
    if (typeof dtype !== 'string' || !(SAFETENSORS_DTYPES as readonly string[]).includes(dtype))
      throw new DTypeError(`${where}: unknown dtype '${show(dtype)}' (expected one of ${SAFETENSORS_DTYPES.join(', ')})`);
    const sh: unknown = entry.shape;
    if (!Array.isArray(sh)) throw new ShapeError(`${where}: shape must be an array of non-negative integers`);
    if (sh.length > MAX_RANK) throw new ShapeError(`${where}: shape has ${sh.length} dimensions; at most ${MAX_RANK} are supported`);
    const shape = sh.map((d: unknown, i: number) => {
      if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || d >= MAX_DIM)
        throw new ShapeError(`${where}: shape[${i}] = ${show(d)}: expected an integer in [0, 2^31)`);
      return d;
    });
    const data: unknown = entry.data;
    const ok =
      (dtype === 'F32' && data instanceof Float32Array) ||
      (dtype === 'I32' && data instanceof Int32Array) ||
      ((dtype === 'F16' || dtype === 'BF16') && data instanceof Uint16Array);
    if (!ok) {
      const want = dtype === 'F32' ? 'Float32Array' : dtype === 'I32' ? 'Int32Array' : 'Uint16Array (bit patterns)';
      const got = ArrayBuffer.isView(data) ? data.constructor.name : describe(data);
      throw new DTypeError(`${where}: dtype ${dtype} needs a ${want}, got ${got}`);
    }
    const arr = data as SafetensorsData;
    const numel = numelOf(shape);
    if (arr.length !== numel)
      throw new ShapeError(`${where}: data has ${arr.length} elements but shape [${shape.join(', ')}] needs ${numel}`);
    let bytes = bytesOf(arr);
    if (!LITTLE_ENDIAN_HOST) {
      bytes = bytes.slice();
      swapInPlace(bytes, ITEM_SIZE[dtype]);
    }
    out.push({ name, dtype, shape, bytes, begin: 0, end: 0 });
  }
  // The reference layout: larger elements first, then by name, so every
  // tensor starts at a multiple of its element size (the header keeps the
  // buffer 8-byte aligned).
  out.sort((a, b) => ITEM_SIZE[b.dtype] - ITEM_SIZE[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let offset = 0;
  for (const p of out) {
    p.begin = offset;
    offset += p.bytes.length;
    p.end = offset;
  }
  return out;
}

function metadataOf(metadata: Readonly<Record<string, string>> | undefined): [string, string][] {
  if (metadata === undefined || metadata === null) return [];
  if (typeof metadata !== 'object' || Array.isArray(metadata))
    throw new ArgumentError('writeSafetensors: metadata must be an object of string values');
  const pairs = Object.entries(metadata);
  for (const [k, v] of pairs)
    if (typeof v !== 'string')
      throw new ArgumentError(`writeSafetensors: metadata value for key ${quote(k)} must be a string, got ${describe(v)}`);
  return pairs.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** The header bytes (length prefix included, padded with spaces to a multiple of 8). */
function encodeHeader(prepared: Prepared[], meta: [string, string][]): Uint8Array {
  const parts: string[] = [];
  if (meta.length > 0) parts.push(`${JSON.stringify(METADATA_KEY)}:${JSON.stringify(Object.fromEntries(meta))}`);
  for (const p of prepared)
    parts.push(
      `${JSON.stringify(p.name)}:${JSON.stringify({ dtype: p.dtype, shape: p.shape, data_offsets: [p.begin, p.end] })}`,
    );
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, padded % 2 ** 32, true);
  dv.setUint32(4, Math.floor(padded / 2 ** 32), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length);
  return out;
}

/**
 * Serializes tensors (and string metadata) to safetensors bytes. Tensors are
 * laid out largest element size first, then by name; metadata keys sorted.
 * Bad input throws ArgumentError, DTypeError or ShapeError.
 */
export function writeSafetensors(
  tensors: SafetensorsInput,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const prepared = prepare(tensors);
  const header = encodeHeader(prepared, metadataOf(metadata));
  const dataLength = prepared.length ? prepared[prepared.length - 1].end : 0;
  const out = new Uint8Array(header.length + dataLength);
  out.set(header, 0);
  for (const p of prepared) out.set(p.bytes, header.length + p.begin);
  return out;
}

/** Writes a safetensors file (same layout as writeSafetensors), streaming each tensor without a full copy. */
export function writeSafetensorsFile(
  path: string,
  tensors: SafetensorsInput,
  metadata?: Readonly<Record<string, string>>,
): void {
  if (typeof path !== 'string') throw new ArgumentError('writeSafetensorsFile: path must be a string');
  const prepared = prepare(tensors);
  const header = encodeHeader(prepared, metadataOf(metadata));
  const fd = fs.openSync(path, 'w');
  try {
    const writeAll = (bytes: Uint8Array) => {
      let done = 0;
      while (done < bytes.length) done += fs.writeSync(fd, bytes, done, Math.min(IO_CHUNK, bytes.length - done));
    };
    writeAll(header);
    for (const p of prepared) writeAll(p.bytes);
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------
// Conversions

/** An entry's values as Float32Array (F16/BF16 decoded exactly, I32 converted). Returns a copy. */
export function entryToFloat32(entry: SafetensorsEntry): Float32Array {
  const { dtype, data } = entry;
  if (dtype === 'F32' || dtype === 'I32') return Float32Array.from(data as Float32Array | Int32Array);
  const src = data as Uint16Array;
  const out = new Float32Array(src.length);
  if (dtype === 'BF16') {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
    return out;
  }
  for (let i = 0; i < src.length; i++) {
    const h = src[i];
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 31;
    const m = h & 1023;
    out[i] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1024 + m) * 2 ** (e - 25);
  }
  return out;
}

export interface ToTensorOptions {
  /** Target dtype; default the entry's own (F32->f32, F16->f16, BF16->bf16, I32->i32). Floats convert among themselves. */
  dtype?: DType;
  /** 'cpu' (default) or 'cuda:N'. */
  device?: string;
}

function tensorModule(): typeof import('../tensor') {
  // Loaded lazily: reading files must not need the native addon.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('../tensor') as typeof import('../tensor');
}

/** A Tensor holding a copy of an entry (optionally converted to another float dtype and/or moved to a device). */
export function toTensor(entry: SafetensorsEntry, opts: ToTensorOptions = {}): Tensor {
  if (entry === null || typeof entry !== 'object') throw new ArgumentError('toTensor: entry must be { dtype, shape, data }');
  if (opts === null || typeof opts !== 'object') throw new ArgumentError('toTensor: options must be an object');
  const { Tensor: T, checkDType } = tensorModule();
  if (!(SAFETENSORS_DTYPES as readonly string[]).includes(entry.dtype))
    throw new DTypeError(`toTensor: unknown dtype '${show(entry.dtype)}' (expected one of ${SAFETENSORS_DTYPES.join(', ')})`);
  const own = TO_DTYPE[entry.dtype];
  const target = opts.dtype === undefined ? own : checkDType(opts.dtype, 'toTensor: dtype');
  const device = opts.device;
  if (target === own) return T.from(entry.data, entry.shape, { dtype: own, device });
  if (own === 'i32' || target === 'i32')
    throw new DTypeError(`toTensor: cannot convert ${entry.dtype} to ${target} (only float dtypes convert)`);
  if (own === 'f32') return T.from(entry.data, entry.shape, { dtype: target, device });
  // f16/bf16 -> f32 is exact; -> the other 16-bit type rounds once from the exact f32.
  return T.from(entryToFloat32(entry), entry.shape, { dtype: target, device });
}

/** An entry holding a host copy of a tensor's data (as stored: f16/bf16 as bits). */
export function fromTensor(t: Tensor): SafetensorsEntry {
  const { Tensor: T } = tensorModule();
  if (!(t instanceof T)) throw new ArgumentError('fromTensor: expected a Tensor');
  t.assertLive('fromTensor: tensor');
  return { dtype: FROM_DTYPE[t.dtype], shape: [...t.shape], data: t.toArray() };
}
