import { ConfigError } from './errors.js';

/**
 * An options object's keys as a checked list: `{ seed: true, … } satisfies OptionKeys<MyOptions>` fails to
 * compile when the interface gains or loses a key, so the list cannot drift from the type.
 */
export type OptionKeys<T> = { readonly [K in keyof Required<T>]: true };

/** Throws a ConfigError naming the first key of `options` that `known` lacks: an unknown option is an error, never ignored. */
export function rejectUnknownOptions(options: object | null | undefined, known: Readonly<Record<string, true>>, where: string): void {
  if (options === null || options === undefined) return;
  for (const key of Object.keys(options)) {
    if (!Object.hasOwn(known, key)) throw new ConfigError(`${where}: unknown option '${key}' (known: ${Object.keys(known).join(', ')})`, key);
  }
}
