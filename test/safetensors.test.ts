import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { KvsqError, Tensor } from '../lib';
import {
  SafetensorsEntry,
  entryToFloat32,
  fromTensor,
  readSafetensors,
  readSafetensorsFile,
  toTensor,
  writeSafetensors,
  writeSafetensorsFile,
} from '../lib/io/safetensors';
import {
  TINY_TRACE_METADATA,
  TINY_TRACE_PATH,
  TINY_TRACE_SHAPES,
  makeTinyTraceBytes,
  mulberry32,
} from './fixtures/make-tiny-trace';

// ---------------------------------------------------------------------------
// helpers

const enc = new TextEncoder();

/** A file from a header string (not padded) and a data buffer. */
function rawFile(header: string, data: ArrayLike<number> = [], lengthOverride?: number | bigint): Uint8Array {
  const h = enc.encode(header);
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(lengthOverride ?? h.length), true);
  out.set(h, 8);
  out.set(Array.from(data), 8 + h.length);
  return out;
}

function headerOf(bytes: Uint8Array): string {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return new TextDecoder().decode(bytes.subarray(8, 8 + n));
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

function expectFormatError(fn: () => unknown, message?: RegExp): void {
  const err = caught(fn);
  expect(err).toBeInstanceOf(KvsqError);
  expect((err as KvsqError).code).toBe('KVSQ_FORMAT');
  expect((err as KvsqError).name).toBe('FormatError');
  if (message) expect((err as KvsqError).message).toMatch(message);
}

function bytesOf(a: ArrayBufferView): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

function randomEntry(dtype: SafetensorsEntry['dtype'], shape: number[], rand: () => number): SafetensorsEntry {
  const n = shape.reduce((a, b) => a * b, 1);
  if (dtype === 'F32') return { dtype, shape, data: Float32Array.from({ length: n }, () => rand() * 200 - 100) };
  if (dtype === 'I32') return { dtype, shape, data: Int32Array.from({ length: n }, () => (rand() * 2 ** 32) | 0) };
  return { dtype, shape, data: Uint16Array.from({ length: n }, () => Math.floor(rand() * 65536)) };
}

function expectSameEntry(got: SafetensorsEntry | undefined, want: SafetensorsEntry): void {
  expect(got).toBeDefined();
  expect(got!.dtype).toBe(want.dtype);
  expect(got!.shape).toEqual(want.shape);
  // jest realm quirk: compare typed-array constructors by name
  expect(got!.data.constructor.name).toBe(want.data.constructor.name);
  expect(got!.data.length).toBe(want.data.length);
  expect(bytesOf(got!.data).equals(bytesOf(want.data))).toBe(true);
}

const SHAPES: number[][] = [[], [0], [1], [17], [3, 1000], [2, 3, 5, 7], [4, 0, 3]];
const DTYPES = ['F32', 'F16', 'BF16', 'I32'] as const;

// ---------------------------------------------------------------------------

describe('safetensors: round trips', () => {
  it.each(DTYPES.flatMap((d) => SHAPES.map((s) => [d, s] as const)))('%s %j', (dtype, shape) => {
    const rand = mulberry32(shape.length * 31 + dtype.length);
    const entry = randomEntry(dtype, [...shape], rand);
    const bytes = writeSafetensors(new Map([['t', entry]]));
    const { tensors, metadata } = readSafetensors(bytes);
    expect([...tensors.keys()]).toEqual(['t']);
    expectSameEntry(tensors.get('t'), entry);
    expect(metadata).toEqual({});
    // writing what was read gives the same bytes
    expect(Buffer.from(writeSafetensors(tensors)).equals(Buffer.from(bytes))).toBe(true);
  });

  it('many tensors of mixed dtypes, metadata, every input form', () => {
    const rand = mulberry32(7);
    const entries: [string, SafetensorsEntry][] = [
      ['b.half', randomEntry('F16', [3], rand)],
      ['a.float', randomEntry('F32', [2, 5], rand)],
      ['c.brain', randomEntry('BF16', [5, 1], rand)],
      ['d.int', randomEntry('I32', [7], rand)],
      ['e.empty', randomEntry('F32', [0, 4], rand)],
      ['ünïcødé ✓', randomEntry('BF16', [1], rand)],
      ['', randomEntry('F16', [], rand)],
    ];
    const metadata = { shots: '[[2,8],[10,16]]', format: 'pt', empty: '', '__proto__': 'x', 'ключ': 'значение' };
    const a = writeSafetensors(new Map(entries), metadata);
    const b = writeSafetensors(Object.fromEntries(entries), metadata);
    const c = writeSafetensors(entries.slice().reverse(), metadata);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    expect(Buffer.from(a).equals(Buffer.from(c))).toBe(true);
    const file = readSafetensors(Buffer.from(a));
    expect(file.tensors.size).toBe(entries.length);
    for (const [name, e] of entries) expectSameEntry(file.tensors.get(name), e);
    expect(Object.keys(file.metadata).sort()).toEqual(Object.keys(metadata).sort());
    for (const [k, v] of Object.entries(metadata)) expect(Object.getOwnPropertyDescriptor(file.metadata, k)?.value).toBe(v);
    expect(Object.getPrototypeOf(file.metadata)).toBe(Object.getPrototypeOf({}));
  });

  it('layout: header 8-aligned and space-padded, 4-byte dtypes first, each tensor aligned, metadata first', () => {
    const rand = mulberry32(3);
    const bytes = writeSafetensors(
      { z16: randomEntry('F16', [3], rand), a16: randomEntry('BF16', [1], rand), m32: randomEntry('F32', [2], rand), b32: randomEntry('I32', [1], rand) },
      { k: 'v' },
    );
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(n % 8).toBe(0);
    const header = headerOf(bytes);
    expect(header).toMatch(/^\{"__metadata__":\{"k":"v"\},"b32":/);
    expect(header.trimEnd().length).toBeGreaterThan(n - 8);
    expect(header.slice(header.trimEnd().length)).toMatch(/^ *$/);
    const parsed = JSON.parse(header);
    expect(Object.keys(parsed)).toEqual(['__metadata__', 'b32', 'm32', 'a16', 'z16']);
    expect(parsed.b32.data_offsets).toEqual([0, 4]);
    expect(parsed.m32.data_offsets).toEqual([4, 12]);
    expect(parsed.a16.data_offsets).toEqual([12, 14]);
    expect(parsed.z16.data_offsets).toEqual([14, 20]);
    expect(bytes.length).toBe(8 + n + 20);
  });

  it('results are fresh aligned arrays, never views of the input (even at odd offsets)', () => {
    const rand = mulberry32(11);
    const f16 = randomEntry('F16', [3], rand);
    const f32 = randomEntry('F32', [5], rand);
    const bytes = writeSafetensors({ h: f16, f: f32 });
    // place the file at an odd offset in a larger buffer
    const host = new Uint8Array(bytes.length + 3);
    host.set(bytes, 1);
    const view = host.subarray(1, 1 + bytes.length);
    const { tensors } = readSafetensors(view);
    expectSameEntry(tensors.get('h'), f16);
    expectSameEntry(tensors.get('f'), f32);
    for (const t of tensors.values()) {
      expect(t.data.buffer).not.toBe(host.buffer);
      expect(t.data.byteOffset).toBe(0);
    }
    host.fill(0xff);
    expectSameEntry(tensors.get('f'), f32);
  });

  it('files: write, read back, truncated file names the path', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvsq-st-'));
    try {
      const rand = mulberry32(5);
      const entries = { x: randomEntry('F32', [3, 4], rand), y: randomEntry('BF16', [2, 2, 2], rand), s: randomEntry('I32', [], rand) };
      const p = path.join(dir, 'a.safetensors');
      writeSafetensorsFile(p, entries, { a: 'b' });
      expect(Buffer.from(fs.readFileSync(p)).equals(Buffer.from(writeSafetensors(entries, { a: 'b' })))).toBe(true);
      const file = readSafetensorsFile(p);
      for (const [k, e] of Object.entries(entries)) expectSameEntry(file.tensors.get(k), e);
      expect(file.metadata).toEqual({ a: 'b' });

      const bytes = fs.readFileSync(p);
      const q = path.join(dir, 'cut.safetensors');
      fs.writeFileSync(q, bytes.subarray(0, bytes.length - 1));
      expectFormatError(() => readSafetensorsFile(q), /cut\.safetensors.*truncated file/);
      fs.writeFileSync(q, bytes.subarray(0, 5));
      expectFormatError(() => readSafetensorsFile(q), /cut\.safetensors: file is 5 bytes/);
      fs.writeFileSync(q, bytes.subarray(0, 20));
      expectFormatError(() => readSafetensorsFile(q), /larger than the 12 bytes/);
      // a missing file is the file system's error, with its code
      expect(caught(() => readSafetensorsFile(path.join(dir, 'nope')))).toMatchObject({ code: 'ENOENT' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

// Bytes from the reference implementation's own tests (huggingface/safetensors).
describe('safetensors: compatible with the reference layout', () => {
  const attn = Float32Array.from([0, 1, 2, 3, 4, 5]);

  it('serializes byte for byte like the reference ("attn.0", F32 [1, 2, 3])', () => {
    const expected = [
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58,
      34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97,
      95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0,
      0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
    ];
    const out = writeSafetensors({ 'attn.0': { dtype: 'F32', shape: [1, 2, 3], data: attn } });
    expect(Array.from(out)).toEqual(expected);
    const back = readSafetensors(Uint8Array.from(expected));
    expectSameEntry(back.tensors.get('attn.0'), { dtype: 'F32', shape: [1, 2, 3], data: attn });
  });

  it('pads the header with spaces like the reference ("attn0", F32 [1, 1, 2, 3])', () => {
    const expected = [
      72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34,
      70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116,
      97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32, 32, 32,
      0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
    ];
    const out = writeSafetensors({ attn0: { dtype: 'F32', shape: [1, 1, 2, 3], data: attn } });
    expect(Array.from(out)).toEqual(expected);
  });

  it('metadata only, like the reference ({"framework": "pt"})', () => {
    const expected = [
      40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95, 95, 34, 58, 123, 34, 102,
      114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112, 116, 34, 125, 125, 32, 32, 32, 32, 32,
    ];
    expect(Array.from(writeSafetensors({}, { framework: 'pt' }))).toEqual(expected);
    expect(readSafetensors(Uint8Array.from(expected))).toEqual({ tensors: new Map(), metadata: { framework: 'pt' } });
  });

  it('reads hand-written files: I32 [2, 2], scalar, zero-sized, whitespace padding, spaces in JSON', () => {
    const ints = Int32Array.from([1, -2, 2147483647, -2147483648]);
    const f = readSafetensors(rawFile('{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}', bytesOf(ints)));
    expectSameEntry(f.tensors.get('test'), { dtype: 'I32', shape: [2, 2], data: ints });

    const scalar = readSafetensors(rawFile('{"test":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}', [7, 0, 0, 0]));
    expectSameEntry(scalar.tensors.get('test'), { dtype: 'I32', shape: [], data: Int32Array.from([7]) });

    const zero = readSafetensors(rawFile('{"test":{"dtype":"I32","shape":[2,0],"data_offsets":[0, 0]}}'));
    expectSameEntry(zero.tensors.get('test'), { dtype: 'I32', shape: [2, 0], data: new Int32Array(0) });

    expect(readSafetensors(rawFile('{}\r \t\n')).tensors.size).toBe(0);

    // f16 1.0 = 0x3c00, -2.0 = 0xc000; bf16 1.0 = 0x3f80, extra unknown keys are ignored
    const g = readSafetensors(
      rawFile(
        ' { "h" : { "shape" : [ 2 ] , "dtype" : "F16" , "data_offsets" : [ 4 , 8 ] , "extra": 1 } ,' +
          ' "b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}, "__metadata__": {"x": "y"} }      ',
        [0x80, 0x3f, 0x00, 0x00, 0x00, 0x3c, 0x00, 0xc0],
      ),
    );
    expectSameEntry(g.tensors.get('h'), { dtype: 'F16', shape: [2], data: Uint16Array.from([0x3c00, 0xc000]) });
    expectSameEntry(g.tensors.get('b'), { dtype: 'BF16', shape: [2], data: Uint16Array.from([0x3f80, 0]) });
    expect(Array.from(entryToFloat32(g.tensors.get('h')!))).toEqual([1, -2]);
    expect(Array.from(entryToFloat32(g.tensors.get('b')!))).toEqual([1, 0]);
    expect(g.metadata).toEqual({ x: 'y' });
  });
});

describe('safetensors: malformed files are FormatError (KVSQ_FORMAT)', () => {
  const T = (info: string) => `{"t":${info}}`;
  const ok16 = new Array(16).fill(0);
  const cases: [string, () => Uint8Array, RegExp][] = [
    ['empty file', () => new Uint8Array(0), /file is 0 bytes/],
    ['7 bytes', () => new Uint8Array(7), /file is 7 bytes/],
    ['header length beyond the file', () => rawFile('{}', [], 60), /header length 60 bytes is larger than the 2 bytes/],
    ['header length 8 bytes only', () => rawFile('', [], 60), /header length 60 bytes is larger than the 0 bytes/],
    ['oversized header (> 100 MB)', () => rawFile('{}', [], 100_000_001), /larger than the limit of 100000000 bytes \(oversized header\)/],
    ['header length >= 2^53', () => rawFile('{}', [], 0xffffffff_ffffffffn), /oversized header/],
    ['header length with the high word set', () => rawFile('{}', [], 0xffffff00_0000003cn), /oversized header/],
    ['zero-length header', () => rawFile(''), /not valid JSON/],
    ['header not UTF-8', () => Uint8Array.from([1, 0, 0, 0, 0, 0, 0, 0, 0xff]), /not valid UTF-8/],
    ['header not JSON', () => rawFile('{'), /not valid JSON/],
    ['header with trailing garbage', () => rawFile('{}x'), /not valid JSON/],
    ['header an array', () => rawFile('[]'), /must be a JSON object, got an array/],
    ['header null', () => rawFile('null'), /must be a JSON object, got null/],
    ['header a number', () => rawFile('42'), /must be a JSON object, got number 42/],
    ['header a string', () => rawFile('"x"'), /must be a JSON object, got the string/],
    ['entry not an object', () => rawFile(T('[1]')), /tensor "t": entry must be an object/],
    ['entry null', () => rawFile(T('null')), /tensor "t": entry must be an object, got null/],
    ['missing dtype', () => rawFile(T('{"shape":[4],"data_offsets":[0,16]}'), ok16), /tensor "t": entry is missing "dtype"/],
    ['missing shape', () => rawFile(T('{"dtype":"F32","data_offsets":[0,16]}'), ok16), /entry is missing "shape"/],
    ['missing data_offsets', () => rawFile(T('{"dtype":"F32","shape":[4]}'), ok16), /entry is missing "data_offsets"/],
    ['dtype not a string', () => rawFile(T('{"dtype":4,"shape":[4],"data_offsets":[0,16]}'), ok16), /dtype must be a string/],
    ['unknown dtype', () => rawFile(T('{"dtype":"F33","shape":[4],"data_offsets":[0,16]}'), ok16), /unknown dtype "F33"/],
    ['lowercase dtype', () => rawFile(T('{"dtype":"f32","shape":[4],"data_offsets":[0,16]}'), ok16), /unknown dtype "f32"/],
    ['unsupported dtype F64', () => rawFile(T('{"dtype":"F64","shape":[2],"data_offsets":[0,16]}'), ok16), /dtype F64 is not supported/],
    ['shape not an array', () => rawFile(T('{"dtype":"F32","shape":4,"data_offsets":[0,16]}'), ok16), /shape must be an array/],
    ['negative dim', () => rawFile(T('{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}'), ok16), /shape\[0\] = number -4/],
    ['fractional dim', () => rawFile(T('{"dtype":"F32","shape":[2,1.5],"data_offsets":[0,16]}'), ok16), /shape\[1\] = number 1.5/],
    ['string dim', () => rawFile(T('{"dtype":"F32","shape":["4"],"data_offsets":[0,16]}'), ok16), /shape\[0\] = the string "4"/],
    ['null dim', () => rawFile(T('{"dtype":"F32","shape":[null],"data_offsets":[0,16]}'), ok16), /shape\[0\] = null/],
    ['huge dim 2^31', () => rawFile(T('{"dtype":"F32","shape":[2147483648],"data_offsets":[0,16]}'), ok16), /expected an integer in \[0, 2\^31\)/],
    ['u64 overflow dim (reference test)', () => rawFile(T('{"dtype":"I32","shape":[2,18446744073709551614],"data_offsets":[0,16]}'), ok16), /shape\[1\]/],
    ['dim 1e400', () => rawFile(T('{"dtype":"I32","shape":[1e400],"data_offsets":[0,16]}'), ok16), /shape\[0\] = number Infinity/],
    ['rank 9', () => rawFile(T('{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,4],"data_offsets":[0,16]}'), ok16), /9 dimensions/],
    ['data_offsets not an array', () => rawFile(T('{"dtype":"F32","shape":[4],"data_offsets":16}'), ok16), /data_offsets must be an array of two integers/],
    ['data_offsets one number', () => rawFile(T('{"dtype":"F32","shape":[4],"data_offsets":[16]}'), ok16), /data_offsets must be an array of two integers/],
    ['data_offsets three numbers', () => rawFile(T('{"dtype":"F32","shape":[4],"data_offsets":[0,16,16]}'), ok16), /array of two integers/],
    ['data_offsets fractional', () => rawFile(T('{"dtype":"F32","shape":[4],"data_offsets":[0.5,16]}'), ok16), /begin = number 0.5/],
    ['data_offsets negative', () => rawFile(T('{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}'), ok16), /begin = number -16/],
    ['data_offsets strings', () => rawFile(T('{"dtype":"F32","shape":[4],"data_offsets":["0","16"]}'), ok16), /begin = the string "0"/],
    ['data_offsets beyond 2^53', () => rawFile(T('{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}'), ok16), /end = number 18446744073709552000/],
    ['begin > end', () => rawFile(T('{"dtype":"F32","shape":[4],"data_offsets":[16,0]}'), ok16), /begin 16 is after end 0/],
    ['end beyond the buffer (truncated, reference test)', () => rawFile(T('{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}'), new Array(14).fill(0)), /ends at byte 16 but the data buffer holds only 14 bytes \(truncated file\)/],
    ['byte length < product(shape) * size (reference test)', () => rawFile(T('{"dtype":"I32","shape":[2,2],"data_offsets":[0,4]}'), ok16), /span 4 bytes but shape \[2, 2\] of I32 needs 16 bytes/],
    ['byte length > product(shape) * size', () => rawFile(T('{"dtype":"F16","shape":[4],"data_offsets":[0,16]}'), ok16), /span 16 bytes but shape \[4\] of F16 needs 8 bytes/],
    ['huge product of dims', () => rawFile(T('{"dtype":"F32","shape":[2147483647,2147483647,2147483647,2147483647],"data_offsets":[0,16]}'), ok16), /needs \d/],
    [
      'overlapping tensors',
      () => rawFile('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', ok16),
      /tensors "a" \(bytes 0\.\.12\) and "b" \(bytes 8\.\.16\) overlap/,
    ],
    [
      'same offsets twice (reference "json attack")',
      () => rawFile('{"w0":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"w1":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}', ok16),
      /overlap/,
    ],
    [
      'one tensor inside another',
      () => rawFile('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}}', ok16),
      /"a" \(bytes 0\.\.16\) and "b" \(bytes 4\.\.8\) overlap/,
    ],
    ['metadata not an object', () => rawFile('{"__metadata__":"x"}'), /"__metadata__" must be an object of strings, got the string "x"/],
    ['metadata an array', () => rawFile('{"__metadata__":["x"]}'), /"__metadata__" must be an object of strings, got an array/],
    ['metadata value a number', () => rawFile('{"__metadata__":{"a":"b","n":3}}'), /value for key "n" must be a string, got number 3/],
    ['metadata value an object', () => rawFile('{"__metadata__":{"o":{"x":"y"}}}'), /value for key "o" must be a string, got an object/],
    ['metadata value null', () => rawFile('{"__metadata__":{"z":null}}'), /value for key "z" must be a string, got null/],
  ];
  it.each(cases)('%s', (_name, make, message) => {
    expectFormatError(() => readSafetensors(make()), message);
  });

  it('messages start with "safetensors:" and name the tensor', () => {
    const err = caught(() => readSafetensors(rawFile('{"layer.0.q":{"dtype":"X","shape":[],"data_offsets":[0,0]}}'))) as Error;
    expect(err.message).toBe('safetensors: tensor "layer.0.q": unknown dtype "X" (expected one of F32, F16, BF16, I32)');
  });

  it('a smaller header limit can be set', () => {
    const bytes = writeSafetensors({ a: { dtype: 'F32', shape: [1], data: new Float32Array(1) } });
    expectFormatError(() => readSafetensors(bytes, { maxHeaderBytes: 16 }), /limit of 16 bytes/);
    expect(readSafetensors(bytes, { maxHeaderBytes: 1000 }).tensors.size).toBe(1);
  });

  it('zero-sized tensors overlap nothing; gaps between tensors are accepted', () => {
    const f = readSafetensors(
      rawFile(
        '{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},' +
          '"g":{"dtype":"F16","shape":[1],"data_offsets":[18,20]}}',
        new Array(24).fill(0),
      ),
    );
    expect([...f.tensors.keys()]).toEqual(['a', 'e', 'g']);
  });

  it('bad arguments are KVSQ_ARG, not format errors', () => {
    expect(caught(() => readSafetensors('abc' as unknown as Uint8Array))).toMatchObject({ code: 'KVSQ_ARG' });
    expect(caught(() => readSafetensors(new Uint16Array(8) as unknown as Uint8Array))).toMatchObject({ code: 'KVSQ_ARG' });
    expect(caught(() => readSafetensors(new Uint8Array(8), { maxHeaderBytes: -1 }))).toMatchObject({ code: 'KVSQ_ARG' });
    expect(caught(() => readSafetensorsFile(3 as unknown as string))).toMatchObject({ code: 'KVSQ_ARG' });
  });
});

describe('safetensors: writer input checks', () => {
  const f32 = (n: number) => new Float32Array(n);
  const cases: [string, () => unknown, string][] = [
    ['tensors not an object', () => writeSafetensors(3 as never), 'KVSQ_ARG'],
    ['tensors null', () => writeSafetensors(null as never), 'KVSQ_ARG'],
    ['reserved name', () => writeSafetensors({ __metadata__: { dtype: 'F32', shape: [1], data: f32(1) } }), 'KVSQ_ARG'],
    ['duplicate name', () => writeSafetensors([['a', { dtype: 'F32', shape: [1], data: f32(1) }], ['a', { dtype: 'F32', shape: [1], data: f32(1) }]]), 'KVSQ_ARG'],
    ['entry null', () => writeSafetensors({ a: null as never }), 'KVSQ_ARG'],
    ['unknown dtype', () => writeSafetensors({ a: { dtype: 'F64' as never, shape: [1], data: f32(1) } }), 'KVSQ_DTYPE'],
    ['F16 from Float32Array', () => writeSafetensors({ a: { dtype: 'F16', shape: [1], data: f32(1) } }), 'KVSQ_DTYPE'],
    ['F32 from Float64Array', () => writeSafetensors({ a: { dtype: 'F32', shape: [1], data: new Float64Array(1) as never } }), 'KVSQ_DTYPE'],
    ['I32 from number[]', () => writeSafetensors({ a: { dtype: 'I32', shape: [1], data: [1] as never } }), 'KVSQ_DTYPE'],
    ['length mismatch', () => writeSafetensors({ a: { dtype: 'F32', shape: [2, 2], data: f32(3) } }), 'KVSQ_SHAPE'],
    ['negative dim', () => writeSafetensors({ a: { dtype: 'F32', shape: [-1], data: f32(0) } }), 'KVSQ_SHAPE'],
    ['shape not an array', () => writeSafetensors({ a: { dtype: 'F32', shape: 1 as never, data: f32(1) } }), 'KVSQ_SHAPE'],
    ['metadata value a number', () => writeSafetensors({}, { a: 1 as never }), 'KVSQ_ARG'],
    ['metadata an array', () => writeSafetensors({}, ['a'] as never), 'KVSQ_ARG'],
    ['file path not a string', () => writeSafetensorsFile(1 as never, {}), 'KVSQ_ARG'],
  ];
  it.each(cases)('%s', (_name, fn, code) => {
    const err = caught(fn);
    expect(err).toBeInstanceOf(KvsqError);
    expect((err as KvsqError).code).toBe(code);
  });

  it('an empty file is valid', () => {
    const bytes = writeSafetensors({});
    expect(Array.from(bytes)).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
    expect(readSafetensors(bytes)).toEqual({ tensors: new Map(), metadata: {} });
  });
});

describe('safetensors: Tensor conversions', () => {
  const rand = mulberry32(99);

  it.each(DTYPES)('toTensor / fromTensor keep %s bits', (dtype) => {
    const entry = randomEntry(dtype, [3, 5], rand);
    const t = toTensor(entry);
    try {
      expect(t.dtype).toBe(dtype.toLowerCase());
      expect(t.shape).toEqual([3, 5]);
      expectSameEntry(fromTensor(t), entry);
    } finally {
      t.dispose();
    }
  });

  it('scalar and empty tensors', () => {
    for (const shape of [[], [0], [2, 0]]) {
      const entry = randomEntry('F32', shape, rand);
      const t = toTensor(entry);
      expectSameEntry(fromTensor(t), entry);
      t.dispose();
    }
  });

  it('float conversions match the native ones; entryToFloat32 decodes exactly', () => {
    // every f16 and bf16 bit pattern
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    for (const dtype of ['F16', 'BF16'] as const) {
      const entry: SafetensorsEntry = { dtype, shape: [65536], data: all };
      const native = toTensor(entry);
      const viaTs = toTensor(entry, { dtype: 'f32' });
      const nat = native.toFloat32();
      const ts = viaTs.toArray() as Float32Array;
      expect(viaTs.dtype).toBe('f32');
      const pure = entryToFloat32(entry);
      // NaN payloads may differ between conversions; everything else is exact (Object.is: -0 too)
      let nans = 0;
      for (let i = 0; i < 65536; i++) {
        if (Number.isNaN(nat[i])) {
          nans++;
          if (!Number.isNaN(ts[i]) || !Number.isNaN(pure[i])) throw new Error(`${dtype} ${i}: NaN expected`);
        } else if (!Object.is(ts[i], nat[i]) || !Object.is(pure[i], nat[i]))
          throw new Error(`${dtype} ${i}: native ${nat[i]}, toTensor ${ts[i]}, entryToFloat32 ${pure[i]}`);
      }
      expect(nans).toBe(dtype === 'F16' ? 2046 : 254);
      native.dispose();
      viaTs.dispose();
    }
    const f32 = randomEntry('F32', [100], rand);
    const h = toTensor(f32, { dtype: 'bf16' });
    const ref = Tensor.from(f32.data, [100], { dtype: 'bf16' });
    expect(bytesOf(h.toArray()).equals(bytesOf(ref.toArray()))).toBe(true);
    h.dispose();
    ref.dispose();
    // f16 -> bf16 goes through the exact f32 value
    const half: SafetensorsEntry = { dtype: 'F16', shape: [3], data: Uint16Array.from([0x3c00, 0xc000, 0x3555]) };
    const b = toTensor(half, { dtype: 'bf16' });
    expect(Array.from(b.toFloat32())).toEqual([1, -2, 0.333984375]);
    b.dispose();
  });

  it('refuses int <-> float conversion and bad arguments', () => {
    expect(caught(() => toTensor(randomEntry('I32', [2], rand), { dtype: 'f32' }))).toMatchObject({ code: 'KVSQ_DTYPE' });
    expect(caught(() => toTensor(randomEntry('F32', [2], rand), { dtype: 'i32' }))).toMatchObject({ code: 'KVSQ_DTYPE' });
    expect(caught(() => toTensor(randomEntry('F32', [2], rand), { dtype: 'f64' as never }))).toMatchObject({ code: 'KVSQ_DTYPE' });
    expect(caught(() => toTensor({ dtype: 'F32', shape: [3], data: new Float32Array(2) }))).toMatchObject({ code: 'KVSQ_SHAPE' });
    expect(caught(() => toTensor(null as never))).toMatchObject({ code: 'KVSQ_ARG' });
    expect(caught(() => fromTensor({} as never))).toMatchObject({ code: 'KVSQ_ARG' });
    const t = Tensor.from(new Float32Array(1), [1]);
    t.dispose();
    expect(caught(() => fromTensor(t))).toMatchObject({ code: 'KVSQ_DISPOSED' });
  });
});

describe('safetensors: fuzz (corrupted files throw FormatError or parse)', () => {
  const rand = mulberry32(2024);
  const valid = writeSafetensors(
    {
      q: randomEntry('F32', [2, 3], rand),
      h: randomEntry('F16', [5], rand),
      b: randomEntry('BF16', [1, 2], rand),
      i: randomEntry('I32', [], rand),
      z: randomEntry('F32', [0], rand),
    },
    { shots: '[[2,8],[10,16]]' },
  );
  const headerEnd = 8 + Number(new DataView(valid.buffer).getBigUint64(0, true));
  const JSONISH = enc.encode('{}[]",:0123456789-.eE+ \\u_abcdefFBI');

  function mutate(r: () => number): Uint8Array {
    const pick = (n: number) => Math.floor(r() * n);
    const kind = pick(6);
    let b = valid.slice();
    if (kind === 0) {
      // truncate anywhere
      b = b.slice(0, pick(b.length));
    } else if (kind === 1) {
      // flip random bytes anywhere
      for (let k = 1 + pick(4); k > 0; k--) b[pick(b.length)] = pick(256);
    } else if (kind === 2 || kind === 3) {
      // JSON-looking bytes in the header
      for (let k = 1 + pick(3); k > 0; k--) b[8 + pick(headerEnd - 8)] = JSONISH[pick(JSONISH.length)];
    } else if (kind === 4) {
      // change the header length
      const dv = new DataView(b.buffer);
      if (r() < 0.5) dv.setUint32(0, dv.getUint32(0, true) + pick(17) - 8, true);
      else b[pick(8)] = pick(256);
    } else {
      // delete or insert a byte in the header, keeping the length field
      const at = 8 + pick(headerEnd - 8);
      const ins = r() < 0.5;
      const out = new Uint8Array(b.length + (ins ? 1 : -1));
      out.set(b.subarray(0, at));
      if (ins) {
        out[at] = JSONISH[pick(JSONISH.length)];
        out.set(b.subarray(at), at + 1);
      } else out.set(b.subarray(at + 1), at);
      b = out;
    }
    return b;
  }

  it('5000 mutations', () => {
    const r = mulberry32(0xf0221);
    let ok = 0;
    let rejected = 0;
    for (let it = 0; it < 5000; it++) {
      const bytes = mutate(r);
      let err: unknown;
      let file: ReturnType<typeof readSafetensors> | undefined;
      try {
        file = readSafetensors(bytes);
      } catch (e) {
        err = e;
      }
      if (err !== undefined) {
        if (!(err instanceof KvsqError) || err.code !== 'KVSQ_FORMAT')
          throw new Error(`iteration ${it}: ${String(err)} for ${Buffer.from(bytes).toString('hex')}`);
        rejected++;
      } else {
        ok++;
        // what parses is internally consistent
        for (const t of file!.tensors.values()) {
          expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1));
          expect(t.data.byteOffset).toBe(0);
        }
        for (const v of Object.values(file!.metadata)) expect(typeof v).toBe('string');
      }
    }
    expect(rejected).toBeGreaterThan(1000);
    expect(ok).toBeGreaterThan(100);
  });
});

describe('fixtures/tiny-trace.safetensors', () => {
  it('matches its generator (KVSQ_WRITE_FIXTURES=1 rewrites it)', () => {
    const bytes = makeTinyTraceBytes();
    if (process.env.KVSQ_WRITE_FIXTURES === '1') fs.writeFileSync(TINY_TRACE_PATH, bytes);
    expect(Buffer.from(fs.readFileSync(TINY_TRACE_PATH)).equals(Buffer.from(bytes))).toBe(true);
  });

  it('holds q, k, v, dq, dk, dv (f32) and the shots metadata', () => {
    const file = readSafetensorsFile(TINY_TRACE_PATH);
    expect(file.metadata).toEqual(TINY_TRACE_METADATA);
    expect(JSON.parse(file.metadata.shots)).toEqual([[2, 8], [10, 16]]);
    expect([...file.tensors.keys()].sort()).toEqual(['dk', 'dq', 'dv', 'k', 'q', 'v']);
    for (const [name, shape] of Object.entries(TINY_TRACE_SHAPES)) {
      const t = file.tensors.get(name)!;
      expect(t.dtype).toBe('F32');
      expect(t.shape).toEqual(shape);
      const d = t.data as Float32Array;
      expect(d.every((x) => x >= -1 && x < 1)).toBe(true);
      expect(new Set(d).size).toBeGreaterThan(d.length * 0.99);
    }
    expect(fs.statSync(TINY_TRACE_PATH).size).toBeLessThan(32 * 1024);
  });
});
