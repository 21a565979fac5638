// The "Adding a method" example of packages/core/README.md, verbatim: a method that scales every
// feed-forward output projection by a learned vector (IA3 on `ffn_out`), declared for the fused kernel.
// guide.test.ts runs it on the fixture model, so the guide stays true.
import { tf } from '@adapterkit/backend';
import { AdapterTable, ConfigError, TableRuntime, registerMethod } from '@adapterkit/core';
import type { AdapterMethod, ForwardContext, LinearSite, MethodRuntime, ModelAccess } from '@adapterkit/core';
import { dispatch } from '@adapterkit/compose';

type ScaleAdapter = Map<string, tf.Variable>; // `${site.key}.scale` → [1, out]

class ScaleRuntime extends TableRuntime<ScaleAdapter> implements MethodRuntime {
  protected readonly adapters = new AdapterTable<ScaleAdapter>('scale', (a) => a);
  constructor(private readonly model: ModelAccess) {
    super();
  }

  add(name: string): void {
    this.adapters.assertNew(name);
    const vars: ScaleAdapter = new Map();
    for (const s of this.model.linearSites()) if (s.role === 'ffn_out') vars.set(`${s.key}.scale`, tf.variable(tf.ones([1, s.outFeatures])));
    this.adapters.add(name, vars);
  }

  // The active composition, walked by compose's dispatcher: which adapters act on which rows here.
  linearTerms(site: LinearSite, rows: number, ctx: ForwardContext) {
    type Rows = { start: number; end: number; names: string[] };
    const acting = dispatch<Rows>(
      site.layer,
      { start: 0, end: rows, names: [] },
      {
        has: (n) => this.adapters.find(n)?.has(`${site.key}.scale`) ?? false,
        single: (n, s) => ({ ...s, names: [...s.names, n] }),
        rows: (s) => s.end - s.start,
        sliceRows: (s, a, b) => ({ start: s.start + a, end: s.start + b, names: s.names }),
        concatRows: (parts) => ({ start: parts[0]!.start, end: parts[parts.length - 1]!.end, names: parts.flatMap((p) => p.names) }),
      },
      ctx,
    );
    if (!acting) return undefined;
    const vector = (n: string) => this.adapters.get(n).get(`${site.key}.scale`)!;
    return acting.names.map((n) => ({ kind: 'outScale' as const, vector: vector(n), scale: 1, rows: [{ start: acting.start, end: acting.end }] }));
  }
}

export const scaleMethod = {
  name: 'scale',
  configMethods: ['scale'],
  presets: { scale: { method: 'scale' } },
  supportedBlocks: new Set(['Stack'] as const),
  normalizeConfig: (raw) => {
    for (const k of Object.keys(raw)) if (k !== 'method') throw new ConfigError(`unknown scale option '${k}'`, k);
    return { method: 'scale' };
  },
  attach: (model) => new ScaleRuntime(model),
} satisfies AdapterMethod<ScaleRuntime>;

registerMethod(scaleMethod);
