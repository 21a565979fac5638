/**
 * Every scenario file is imported here, once, for its `defineScenario` side effects.
 * Order here is the order scenarios run in.
 */

// Backend-level scenarios: single ops and their gradients, no adapterkit model code.
import './backend-ops.js';
// The named ops: each backend's fused kernels against cpu's reference.
import './kernels.js';

// Model-level scenarios go below, one file per package, e.g. `./t5.ts` exercising @adapterkit/t5
// (tiny random-weight config, encoder forward, one decoder step with KV cache, one LoRA training step).
// To add one: create src/scenarios/<pkg>.ts calling defineScenario(...), import it here, add
// "@adapterkit/<pkg>": "workspace:^" to this package's dependencies and
// { "path": "../../packages/<pkg>" } to tsconfig.json's references. Keep shapes tiny: webgpu runs on
// SwiftShader in CI (~0.3 GFLOP/s).
// import './core.js';
import './prefix.js';
import './t5.js';
import './bottleneck.js';
import './lora.js';
import './compose.js';
import './train.js';
