/**
 * WGSL programs of the named ops for tfjs-backend-webgpu's program API (backend.runWebGPUProgram). Each
 * op is one dispatch: a projection with its norm, adapter terms, activation and residual; an attention
 * with its bias, masks, prefix and causality; a cache write; a norm; a cross-entropy. Features are
 * compile-time flags in the shader key, so every variant is a straight-line shader.
 *
 * Inputs are declared by tfjs as `var<storage, read> <name>: array<f32 | i32>` and the output as
 * `result`; scalars travel as program uniforms. Indexing is done by hand (row-major).
 */

/** The fields of tfjs-backend-webgpu's WebGPUProgram these programs set. */
export interface Program {
  outputShape: number[];
  shaderKey: string;
  dispatchLayout: { x: number[]; y?: number[]; z?: number[] };
  dispatch: [number, number, number];
  variableNames: string[];
  uniforms?: string;
  workgroupSize: [number, number, number];
  getUserCode(): string;
}

const WG = 64;

/**
 * WGSL: tree-reduces each `[buffer, value]` over the workgroup into buffer[0] (max or sum). Every invocation
 * must reach it (it has barriers); readers of buffer[0] barrier again before the buffer is rewritten.
 */
function workgroupReduce(op: 'max' | 'sum', ...pairs: [buffer: string, value: string][]): string {
  const combine = pairs.map(([b]) => (op === 'max' ? `${b}[t] = max(${b}[t], ${b}[t + stride]);` : `${b}[t] += ${b}[t + stride];`)).join(' ');
  return `${pairs.map(([b, v]) => `${b}[t] = ${v};`).join(' ')}
      workgroupBarrier();
      for (var stride = ${WG / 2}; stride > 0; stride >>= 1) {
        if (t < stride) { ${combine} }
        workgroupBarrier();
      }`;
}
/** Rows one linear workgroup computes (each invocation: one output column of these rows). */
export const LINEAR_ROWS = 8;
/** Key columns an attention workgroup holds in shared memory (12 KiB); longer rows run the reference. */
export const ATTENTION_MAX_KEYS = 3072;

/** WGSL for the activations of the fused linear (gelu_new as x / (1 + e^(−2u)) = 0.5·x·(1 + tanh u)). */
function activationWgsl(name: string): string {
  switch (name) {
    case 'relu':
      return 'return max(v, 0.0);';
    case 'gelu':
      // erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7): WGSL has no erf
      return `let z = abs(v) * 0.70710678118654752;
      let t = 1.0 / (1.0 + 0.3275911 * z);
      let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t) * exp(-z * z);
      return 0.5 * v * (1.0 + select(y, -y, v < 0.0));`;
    case 'gelu_new':
      return 'let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);\n      return v / (1.0 + exp(min(-2.0 * u, 80.0)));';
    case 'silu':
      return 'return v / (1.0 + exp(min(-v, 80.0)));';
    default:
      return 'return v;';
  }
}

export interface LinearFlags {
  norm: boolean;
  bias: boolean;
  residual: boolean;
  lora: boolean;
  loraScale: boolean;
  inScale: boolean;
  outScale: boolean;
  activation: string;
  gated: boolean;
}

/**
 * A projection: workgroup (column block, row block) = 64 output columns × LINEAR_ROWS rows; each
 * invocation accumulates its column (both halves when gated) for the block's rows over the whole input.
 * The block's norm factors and LoRA down-projections are computed first, in workgroup memory.
 */
