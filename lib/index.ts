/**
 * kvsqueeze: KV-cache compression for LLM inference.
 */
export * from './errors';
export { Tensor } from './tensor';
export type { DType, Device, TensorData, TensorOptions } from './tensor';
export { backend } from './backend';
export type { BackendInfo, CudaDevice } from './backend';
export { ops } from './ops';
export type {
  Reduce,
  PoolMode,
  DecodeAttentionArgs,
  DecodeAttentionResult,
  WindowScoresOptions,
  Pool1dOptions,
  ChunkScoresOptions,
  TopkOptions,
  TopkResult,
  QuestBoundsArgs,
  QuestSelectArgs,
  QuestSelectResult,
  AppendArgs,
  GatherArgs,
  PageMetaArgs,
  ReadScoresArgs,
  WriteScoresArgs,
} from './ops';
export { PagedKVCache, Sequence } from './cache/paged-cache';
export type { PagedKVCacheOptions, SequenceOptions, CacheStats, SequenceStats, PerLayer } from './cache/paged-cache';
export * from './policies';
export * from './io/safetensors';
