/** Budgets given as tokens or as a ratio of the prompt length. */
import { ArgumentError, KvsqRangeError, show } from '../errors';

export interface BudgetOptions {
  /** Tokens per head, the observation window included. */
  budget?: number;
  /** Fraction of the prompt length L: ceil(ratio * L) tokens. */
  ratio?: number;
}

export type Budget = { tokens: number } | { ratio: number };

export function parseBudget(o: BudgetOptions, what: string, defaultTokens: number): Budget {
  if (o.budget !== undefined && o.ratio !== undefined) throw new KvsqRangeError(`${what}: give budget or ratio, not both`);
  if (o.ratio !== undefined) {
    if (typeof o.ratio !== 'number' || !(o.ratio > 0 && o.ratio <= 1))
      throw new KvsqRangeError(`${what}: ratio = ${show(o.ratio)} must be in (0, 1]`);
    return { ratio: o.ratio };
  }
  const t = o.budget ?? defaultTokens;
  if (typeof t !== 'number' || !Number.isInteger(t) || t < 1) throw new KvsqRangeError(`${what}: budget = ${show(t)} must be a positive integer`);
  return { tokens: t };
}

export function resolveBudget(b: Budget, seqLen: number): number {
  return 'tokens' in b ? b.tokens : Math.ceil(b.ratio * seqLen);
}

export function budgetParams(b: Budget): Record<string, number> {
  return 'tokens' in b ? { budget: b.tokens } : { ratio: b.ratio };
}

export function checkInt(x: unknown, what: string, lo: number, hi = 2 ** 31 - 1): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < lo || x > hi)
    throw new KvsqRangeError(`${what} = ${show(x)}: expected an integer in [${lo}, ${hi}]`);
  return x;
}

export function checkChoice<T extends string>(x: unknown, what: string, allowed: readonly T[]): T {
  if (typeof x !== 'string' || !(allowed as readonly string[]).includes(x))
    throw new KvsqRangeError(`${what} = ${show(x)}: expected one of ${allowed.join(', ')}`);
  return x as T;
}

/** The options object of a policy constructor: undefined means defaults; anything but a plain object is an error. */
export function checkOptions<T extends object>(o: T | undefined, what: string): T {
  if (o === undefined) return {} as T;
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new ArgumentError(`${what}: options must be an object`);
  return o;
}