export function linearProgram(rows: number, _inF: number, pre: number, _rank: number, f: LinearFlags): Program {
  const outF = f.gated ? pre / 2 : pre;
  const names = ['x', 'W'];
  if (f.norm) names.push('normW');
  if (f.bias) names.push('bias');
  if (f.residual) names.push('residual');
  if (f.lora) names.push('loraA', 'loraB');
  if (f.lora && f.loraScale) names.push('loraS');
  if (f.inScale) names.push('inS');
  if (f.outScale) names.push('outS');
  const R = LINEAR_ROWS;
  const key = Object.entries(f)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  const x = f.inScale ? '(xv * inS[inRow * uniforms.inF + k])' : 'xv';
  return {
    outputShape: [rows, outF],
    shaderKey: `adapterkitLinear_${key}`,
    dispatchLayout: { x: [1], y: [0] },
    dispatch: [Math.ceil(outF / WG), Math.ceil(rows / R), 1],
    variableNames: names,
    uniforms: 'rows : i32, inF : i32, pre : i32, outF : i32, rank : i32, perGroup : i32, sRows : i32, inRows : i32, outRows : i32, eps : f32, normScale : f32,',
    workgroupSize: [WG, 1, 1],
    getUserCode: () => `
    ${f.norm ? `var<workgroup> red : array<f32, ${WG}>;\n    var<workgroup> inv : array<f32, ${R}>;` : ''}
    ${f.lora ? `var<workgroup> down : array<f32, ${R * 64}>;` : ''}

    fn activate(v : f32) -> f32 {
      ${activationWgsl(f.activation)}
    }

    fn main() {
      let t = i32(localId.x);
      let col = i32(workgroupId.x) * ${WG} + t;
      let row0 = i32(workgroupId.y) * ${R};
      let n = min(${R}, uniforms.rows - row0);
      let inF = uniforms.inF;

      ${
        f.norm
          ? `// norm factors of the block's rows. The loop bound is a constant: tfjs keeps workgroupId in a private
      // variable, so WGSL's uniformity analysis would reject barriers in a loop bounded by n.
      for (var r = 0; r < ${R}; r++) {
        var ss = 0.0;
        if (r < n) {
          for (var k = t; k < inF; k += ${WG}) { let v = x[(row0 + r) * inF + k]; ss += v * v; }
        }
        ${workgroupReduce('sum', ['red', 'ss'])}
        if (t == 0) { inv[r] = uniforms.normScale / sqrt(red[0] / f32(inF) + uniforms.eps); }
        workgroupBarrier();
      }`
          : ''
      }

      ${
        f.lora
          ? `// LoRA down-projections of the block's rows: down[r, q] = (x̂ · A)[r, q] · S[r, q]
      let rank = uniforms.rank;
      for (var e = t; e < ${R} * rank; e += ${WG}) {
        let r = e / rank;
        let q = e % rank;
        var acc = 0.0;
        if (r < n) {
          for (var k = 0; k < inF; k++) {
            let xv = x[(row0 + r) * inF + k]${f.norm ? ' * inv[r] * normW[k]' : ''};
            acc += xv * loraA[k * rank + q];
          }
          ${f.loraScale ? `let sRow = select((row0 + r) / uniforms.perGroup, 0, uniforms.sRows == 1);\n          acc *= loraS[sRow * rank + q];` : ''}
        }
        down[r * 64 + q] = acc;
      }
      workgroupBarrier();`
          : ''
      }

      if (col >= uniforms.outF) { return; }
      let pre = uniforms.pre;
      var acc0 : array<f32, ${R}>;
      ${f.gated ? `var acc1 : array<f32, ${R}>;` : ''}
      for (var k = 0; k < inF; k++) {
        let w0 = W[k * pre + col];
        ${f.gated ? 'let w1 = W[k * pre + col + uniforms.outF];' : ''}
        ${f.norm ? 'let nw = normW[k];' : ''}
        for (var r = 0; r < n; r++) {
          ${f.inScale ? 'let inRow = select((row0 + r) / uniforms.perGroup, 0, uniforms.inRows == 1);' : ''}
          let xv = x[(row0 + r) * inF + k]${f.norm ? ' * inv[r] * nw' : ''};
          acc0[r] += ${x} * w0;
          ${f.gated ? `acc1[r] += ${x} * w1;` : ''}
        }
      }
      for (var r = 0; r < n; r++) {
        let row = row0 + r;
        var p0 = acc0[r];
        ${f.gated ? 'var p1 = acc1[r];' : ''}
        ${
          f.outScale
            ? `let oRow = select(row / uniforms.perGroup, 0, uniforms.outRows == 1);
        p0 *= outS[oRow * pre + col];
        ${f.gated ? 'p1 *= outS[oRow * pre + col + uniforms.outF];' : ''}`
            : ''
        }
        ${
          f.lora
            ? `for (var q = 0; q < uniforms.rank; q++) {
          let d = down[r * 64 + q];
          p0 += d * loraB[q * pre + col];
          ${f.gated ? 'p1 += d * loraB[q * pre + col + uniforms.outF];' : ''}
        }`
            : ''
        }
        ${f.bias ? `p0 += bias[col];${f.gated ? ' p1 += bias[col + uniforms.outF];' : ''}` : ''}
        var y = ${f.gated ? 'activate(p0) * p1' : 'activate(p0)'};
        ${f.residual ? 'y += residual[row * uniforms.outF + col];' : ''}
        result[row * uniforms.outF + col] = y;
      }
    }
  `,
  };
}

