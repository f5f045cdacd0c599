// `finlora finetune <run_name>`: FinLoRA's lora/finetune.py in TypeScript. Reads the
// run from a finetune_configs.json (train/config.ts), checks everything that can be
// checked before any weights load (the config, the device, the dataset's every line,
// the base model's files and tokenizer), then loads the base (quantized per
// quant_bits), injects the LoRA / DoRA adapters and trains (train/trainer.ts). The
// output directory, lora_adapters/<bits>bits_r<r>[_dora|_rslora]/<run_name>/, is made
// only once all of that succeeded, so bad input leaves nothing behind; it ends up with
// the PEFT adapter (adapter_config.json, adapter_model.safetensors), metrics.jsonl,
// loss.svg, run_config.json and checkpoints/ (the newest save_total_limit of them).
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AdapterError } from '../../adapters/peft.js';
import { LoraConfigError } from '../../adapters/lora/config.js';
import type { Backend } from '../../backend/backend.js';
import { getBackend } from '../../backend/registry.js';
import { splitValidation } from '../../data/batches.js';
import { type Features, formatExamples } from '../../data/format.js';
import { DataError, readJsonl } from '../../data/jsonl.js';
import { HubError, resolveModel } from '../../io/hub.js';
import { SafetensorsError } from '../../io/safetensors.js';
import { Tokenizer } from '../../io/tokenizer.js';
import { CheckpointError } from '../../models/checkpoint.js';
import { ConfigError, readLlamaConfig } from '../../models/llama/config.js';
import { LlamaForCausalLM } from '../../models/llama/model.js';
import { injectAdapters } from '../../train/adapters.js';
import { enableGradientCheckpointing } from '../../train/grad_checkpoint.js';
import { CheckpointStateError, CHECKPOINTS_DIR, listCheckpoints } from '../../train/checkpoint.js';
import { adapterSubdir, listRuns, loadRun, type RunConfig, RunConfigError } from '../../train/config.js';
import { DoraCheckError } from '../../train/monitor.js';
import { quantizeBase, quantLoadOption } from '../../train/quantize.js';
import { runTraining, stepCounts, TrainingStopped } from '../../train/trainer.js';
import { describeScore, type HeldOutScore, maxNewTokensFor, scoreHeldOut } from '../../train/run_eval.js';
import { chooseConfigFile, shippedConfigFile } from '../shipped_configs.js';
import { writeFileAtomic } from '../../io/atomic.js';
import type { Command } from '../command.js';
import { parseCommandArgs, UsageError, UserError } from '../errors.js';

const HELP = `finlora finetune — fine-tune a base model with LoRA or DoRA, as FinLoRA's lora/finetune.py

Usage:
  finlora finetune <run_name> [--config-json FILE] [--data-dir DIR] [--output-dir DIR] [--resume]

Arguments:
  run_name              a run (key) of the config file, e.g. sentiment_llama_3_1_8b_8bits_r8_dora

Options:
  --config-json FILE    FinLoRA's finetune_configs.json format (default: ./finetune_configs.json);
                        a run that file does not define (or any run, when there is no file)
                        is looked up in the configs finlora ships, demo/finetune_configs.json
                        of the package: 'finlora finetune demo' DoRA-fine-tunes the shipped
                        small model on shipped sentiment data and scores it before and after
  --data-dir DIR        look for the dataset_path's file name in DIR (default: dataset_path
                        resolved against the config file's directory, as FinLoRA does)
  --output-dir DIR      root of the adapter directories (default: ./lora_adapters); the run
                        goes to DIR/<bits>bits_r<r>[_dora|_rslora]/<run_name>/ ("fp16" for an
                        unquantized base, as in FinLoRA's repository)
  --resume              continue from the run's newest checkpoint (after a kill, say); the
                        result is the adapter an uninterrupted run would have made
  --overwrite           start over in a directory that holds an earlier run
  --skip-malformed      skip (and count) malformed JSONL lines instead of stopping
  -h, --help            this text

Each run key means what it means in FinLoRA: base_model, dataset_path, lora_r, quant_bits
(8: int8, 4: NF4 with double quantization; absent: unquantized), learning_rate, num_epochs,
batch_size (micro-batch), gradient_accumulation_steps, peft_use_dora, peft_use_rslora,
lora_alpha (default 16). FinLoRA's axolotl defaults fill the rest (lora_dropout 0.05,
q/k/v_proj, cosine schedule with 10 warmup steps, weight decay 0, val_set_size 0.02,
sequence_len 4096, prompt "[INST] {context} [/INST]"); extra keys override them:
target_modules, lora_dropout, sequence_len, warmup_steps, lr_scheduler
(cosine|linear|constant), weight_decay, val_set_size, seed, max_steps, save_steps,
save_total_limit, evals_per_epoch, max_grad_norm, adam_beta1, adam_beta2, adam_epsilon,
dtype (f32|bf16), device, prompt_format, train_on_inputs, excess_length_strategy
(truncate|drop), skip_malformed_lines, gradient_checkpointing, dropout_semantics
(finlora|peft: PEFT's DoRA training forward with dropout), eval_dataset_path (a JSONL
test file, resolved as dataset_path, answered and scored as 'finlora eval' does before and
after training), eval_max_new_tokens (default: FinLoRA's for the file; 30 for other files).

Progress goes to stderr (a bar on a terminal, a line every 15 s otherwise); the final
summary to stdout. Exit codes: 0 success, 1 bad input or a stopped run, 2 bad usage.
`;

