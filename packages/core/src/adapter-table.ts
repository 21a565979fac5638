import type { Variable } from '@adapterkit/backend';
import { AdapterError } from './errors.js';

/**
 * The adapters one method holds, by name — the bookkeeping every MethodRuntime needs: add once, look up
 * with a typed error, list an adapter's variables under their save names, dispose them on removal.
 */
export class AdapterTable<A> {
  private readonly byName = new Map<string, A>();

  /** `label` names the method in errors ("LoRA", "prefix"…); `variablesOf` gives an adapter's variables by save name. */
  constructor(
    private readonly label: string,
    private readonly variablesOf: (adapter: A) => Map<string, Variable>,
  ) {}

  /** Throws when `name` is taken (call before creating an adapter's variables, so none leak). */
  assertNew(name: string): void {
    if (this.byName.has(name)) throw new AdapterError(`${this.label} adapter '${name}' already exists`, name);
  }

  add(name: string, adapter: A): void {
    this.assertNew(name);
    this.byName.set(name, adapter);
  }

  /** The adapter, or an AdapterError naming the method and the missing name. */
  get(name: string): A {
    const a = this.byName.get(name);
    if (a === undefined) throw new AdapterError(`no ${this.label} adapter named '${name}'`, name);
    return a;
  }

  find(name: string): A | undefined {
    return this.byName.get(name);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** The adapter's variables by save name (a fresh map). */
  variables(name: string): Map<string, Variable> {
    return new Map(this.variablesOf(this.get(name)));
  }

  /** Disposes the adapter's variables and forgets it; false when there was none. */
  remove(name: string): boolean {
    const a = this.byName.get(name);
    if (a === undefined) return false;
    for (const v of this.variablesOf(a).values()) v.dispose();
    this.byName.delete(name);
    return true;
  }

  values(): IterableIterator<A> {
    return this.byName.values();
  }
}

/**
 * The part of a MethodRuntime that only keeps adapters (`has`, `variables`, `remove`), over its table.
 * Runtimes extend it and add their hooks; one that must undo something first overrides `remove`.
 */
export abstract class TableRuntime<A> {
  protected abstract readonly adapters: AdapterTable<A>;

  has(name: string): boolean {
    return this.adapters.has(name);
  }

  variables(name: string): Map<string, Variable> {
    return this.adapters.variables(name);
  }

  remove(name: string): void {
    this.adapters.remove(name);
  }
}
