/**
 * A tiny test-only adapter method: 'testbias' adds a learned vector to the FFN output of every layer
 * (through the sub-layer hook). Enough to exercise the trainer without depending on a real method package.
 */
import { tf, type Tensor, type Variable } from '@adapterkit/backend';
import {
  ConfigError,
  SeededRandom,
  leavesWithAncestors,
  registerMethod,
  type AdapterConfig,
  type AdapterMethod,
  type ForwardContext,
  type MethodRuntime,
  type ModelAccess,
  type SublayerSite,
} from '@adapterkit/core';

let counter = 0;

export const biasMethod: AdapterMethod = {
  name: 'testbias',
  configMethods: ['testbias'],
  presets: { testbias: { method: 'testbias', scale: 1, init_std: 0.01 } },
  supportedBlocks: new Set(['Stack']),
  normalizeConfig(raw: AdapterConfig): AdapterConfig {
    const c = { scale: 1, init_std: 0.01, ...raw };
    if (typeof c.scale !== 'number') throw new ConfigError('testbias scale must be a number', 'scale');
    return c;
  },
  attach(model: ModelAccess): MethodRuntime {
    const adapters = new Map<string, { config: AdapterConfig; vars: Map<string, Variable> }>();
    const sites = model.sublayerSites().filter((s) => s.location === 'output');
    return {
      add(name, config, seed) {
        const rng = new SeededRandom(seed);
        const vars = new Map<string, Variable>();
        for (const s of sites) {
          const data = Float32Array.from({ length: s.hiddenSize }, () => rng.normal(0, config.init_std as number));
          const init = tf.tensor1d(data);
          vars.set(`${s.key}.bias`, tf.variable(init, true, `testbias/${name}/${s.key}/${counter++}`));
          init.dispose();
        }
        adapters.set(name, { config, vars });
      },
      remove(name) {
        for (const v of adapters.get(name)?.vars.values() ?? []) v.dispose();
        adapters.delete(name);
      },
      has: (name) => adapters.has(name),
      variables: (name) => adapters.get(name)!.vars,
      sublayer(site: SublayerSite, output: Tensor, residual: Tensor, ctx: ForwardContext) {
        if (site.location !== 'output' || !ctx.composition || ctx.isSkipped(site.layer)) return undefined;
        const names = leavesWithAncestors(ctx.composition)
          .map((l) => l.name)
          .filter((n) => adapters.has(n));
        if (names.length === 0) return undefined;
        return tf.tidy(() => {
          let out = output;
          for (const n of names) {
            const a = adapters.get(n)!;
            out = out.add(a.vars.get(`${site.key}.bias`)!.mul(a.config.scale as number));
          }
          return out.add(residual);
        });
      },
    };
  },
};

registerMethod(biasMethod);
