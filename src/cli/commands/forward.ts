// `finlora forward`: runs a model on given token ids and writes the f32 logits (and with
// --labels the mean next-token loss, shifted as transformers' causal-LM loss) to a
// safetensors file: the numbers to hold against transformers when checking a
// conversion. Input is validated before the model is loaded; --out is written
// atomically, so a failure leaves no file.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AdapterError, loadPeftAdapter } from '../../adapters/peft.js';
import type { Backend } from '../../backend/backend.js';
import { noGrad } from '../../autograd/tape.js';
import { SafetensorsError, writeSafetensors } from '../../io/safetensors.js';
import { CheckpointError } from '../../models/checkpoint.js';
import { ConfigError } from '../../models/llama/config.js';
import { LlamaForCausalLM, type WeightDType } from '../../models/llama/model.js';
import { causalLmLoss } from '../../models/loss.js';
import { tensor } from '../../ops/creation.js';
import { cast, reshape } from '../../ops/view.js';
import { formatShape } from '../../tensor/shape.js';
import { scope } from '../../tensor/tensor.js';
import type { Command } from '../command.js';
import { deviceHelp, DEVICE_OPTION, resolveDevice } from '../device.js';
import { parseCommandArgs, UsageError, UserError } from '../errors.js';
import { modelDir } from '../model_arg.js';

const HELP = `finlora forward — run a model on token ids and save its logits

Usage:
  finlora forward --model DIR --input-ids '[[1, 306, 4658], [1, 450, 2107]]' --out logits.safetensors [--labels]
                  [--adapter DIR [--merge]]

Options:
  --model DIR         a Hugging Face model directory (config.json, model.safetensors or
                      model.safetensors.index.json with its shards), or a hub id
                      org/name[@revision], found in or downloaded to the Hugging Face
                      cache (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN)
  --input-ids JSON    token ids, one array per sequence; every row must have the same
                      length (this command does no padding)
  --out FILE          safetensors file to write: "logits", f32 [batch, seq, vocab]
  --labels            also write "loss", f32 [] : the mean cross-entropy of
                      logits[:, :-1] predicting input_ids[:, 1:] (transformers'
                      model(input_ids, labels=input_ids).loss)
  --dtype f32|bf16    storage dtype of the weights in memory (default f32, and f32
                      compute); bf16 computes in bf16 on a device that does (cuda).
                      The logits are written in f32 either way
${deviceHelp(22)}
  --adapter DIR       apply a PEFT LoRA / DoRA adapter directory (adapter_config.json,
                      adapter_model.safetensors) to the model
  --merge             with --adapter: fold the adapter into the weights first (the
                      logits of a merged model; they differ from the unmerged ones
                      by rounding only)
  -h, --help          this text

Exit codes: 0 success, 1 bad input or failure, 2 bad usage.
`;

const OPTIONS = {
  model: { type: 'string' },
  'input-ids': { type: 'string' },
  out: { type: 'string' },
  labels: { type: 'boolean' },
  dtype: { type: 'string' },
  adapter: { type: 'string' },
  merge: { type: 'boolean' },
  ...DEVICE_OPTION,
} as const;

/** Parses --input-ids: a non-empty JSON array of equal-length rows of non-negative integers. */
export function parseInputIds(text: string): number[][] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--input-ids is not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!Array.isArray(value) || value.length === 0 || !value.every(Array.isArray)) {
    throw new UsageError('--input-ids must be a JSON array of rows of token ids, like [[1, 2, 3]]');
  }
  const rows: number[][] = value;
  const T = rows[0].length;
  rows.forEach((row: unknown[], i) => {
    if (row.length === 0) throw new UsageError(`--input-ids: row ${i} is empty`);
    if (row.length !== T) {
      throw new UsageError(`--input-ids: row ${i} has ${row.length} ids, row 0 has ${T}; rows must have the same length (this command does no padding)`);
    }
    row.forEach((id: unknown, j) => {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
        throw new UsageError(`--input-ids: row ${i}, position ${j} is ${JSON.stringify(id)}, not a token id`);
      }
    });
  });
  return rows;
}