export interface AttentionFlags {
  prefix: boolean;
  bias: boolean;
  mask: boolean;
  causal: boolean;
}

/**
 * Attention for one (query, head, batch row) per workgroup: scores over prefix and real keys in
 * workgroup memory (+ bias from the table by bucket index, + mask, causality), softmax, and the weighted
 * values for the head's d_kv outputs.
 */
export function attentionProgram(b: number, lq: number, heads: number, d: number, f: AttentionFlags): Program {
  const names = ['q', 'kv'];
  if (f.prefix) names.push('pk', 'pv');
  if (f.bias) names.push('table', 'bucket');
  if (f.mask) names.push('mask');
  const key = Object.entries(f)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  return {
    outputShape: [b, lq, heads * d],
    shaderKey: `adapterkitAttention_${key}`,
    dispatchLayout: { x: [1], y: [0] },
    dispatch: [lq, heads, b],
    variableNames: names,
    uniforms:
      'lq : i32, lk : i32, p : i32, heads : i32, d : i32, qCols : i32, qOffset : i32, kvCols : i32, kOffset : i32, vOffset : i32, prefixRows : i32, maskRows : i32, causalOffset : i32,',
    workgroupSize: [WG, 1, 1],
    getUserCode: () => `
    var<workgroup> scores : array<f32, ${ATTENTION_MAX_KEYS}>;
    var<workgroup> qv : array<f32, 256>;
    var<workgroup> red : array<f32, ${WG}>;

    fn main() {
      let t = i32(localId.x);
      let i = i32(workgroupId.x);
      let h = i32(workgroupId.y);
      let bi = i32(workgroupId.z);
      let d = uniforms.d;
      let p = uniforms.p;
      let cols = p + uniforms.lk;
      let qBase = (bi * uniforms.lq + i) * uniforms.qCols + uniforms.qOffset + h * d;
      for (var e = t; e < d; e += ${WG}) { qv[e] = q[qBase + e]; }
      workgroupBarrier();
      ${f.prefix ? 'let pRow = select(bi, 0, uniforms.prefixRows == 1);\n      let pBase = (pRow * uniforms.heads + h) * p * d;' : ''}
      ${f.mask ? 'let mRow = select(bi, 0, uniforms.maskRows == 1);' : ''}
      var localMax = -3.0e38;
      for (var j = t; j < cols; j += ${WG}) {
        var s = 0.0;
        if (j < p) {
          ${f.prefix ? 'for (var e = 0; e < d; e++) { s += qv[e] * pk[pBase + j * d + e]; }' : ''}
        } else {
          let kBase = (bi * uniforms.lk + (j - p)) * uniforms.kvCols + uniforms.kOffset + h * d;
          for (var e = 0; e < d; e++) { s += qv[e] * kv[kBase + e]; }
          ${f.causal ? 'if (j - p > i + uniforms.causalOffset) { s += -1.0e9; }' : ''}
        }
        ${f.bias ? 'let bk = bucket[i * cols + j];\n        if (bk >= 0) { s += table[bk * uniforms.heads + h]; }' : ''}
        ${f.mask ? 's += mask[mRow * cols + j];' : ''}
        scores[j] = s;
        localMax = max(localMax, s);
      }
      ${workgroupReduce('max', ['red', 'localMax'])}
      let m = red[0];
      workgroupBarrier();
      var localSum = 0.0;
      for (var j = t; j < cols; j += ${WG}) {
        let e = exp(scores[j] - m);
        scores[j] = e;
        localSum += e;
      }
      ${workgroupReduce('sum', ['red', 'localSum'])}
      let invSum = 1.0 / red[0];
      let outBase = (bi * uniforms.lq + i) * uniforms.heads * d + h * d;
      for (var e = t; e < d; e += ${WG}) {
        var acc = 0.0;
        ${f.prefix ? 'for (var j = 0; j < p; j++) { acc += scores[j] * pv[pBase + j * d + e]; }' : ''}
        for (var j = 0; j < uniforms.lk; j++) {
          acc += scores[p + j] * kv[(bi * uniforms.lk + j) * uniforms.kvCols + uniforms.vOffset + h * d + e];
        }
        result[outBase + e] = acc * invSum;
      }
    }
  `,
  };
}

