// Peak memory of one training step on the cpu backend: forward, causal-LM loss and
// backward of a Llama of shape d 256 / 4 layers / 4 heads / intermediate 688 / vocab
// 32000, batch 8 × 128 tokens, f32, with LoRA or DoRA (r 8, lora_alpha 16, dropout
// 0.05) on q/k/v or on every linear layer, with and without gradient checkpointing.
//
// The allocator's peak (the addon counts live bytes at every allocation) is reset
// after the model and its adapters are built, so a row's "step peak" is the most bytes
// live at once during the step minus what was live before it (weights, adapters): the
// activations, gradients and temporaries. Each row also prints the loss and a digest of
// every adapter gradient's bytes, so two builds can be compared bit for bit.
//
//   node dist/bench/train_memory.js [row-name-prefix]
import { createHash } from 'node:crypto';
import { backward } from '../src/autograd/tape.js';
import { loadCpuAddon } from '../src/backend/cpu/addon.js';
import { getBackend } from '../src/backend/registry.js';
import { causalLmLoss } from '../src/models/loss.js';
import { randn, tensor } from '../src/ops/creation.js';
import { assign } from '../src/ops/inplace.js';
import { Rng } from '../src/tensor/rng.js';
import { scope } from '../src/tensor/tensor.js';
import { injectAdapters } from '../src/train/adapters.js';
import { enableGradientCheckpointing } from '../src/train/grad_checkpoint.js';
import { buildLlama } from './train_cpu.js';

const SHAPE = { hidden: 256, layers: 4, heads: 4, intermediate: 688, vocab: 32000, batch: 8, seq: 128 };
const QKV = ['q_proj', 'k_proj', 'v_proj'];
const ALL = [...QKV, 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

interface Row {
  readonly name: string;
  readonly dora: boolean;
  readonly targets: readonly string[];
  readonly checkpointing: boolean;
}

const ROWS: Row[] = [];
for (const dora of [false, true]) {
  for (const [where, targets] of [['qkv', QKV], ['all', ALL]] as const) {
    for (const checkpointing of [false, true]) {
      ROWS.push({ name: `${dora ? 'dora' : 'lora'} ${where}${checkpointing ? ' ckpt' : ''}`, dora, targets, checkpointing });
    }
  }
}

const MIB = 1024 * 1024;

function measure(row: Row): { peak: number; before: number; loss: number; digest: string } {
  const addon = loadCpuAddon();
  const model = buildLlama(SHAPE, getBackend('cpu'), 5);
  const { target, lora } = injectAdapters(model, {
    r: 8, alpha: 16, dropout: 0.05, targetModules: [...row.targets], useDora: row.dora, useRslora: false, baseModel: 'bench', seed: 3,
  });
  // lora_B starts at zero, which leaves lora_A's gradient zero; small values exercise every term.
  const rng = new Rng(9);
  for (const [name, t] of target.parameters) if (name.includes('lora_B')) scope(() => assign(t, randn(t.shape, rng, { std: 0.02, device: model.backend })));
  lora.invalidate();
  const undo = row.checkpointing ? enableGradientCheckpointing(model, lora.dropout) : () => {};
  model.train();
  const idRng = new Rng(11);
  const ids = tensor(Int32Array.from({ length: SHAPE.batch * SHAPE.seq }, () => Math.floor(idRng.next() * SHAPE.vocab)), [SHAPE.batch, SHAPE.seq], {
    dtype: 'int32', device: model.backend,
  });
  const before = addon.liveBytes();
  addon.resetPeak();
  const loss = scope(() => {
    const l = causalLmLoss(model.forward(ids), ids);
    backward(l);
    return l.item();
  });
  const peak = addon.peakBytes() - before;
  const hash = createHash('sha256');
  hash.update(Buffer.from(Float64Array.of(loss).buffer));
  for (const [name, t] of target.parameters) {
    hash.update(name);
    hash.update(Buffer.from(Float32Array.from(t.grad!.toArray()).buffer));
  }
  undo();
  model.dispose();
  ids.dispose();
  for (const [, t] of target.parameters) t.grad?.dispose();
  return { peak, before, loss, digest: hash.digest('hex').slice(0, 16) };
}

const prefix = process.argv[2] ?? '';
console.log(`d${SHAPE.hidden} / ${SHAPE.layers} layers / vocab ${SHAPE.vocab}, batch ${SHAPE.batch} x ${SHAPE.seq}, f32, r 8, cpu`);
console.log('row                 weights MiB   step peak MiB   loss                 gradient digest');
for (const row of ROWS.filter((r) => r.name.startsWith(prefix))) {
  const m = measure(row);
  console.log(
    `${row.name.padEnd(18)} ${(m.before / MIB).toFixed(1).padStart(12)} ${(m.peak / MIB).toFixed(1).padStart(15)}   ${m.loss.toPrecision(17).padEnd(20)} ${m.digest}`,
  );
}