const OPTIONS = {
  'config-json': { type: 'string' },
  'data-dir': { type: 'string' },
  'output-dir': { type: 'string' },
  resume: { type: 'boolean' },
  overwrite: { type: 'boolean' },
  'skip-malformed': { type: 'boolean' },
} as const;

/** Errors of the layers below that describe bad input, shown as one line. */
function asUserError(e: unknown): never {
  if (
    e instanceof RunConfigError || e instanceof DataError || e instanceof HubError || e instanceof ConfigError || e instanceof CheckpointError ||
    e instanceof SafetensorsError || e instanceof LoraConfigError || e instanceof AdapterError || e instanceof TrainingStopped ||
    e instanceof DoraCheckError || e instanceof CheckpointStateError
  ) {
    throw new UserError(e.message);
  }
  throw e;
}

/** What shapes a run's trajectory: a checkpoint is resumed only under the same fingerprint. */
function fingerprint(cfg: RunConfig, train: readonly Features[], val: readonly Features[]): string {
  const h = createHash('sha256');
  const shaping = {
    r: cfg.loraR, alpha: cfg.loraAlpha, dropout: cfg.loraDropout, targets: cfg.targetModules, dora: cfg.useDora, rslora: cfg.useRslora,
    quant: cfg.quantBits, dtype: cfg.dtype, lr: cfg.learningRate, epochs: cfg.numEpochs, batch: cfg.batchSize, accum: cfg.gradientAccumulationSteps,
    warmup: cfg.warmupSteps, scheduler: cfg.lrScheduler, wd: cfg.weightDecay, betas: [cfg.adamBeta1, cfg.adamBeta2, cfg.adamEpsilon],
    clip: cfg.maxGradNorm, seed: cfg.seed, maxSteps: cfg.maxSteps, dropoutSemantics: cfg.dropoutSemantics,
  };
  h.update(JSON.stringify(shaping));
  for (const set of [train, val]) {
    h.update(`|${set.length}|`);
    for (const f of set) {
      h.update(new Uint8Array(f.inputIds.buffer, f.inputIds.byteOffset, f.inputIds.byteLength));
      h.update(new Uint8Array(f.labels.buffer, f.labels.byteOffset, f.labels.byteLength));
    }
  }
  return h.digest('hex');
}

/** ", peak cuda memory 15.80 GiB" where the backend keeps its peak (a GPU), else nothing. */
function peakMemory(backend: Backend): string {
  const peak = backend.peakBytes?.();
  return peak === undefined ? '' : `, peak ${backend.name} memory ${(peak / 2 ** 30).toFixed(2)} GiB`;
}

function shippedRuns(): string {
  try {
    return listRuns(shippedConfigFile()).join(', ');
  } catch {
    return 'none';
  }
}