/** cache [B, capacity, C] with slot `position` taken from source[:, 0, offset : offset + C]. */
export function cacheWriteProgram(shape: number[]): Program {
  const size = shape[0] * shape[1] * shape[2];
  return {
    outputShape: shape,
    shaderKey: 'adapterkitCacheWrite',
    dispatchLayout: { x: [1], y: [0] },
    dispatch: [Math.ceil(size / WG), 1, 1],
    variableNames: ['cache', 'source'],
    uniforms: 'size : i32, capacity : i32, c : i32, sourceCols : i32, sourceOffset : i32, position : i32,',
    workgroupSize: [WG, 1, 1],
    getUserCode: () => `
    fn main() {
      let idx = i32(workgroupId.x) * ${WG} + i32(localId.x);
      if (idx >= uniforms.size) { return; }
      let c = uniforms.c;
      let col = idx % c;
      let slot = (idx / c) % uniforms.capacity;
      let row = idx / (c * uniforms.capacity);
      if (slot == uniforms.position) {
        result[idx] = source[row * uniforms.sourceCols + uniforms.sourceOffset + col];
      } else {
        result[idx] = cache[idx];
      }
    }
  `,
  };
}

/** A program with one workgroup of WG invocations per row. */
function perRowProgram(outputShape: number[], shaderKey: string, rows: number, variableNames: string[], uniforms: string, code: () => string): Program {
  return { outputShape, shaderKey, dispatchLayout: { x: [1], y: [0] }, dispatch: [rows, 1, 1], variableNames, uniforms, workgroupSize: [WG, 1, 1], getUserCode: code };
}

/** RMS norm, one workgroup per row. */
export function rmsNormProgram(shape: number[], rows: number): Program {
  return perRowProgram(
    shape,
    'adapterkitRmsNorm',
    rows,
    ['x', 'w'],
    'd : i32, eps : f32,',
    () => `
    var<workgroup> red : array<f32, ${WG}>;
    fn main() {
      let t = i32(localId.x);
      let base = i32(workgroupId.x) * uniforms.d;
      var ss = 0.0;
      for (var k = t; k < uniforms.d; k += ${WG}) { let v = x[base + k]; ss += v * v; }
      ${workgroupReduce('sum', ['red', 'ss'])}
      let inv = 1.0 / sqrt(red[0] / f32(uniforms.d) + uniforms.eps);
      for (var k = t; k < uniforms.d; k += ${WG}) { result[base + k] = x[base + k] * inv * w[k]; }
    }
  `,
  );
}

/** Per-token cross-entropy, one workgroup per row (label −100: 0). */
export function crossEntropyProgram(rows: number): Program {
  return perRowProgram(
    [rows],
    'adapterkitCrossEntropy',
    rows,
    ['logits', 'labels'],
    'v : i32, smoothing : f32,',
    () => `
    var<workgroup> red : array<f32, ${WG}>;
    var<workgroup> red2 : array<f32, ${WG}>;
    fn main() {
      let t = i32(localId.x);
      let row = i32(workgroupId.x);
      let label = labels[row];
      let base = row * uniforms.v;
      var mx = -3.0e38;
      for (var j = t; j < uniforms.v; j += ${WG}) { mx = max(mx, logits[base + j]); }
      ${workgroupReduce('max', ['red', 'mx'])}
      let m = red[0];
      workgroupBarrier();
      var sum = 0.0;
      var total = 0.0;
      for (var j = t; j < uniforms.v; j += ${WG}) { let l = logits[base + j]; sum += exp(l - m); total += l; }
      ${workgroupReduce('sum', ['red', 'sum'], ['red2', 'total'])}
      if (t == 0) {
        if (label == -100) {
          result[row] = 0.0;
        } else {
          let lse = m + log(red[0]);
          let nll = lse - logits[base + label];
          let eps = uniforms.smoothing;
          result[row] = (1.0 - eps) * nll + eps * (lse - red2[0] / f32(uniforms.v));
        }
      }
    }
  `,
  );
}
