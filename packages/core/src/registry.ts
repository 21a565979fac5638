import { ConfigError } from './errors.js';
import type { AdapterConfig, AdapterMethod } from './hooks.js';

const methods = new Map<string, AdapterMethod>();
const configMethodToMethod = new Map<string, AdapterMethod>();
const presets = new Map<string, AdapterConfig>();

/** Called by method packages when they are imported. Registering the same method twice is a no-op. */
export function registerMethod(method: AdapterMethod): AdapterMethod {
  if (methods.get(method.name) === method) return method;
  methods.set(method.name, method);
  for (const m of method.configMethods) configMethodToMethod.set(m, method);
  for (const [id, cfg] of Object.entries(method.presets)) presets.set(id, cfg);
  return method;
}

/** Presets that combine methods (MAM, UniPELT) register themselves here. */
export function registerPreset(id: string, config: AdapterConfig): void {
  presets.set(id, config);
}

export function registeredMethods(): AdapterMethod[] {
  return [...methods.values()];
}

export function methodForConfig(config: AdapterConfig): AdapterMethod {
  const m = configMethodToMethod.get(config.method);
  if (!m) {
    const known = [...configMethodToMethod.keys()];
    throw new ConfigError(
      `unknown adapter method '${config.method}'${known.length ? ` (registered: ${known.join(', ')})` : ''}; import the package that provides it (e.g. @adapterkit/lora)`,
      'method',
    );
  }
  return m;
}

export function methodByName(name: string): AdapterMethod | undefined {
  return methods.get(name);
}

export function methodForPeftType(peftType: string): AdapterMethod | undefined {
  return [...methods.values()].find((m) => m.peftTypes?.includes(peftType));
}

/** The method that imports an `adapters` config of this architecture (`adapters` reads a missing one as a bottleneck config). */
export function methodForAdaptersArchitecture(architecture: string | null | undefined): AdapterMethod | undefined {
  const arch = architecture ?? 'bottleneck';
  return [...methods.values()].find((m) => m.adaptersArchitectures?.includes(arch));
}

const STRING_CONFIG = /^([A-Za-z0-9_+-]+)(?:\[(.*)\])?$/s;

function parseValue(raw: string): unknown {
  const v = raw.trim();
  if (v === 'true' || v === 'True') return true;
  if (v === 'false' || v === 'False') return false;
  if (v === 'null' || v === 'None') return null;
  if (/^-?\d+(\.\d+)?(e-?\d+)?$/i.test(v)) return Number(v);
  if (v.startsWith('[') || v.startsWith('{')) {
    try {
      return JSON.parse(v);
    } catch {
      throw new ConfigError(`cannot parse config value ${v}`);
    }
  }
  return v.replace(/^["']|["']$/g, '');
}

/** Splits at the separators that are outside brackets: "a=1,b=[1,2]|c=x" at ',' or '|'. */
function splitTopLevel(s: string, separators: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '[' || ch === '{') depth++;
    if (ch === ']' || ch === '}') depth--;
    if (separators.includes(ch) && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (cur.trim()) out.push(cur);
  return out;
}

/**
 * Resolves a config given as a preset id, an `adapters`-style string ("double_seq_bn[reduction_factor=8]",
 * "lora[r=4,alpha=8]", unions "a[...]|b[...]") or an object, into a full config with the method's defaults, validated.
 */
export function resolveConfig(config: string | AdapterConfig): AdapterConfig {
  let raw: AdapterConfig;
  if (typeof config === 'string') {
    // `adapters`' union strings: "prefix_tuning[bottleneck_size=800]|par_bn" is ConfigUnion(prefix, par_bn)
    const parts = splitTopLevel(config, '|');
    if (parts.length > 1) return resolveConfig({ method: 'union', configs: parts.map((p) => p.trim()) });
    const m = STRING_CONFIG.exec(config.trim());
    if (!m) throw new ConfigError(`cannot parse adapter config string '${config}'`);
    const base = presets.get(m[1]);
    if (!base) {
      throw new ConfigError(`unknown adapter config '${m[1]}' (known: ${[...presets.keys()].sort().join(', ') || 'none — import a method package'})`, 'config');
    }
    raw = structuredClone(base);
    for (const kv of m[2] ? splitTopLevel(m[2], ',|') : []) {
      const eq = kv.indexOf('=');
      if (eq < 0) throw new ConfigError(`override '${kv}' in '${config}' is not key=value`);
      const key = kv.slice(0, eq).trim();
      const value = parseValue(kv.slice(eq + 1));
      if (!key || key.split('.').includes('__proto__')) throw new ConfigError(`override '${kv}' in '${config}' has an invalid key`, key);
      if (raw.method === 'union') {
        // "mam[0.bottleneck_size=64]" addresses a part by index, as adapters does.
        const dot = key.indexOf('.');
        const parts = raw.configs as (string | AdapterConfig)[];
        const index = Number(key.slice(0, dot));
        if (dot < 0 || !Array.isArray(parts) || !Number.isInteger(index) || !parts[index]) {
          throw new ConfigError(`override '${key}' of a union config must be '<index>.<option>'`, key);
        }
        // A part given as a preset string ("prefix_tuning") is resolved before it can take an option.
        if (typeof parts[index] === 'string') parts[index] = resolveConfig(parts[index] as string);
        (parts[index] as AdapterConfig)[key.slice(dot + 1)] = value;
      } else raw[key] = value;
    }
  } else {
    if (!config || typeof config !== 'object' || typeof config.method !== 'string') {
      throw new ConfigError(`adapter config must be a string or an object with a 'method' field, got ${JSON.stringify(config)}`, 'method');
    }
    raw = structuredClone(config);
  }
  if (raw.method === 'union') {
    if (!Array.isArray(raw.configs) || raw.configs.length === 0) throw new ConfigError("a union config needs a non-empty 'configs' list", 'configs');
    const parts = (raw.configs as (string | AdapterConfig)[]).map((c) => {
      const r = resolveConfig(c);
      if (r.method === 'union') throw new ConfigError('union configs cannot be nested', 'configs');
      return r;
    });
    const seen = new Set<string>();
    for (const p of parts) {
      const method = methodForConfig(p).name;
      if (seen.has(method)) throw new ConfigError(`a union config may hold one config per method; '${method}' appears twice`, 'configs');
      seen.add(method);
    }
    return { ...raw, configs: parts };
  }
  return methodForConfig(raw).normalizeConfig(raw);
}