function parseDtype(value: string | undefined): WeightDType {
  if (value === undefined || value === 'f32') return 'f32';
  if (value === 'bf16') return 'bf16';
  throw new UsageError(`--dtype must be f32 or bf16, not '${value}'`);
}

/** Loads a model, turning file problems into one-line user errors. */
function load(dir: string, dtype: WeightDType, device: Backend): LlamaForCausalLM {
  if (!fs.existsSync(dir)) throw new UserError(`${dir}: no such directory`);
  if (!fs.statSync(dir).isDirectory()) throw new UserError(`${dir}: not a directory (--model takes a model directory)`);
  try {
    return LlamaForCausalLM.fromPretrained(dir, { dtype, device });
  } catch (e) {
    if (e instanceof ConfigError || e instanceof CheckpointError || e instanceof SafetensorsError) throw new UserError(e.message);
    throw e;
  }
}

/** Puts a PEFT adapter on the model (and merges it with --merge), turning adapter problems into user errors. */
function applyAdapter(model: LlamaForCausalLM, dir: string, merge: boolean): void {
  try {
    const lm = loadPeftAdapter(dir, model);
    if (merge) lm.merge();
  } catch (e) {
    if (e instanceof AdapterError || e instanceof SafetensorsError) throw new UserError(e.message);
    throw e;
  }
}

export const command: Command = {
  name: 'forward',
  help: HELP,
  async run(argv, out) {
    const { values } = parseCommandArgs('forward', { args: [...argv], options: OPTIONS, allowPositionals: false });
    if (values.model === undefined) throw new UsageError('--model DIR is required');
    if (values['input-ids'] === undefined) throw new UsageError('--input-ids JSON is required');
    if (values.out === undefined) throw new UsageError('--out FILE is required');
    const rows = parseInputIds(values['input-ids']);
    const dtype = parseDtype(values.dtype);
    const device = resolveDevice(values.device);
    const withLoss = values.labels === true;
    const B = rows.length;
    const T = rows[0].length;
    if (withLoss && T < 2) throw new UsageError('--labels needs at least 2 ids per row (each position predicts the next)');
    const outFile = values.out;
    if (values.merge === true && values.adapter === undefined) throw new UsageError('--merge needs --adapter DIR');
    if (!fs.existsSync(path.dirname(path.resolve(outFile)))) throw new UserError(`${outFile}: its directory does not exist`);

    const model = load(await modelDir(values.model), dtype, device);
    try {
      if (values.adapter !== undefined) applyAdapter(model, values.adapter, values.merge === true);
      const V = model.config.vocabSize;
      rows.forEach((row, i) =>
        row.forEach((id, j) => {
          if (id >= V) throw new UserError(`--input-ids: row ${i}, position ${j} is ${id}, outside the vocabulary of ${V} in ${values.model}`);
        }),
      );
      const summary = noGrad(() =>
        scope(() => {
          const ids = tensor(rows.flat(), [B, T], { dtype: 'int32', device: model.backend });
          // bf16 logits (a bf16 model on cuda) are widened: the file holds f32 for comparison.
          const logits = cast(model.forward(ids), 'f32');
          const tensors = { logits, ...(withLoss ? { loss: reshape(causalLmLoss(logits, ids), []) } : {}) };
          try {
            writeSafetensors(outFile, tensors);
          } catch (e) {
            if (e instanceof SafetensorsError) throw new UserError(e.message);
            throw e;
          }
          return `wrote logits ${formatShape(logits.shape)}${withLoss ? ` and loss ${tensors.loss?.item().toFixed(6)}` : ''} to ${outFile}\n`;
        }),
      );
      out(summary);
      return 0;
    } finally {
      model.dispose();
    }
  },
};