export const command: Command = {
  name: 'finetune',
  help: HELP,
  async run(argv, out) {
    const { values, positionals } = parseCommandArgs('finetune', { args: [...argv], options: OPTIONS, allowPositionals: true });
    if (positionals.length === 0) throw new UsageError('a run name is required: finlora finetune <run_name> (see finlora finetune --help)');
    if (positionals.length > 1) throw new UsageError(`one run name expected, got ${positionals.length}: ${positionals.join(' ')}`);
    const runName = positionals[0];
    const log = (line: string) => process.stderr.write(`${line}\n`);

    // 1. The run, validated whole.
    let cfg: RunConfig;
    const configFile = chooseConfigFile(runName, values['config-json'], log);
    if (configFile === null) throw new UsageError(`no finetune_configs.json in ${process.cwd()}; pass --config-json FILE (runs finlora ships: ${shippedRuns()})`);
    try {
      cfg = loadRun(configFile, runName, values['data-dir'] !== undefined ? { dataDir: values['data-dir'] } : {});
    } catch (e) {
      asUserError(e);
    }
    if (values['skip-malformed']) cfg = { ...cfg, skipMalformedLines: true };
    let backend;
    try {
      backend = getBackend(cfg.device);
    } catch (e) {
      throw new UserError(`run '${runName}': device ${JSON.stringify(cfg.device)} is not available: ${e instanceof Error ? e.message : String(e)}`);
    }
    const runDir = path.resolve(values['output-dir'] ?? 'lora_adapters', adapterSubdir(cfg));
    const resume = values.resume === true;
    if (!resume && fs.existsSync(runDir) && fs.readdirSync(runDir).length > 0 && !values.overwrite) {
      const what = listCheckpoints(runDir).length > 0 ? 'checkpoints of an earlier run' : 'an earlier run';
      throw new UserError(`${runDir} holds ${what}; pass --resume to continue it, or --overwrite to start over`);
    }

    // 2. The data, every line.
    let data;
    try {
      data = readJsonl(cfg.datasetFile, { skipMalformed: cfg.skipMalformedLines });
    } catch (e) {
      if (e instanceof DataError && !fs.existsSync(cfg.datasetFile)) {
        throw new UserError(
          `run '${runName}': dataset ${cfg.datasetFile} does not exist (dataset_path ${JSON.stringify(cfg.datasetPath)}${values['data-dir'] !== undefined ? ` looked up in --data-dir ${values['data-dir']}` : ` resolved against ${path.dirname(cfg.configFile)}`}); ` +
            "get FinLoRA's data with 'finlora data fetch', or point --data-dir at the directory that holds it",
        );
      }
      asUserError(e);
    }
    let heldOut = null;
    if (cfg.evalDatasetFile !== null) {
      try {
        heldOut = readJsonl(cfg.evalDatasetFile, { what: 'eval dataset' });
      } catch (e) {
        asUserError(e);
      }
    }
    if (data.skipped.length > 0) log(`skipped ${data.skipped.length} malformed line(s) of ${data.file} (first: line ${data.skipped[0].line}, ${data.skipped[0].reason})`);

    // 3. The base model's files and tokenizer (a hub id downloads here).
    let dir: string;
    let tokenizer: Tokenizer;
    try {
      dir = (await resolveModel(cfg.baseModel)).dir;
      readLlamaConfig(dir);
      tokenizer = await Tokenizer.fromDir(dir, { warn: log });
    } catch (e) {
      if (e instanceof HubError || e instanceof ConfigError) throw new UserError(`run '${runName}': base_model ${JSON.stringify(cfg.baseModel)}: ${e.message}`);
      if (e instanceof Error && /tokenizer/.test(e.message)) throw new UserError(e.message);
      asUserError(e);
    }
    if (tokenizer.padId === null) throw new UserError(`${dir}: the tokenizer has neither a pad nor an eos token, so batches cannot be padded`);
    const formatted = formatExamples(data.examples, tokenizer, cfg);
    if (formatted.features.length === 0) {
      throw new UserError(`run '${runName}': no example of ${cfg.datasetFile} has a target token left within sequence_len ${cfg.sequenceLen}`);
    }
    let split;
    try {
      split = splitValidation(formatted.features.length, cfg.valSetSize, cfg.seed);
    } catch (e) {
      throw new UserError(`run '${runName}': ${e instanceof Error ? e.message : String(e)}`);
    }
    const train = split.train.map((i) => formatted.features[i]);
    const val = split.val.map((i) => formatted.features[i]);
    const steps = stepCounts(train.length, cfg);
    log(`run ${runName}: ${data.examples.length} examples from ${data.file}; ${train.length} to train on, ${val.length} for validation`);
    if (formatted.truncated > 0) log(`${formatted.truncated} example(s) longer than sequence_len ${cfg.sequenceLen} were truncated (longest: ${formatted.longest} tokens, line ${formatted.longestLine})`);
    if (formatted.droppedTooLong > 0) log(`${formatted.droppedTooLong} example(s) longer than sequence_len ${cfg.sequenceLen} were dropped (excess_length_strategy drop)`);
    if (formatted.droppedNoTarget > 0) log(`${formatted.droppedNoTarget} example(s) had no target token left within sequence_len ${cfg.sequenceLen} and were dropped`);
    log(`${steps.total} optimizer steps (${steps.perEpoch} per epoch) of ${cfg.batchSize} × ${cfg.gradientAccumulationSteps} sequences; ${cfg.lrScheduler} schedule, peak learning rate ${cfg.learningRate}, ${cfg.warmupSteps} warmup steps`);

    // 4. Weights: load, quantize, inject.
    let model: LlamaForCausalLM;
    try {
      model = LlamaForCausalLM.fromPretrained(dir, { dtype: cfg.dtype, device: backend, ...quantLoadOption(cfg.quantBits) });
    } catch (e) {
      asUserError(e);
    }
    const quant = cfg.quantBits === null ? null : quantizeBase(model, cfg.quantBits);
    try {
      // The held-out score of the base, before any adapter exists.
      const evalTokens = heldOut === null ? 0 : cfg.evalMaxNewTokens ?? maxNewTokensFor(heldOut.file);
      let before: HeldOutScore | null = null;
      if (heldOut !== null) {
        before = scoreHeldOut(model, tokenizer, heldOut.examples, { maxNewTokens: evalTokens, progress: process.stderr, label: 'held-out, before' });
        log(`before training: ${describeScore(before)} on ${heldOut.file} (${before.seconds.toFixed(1)} s)`);
      }
      if (tokenizer.vocabSize > model.config.vocabSize) {
        const maxId = Math.max(...formatted.features.map((f) => Math.max(...f.inputIds)));
        if (maxId >= model.config.vocabSize) throw new UserError(`${dir}: the tokenizer produced id ${maxId}, outside the model's vocabulary of ${model.config.vocabSize}`);
      }
      if (quant !== null) log(`quant_bits ${cfg.quantBits}: ${quant.count} Linear layers of the base quantized (${cfg.quantBits === 8 ? 'int8 rows' : 'NF4, double quantized'}); lm_head stays ${cfg.dtype}`);
      let injected;
      try {
        injected = injectAdapters(model, {
          r: cfg.loraR, alpha: cfg.loraAlpha, dropout: cfg.loraDropout, targetModules: cfg.targetModules, useDora: cfg.useDora, useRslora: cfg.useRslora,
          baseModel: cfg.baseModel, seed: cfg.seed, dropoutSemantics: cfg.dropoutSemantics, ...(quant !== null ? { frozenWeight: quant.frozenWeight } : {}),
        });
      } catch (e) {
        asUserError(e);
      }
      if (cfg.gradientCheckpointing) enableGradientCheckpointing(model, injected.lora.dropout);
      log(`${cfg.useDora ? 'DoRA' : 'LoRA'} r ${cfg.loraR}, alpha ${cfg.loraAlpha}${cfg.useRslora ? ' (rsLoRA)' : ''} on ${cfg.targetModules.join(', ')}: ${injected.lora.summary()}${cfg.gradientCheckpointing ? '; gradient checkpointing on' : ''}`);

      // 5. Train. The run directory appears only now.
      const created = !fs.existsSync(runDir);
      if (values.overwrite && !resume && fs.existsSync(runDir)) fs.rmSync(runDir, { recursive: true, force: true });
      fs.mkdirSync(runDir, { recursive: true });
      writeFileAtomic(path.join(runDir, 'run_config.json'), `${JSON.stringify({ run: runName, config_file: cfg.configFile, ...cfg }, null, 2)}\n`);
      let result;
      try {
        result = runTraining({
          settings: cfg, model, target: injected.target, train, val, padId: tokenizer.padId, runDir, resume,
          fingerprint: fingerprint(cfg, train, val), log, progress: process.stderr,
        });
      } catch (e) {
        // A run that stopped before its first checkpoint leaves no directory behind.
        if (created && !fs.existsSync(path.join(runDir, CHECKPOINTS_DIR))) fs.rmSync(runDir, { recursive: true, force: true });
        asUserError(e);
      }
      const files = ['adapter_config.json', 'adapter_model.safetensors', 'metrics.jsonl', 'loss.svg'];
      let scores = '';
      if (heldOut !== null && before !== null) {
        const after = scoreHeldOut(model, tokenizer, heldOut.examples, { maxNewTokens: evalTokens, progress: process.stderr, label: 'held-out, after' });
        writeFileAtomic(path.join(runDir, 'held_out_eval.json'), `${JSON.stringify({ dataset_file: heldOut.file, max_new_tokens: evalTokens, before, after }, null, 2)}\n`);
        files.push('held_out_eval.json');
        scores = `held-out ${heldOut.file} (${heldOut.examples.length} examples):\n  before: ${describeScore(before)}\n  after:  ${describeScore(after)}\n`;
      }
      out(
        `${result.resumedFrom !== null ? `resumed at step ${result.resumedFrom}; ` : ''}trained ${result.steps} steps in ${result.seconds.toFixed(1)} s ` +
          `(${Math.round(result.tokens / Math.max(1e-9, result.seconds))} tok/s${peakMemory(backend)}), final loss ${result.loss.toFixed(4)}` +
          `${result.valLoss !== null ? `, validation loss ${result.valLoss.toFixed(4)}` : ''}\n` +
          `adapter: ${runDir} (${files.join(', ')})\n${scores}`,
      );
      return 0;
    } finally {
      quant?.dispose();
      model.dispose();
    }
  },
};
