/**
 * Loads the addon (a prebuild from prebuilds/, or build/Release from a source
 * build) and hands it the error classes. Loading never touches CUDA.
 */
import * as path from 'path';
import { errorClasses } from './errors';

export interface NativeTensorHandle {
  readonly shape: number[];
  readonly dtype: string;
  readonly device: string;
  readonly nbytes: number;
  readonly disposed: boolean;
  toArray(): Float32Array | Uint16Array | Int32Array;
  toFloat32(into?: Float32Array): Float32Array;
  write(src: Float32Array | Int32Array | Uint16Array): unknown;
  to(device: string): NativeTensorHandle;
  dispose(): void;
}

export interface NativeAddon {
  NativeTensor: new (
    data: Float32Array | Uint16Array | Int32Array | null,
    shape: number[],
    dtype: string,
    device?: string,
  ) => NativeTensorHandle;
  setErrorClasses(map: Record<string, unknown>): void;
  backendInfo(): unknown;
  setThreads(n: number): number;
  forceSimd(mode: number): void;
  /** null when the CUDA decode kernels take K/V rows of headDim x dtype on device index `device`, else why not. */
  decodeRowCheck(device: number, dtype: string, headDim: number): string | null;
  // op bindings (native/napi/ops.cc); typed by lib/ops.ts
  [op: string]: unknown;
}

function load(): NativeAddon {
  // dist/native.js and lib/native.ts both sit one level below the package root.
  const root = path.join(__dirname, '..');
  // KVSQ_ADDON names a specific binary (a debug, sanitizer or CUDA build
  // carried to another machine); node-gyp-build is not needed then.
  const explicit = process.env.KVSQ_ADDON;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const addon = explicit ? (require(path.resolve(explicit)) as NativeAddon) : (require('node-gyp-build') as (dir: string) => NativeAddon)(root);
  addon.setErrorClasses(errorClasses);
  return addon;
}

export const native: NativeAddon = load();
