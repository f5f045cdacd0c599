// `finlora pretrain`: full-parameter causal-LM training of a Llama-architecture model,
// from random initialisation (with a byte-level BPE tokenizer trained on the same data
// unless one is given) or from a model directory, on plain-text / JSONL files. It runs
// the fine-tuning trainer (train/trainer.ts: AdamW, warmup + decay schedule, clipping,
// validation loss, atomic checkpoints and --resume, metrics.jsonl, loss.svg, progress)
// with every weight of the model as the trained target, and writes a Hugging Face
// model directory (train/full_model.ts).
//
// Order of work, as in `finlora finetune`: settings, every data file, the tokenizer and
// the packed blocks are checked before any weight is made; the output directory gets
// its first file (the trained tokenizer) only once all of that succeeded.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ParseArgsConfig } from 'node:util';
import { getBackend } from '../../backend/registry.js';
import { countWords, defaultSpecialTokens, trainBpe, writeTokenizer } from '../../data/bpe.js';
import { splitValidation } from '../../data/batches.js';
import { type CorpusFile, packDocuments, readDocuments } from '../../data/corpus.js';
import { eosTokenId, type Features } from '../../data/format.js';
import { DataError } from '../../data/jsonl.js';
import { HubError, resolveModel } from '../../io/hub.js';
import { SafetensorsError } from '../../io/safetensors.js';
import { Tokenizer } from '../../io/tokenizer.js';
import { CheckpointError } from '../../models/checkpoint.js';
import { ConfigError, parseLlamaConfig } from '../../models/llama/config.js';
import { LlamaForCausalLM } from '../../models/llama/model.js';
import { CheckpointStateError, CHECKPOINTS_DIR, listCheckpoints } from '../../train/checkpoint.js';
import { RunConfigError } from '../../train/config.js';
import { generationConfigJson, initLlamaWeights, llamaConfigJson, modelDirTarget, TOKENIZER_FILES } from '../../train/full_model.js';
import { flagValue, loadPretrainConfig, PRETRAIN_KEYS, type PretrainConfig, type PretrainKey } from '../../train/pretrain_config.js';
import { runTraining, stepCounts, TrainingStopped } from '../../train/trainer.js';
import { writeFileAtomic } from '../../io/atomic.js';
import type { Command } from '../command.js';
import { parseCommandArgs, UsageError, UserError } from '../errors.js';

const HELP = `finlora pretrain — train every weight of a Llama-architecture model on text (causal LM)

Usage:
  finlora pretrain --config FILE [flags]
  finlora pretrain --data FILE [--data FILE ...] --output-dir DIR [flags]

Options:
  --config FILE         a JSON object of the settings below (paths relative to FILE)
  --resume              continue from the newest checkpoint in the output directory
  --overwrite           start over in an output directory that holds an earlier run
  -h, --help            this text

Settings (keys in the config file, or flags: --hidden-size 256 for hidden_size; flags win):
  output_dir            the model directory to write (required)
  data                  text files (required; a flag may repeat): .txt, documents separated
                        by blank lines; .jsonl, one document per line from "text" or from
                        FinLoRA's "context" + "target"
  base_model            continue from a model directory or hub id (its architecture and
                        tokenizer); otherwise a new model from random N(0, initializer_range²):
  hidden_size 256, intermediate_size 768, num_hidden_layers 4, num_attention_heads 4,
  num_key_value_heads (= heads), max_position_embeddings 1024, rope_theta 10000,
  rms_norm_eps 1e-5, tie_word_embeddings true, initializer_range 0.02
  tokenizer             a directory with tokenizer.json + tokenizer_config.json; otherwise a
                        byte-level BPE of vocab_size (3072) ids is trained on the data
                        (tokenizer_min_frequency 2), with <pad> <s> </s> [INST] [/INST]
  learning_rate 1e-3, num_epochs 1, max_steps (overrides epochs), batch_size 8,
  gradient_accumulation_steps 1, sequence_len 256 (block length), warmup_steps 100,
  lr_scheduler cosine|linear|constant, weight_decay 0.1, adam_beta1 0.9, adam_beta2 0.95,
  adam_epsilon 1e-8, max_grad_norm 1, val_set_size 0.02 (fraction or count of blocks),
  evals_per_epoch 10, seed 42, save_steps, save_total_limit 1, device cpu
  dtype                 bf16 (default) or f32: how model.safetensors stores the weights
                        (training is f32)

Documents are tokenized with BOS, ended with EOS, concatenated and cut into blocks of
sequence_len tokens, as transformers' run_clm.py groups texts; every token is a target.
The output directory holds config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json (what transformers loads), and metrics.jsonl,
loss.svg, pretrain_config.json and checkpoints/.

Progress goes to stderr (a bar on a terminal, a line every 15 s otherwise); the summary
to stdout. Exit codes: 0 success, 1 bad input or a stopped run, 2 bad usage.
`;

const KEYS = Object.keys(PRETRAIN_KEYS) as PretrainKey[];
const flagName = (key: string) => key.replace(/_/g, '-');

const OPTIONS: ParseArgsConfig['options'] = {
  config: { type: 'string' },
  resume: { type: 'boolean' },
  overwrite: { type: 'boolean' },
  ...Object.fromEntries(KEYS.map((k) => [flagName(k), k === 'data' ? { type: 'string', multiple: true } : { type: 'string' }])),
};

function asUserError(e: unknown): never {
  if (
    e instanceof RunConfigError || e instanceof DataError || e instanceof HubError || e instanceof ConfigError || e instanceof CheckpointError ||
    e instanceof SafetensorsError || e instanceof TrainingStopped || e instanceof CheckpointStateError
  ) {
    throw new UserError(e.message);
  }
  throw e;
}

/** What shapes the run's trajectory: a checkpoint is resumed only under the same fingerprint. */
function fingerprint(cfg: PretrainConfig, train: readonly Features[], val: readonly Features[]): string {
  const h = createHash('sha256');
  const shaping = {
    base: cfg.baseModel, arch: cfg.architecture, init: cfg.initializerRange, lr: cfg.learningRate, epochs: cfg.numEpochs, maxSteps: cfg.maxSteps,
    batch: cfg.batchSize, accum: cfg.gradientAccumulationSteps, warmup: cfg.warmupSteps, scheduler: cfg.lrScheduler, wd: cfg.weightDecay,
    betas: [cfg.adamBeta1, cfg.adamBeta2, cfg.adamEpsilon], clip: cfg.maxGradNorm, seed: cfg.seed,
  };
  h.update(JSON.stringify(shaping));
  for (const set of [train, val]) {
    h.update(`|${set.length}|`);
    for (const f of set) h.update(new Uint8Array(f.inputIds.buffer, f.inputIds.byteOffset, f.inputIds.byteLength));
  }
  return h.digest('hex');
}

function collectFlags(values: Record<string, string | boolean | (string | boolean)[] | undefined>): Partial<Record<PretrainKey, ReturnType<typeof flagValue>>> {
  const flags: Partial<Record<PretrainKey, ReturnType<typeof flagValue>>> = {};
  for (const key of KEYS) {
    const v = values[flagName(key)];
    if (v === undefined) continue;
    if (Array.isArray(v)) flags[key] = v.map(String);
    else if (typeof v === 'string') flags[key] = flagValue(key, v);
  }
  return flags;
}

function fmt(n: number): string {
  return n.toLocaleString('en-US');
}

export const command: Command = {
  name: 'pretrain',
  help: HELP,
  async run(argv, out) {
    const { values, positionals } = parseCommandArgs('pretrain', { args: [...argv], options: OPTIONS, allowPositionals: true });
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}' (data files go after --data; see finlora pretrain --help)`);
    const log = (line: string) => process.stderr.write(`${line}\n`);
    const resume = values.resume === true;
    const overwrite = values.overwrite === true;
    if (values.config === undefined && values.data === undefined) throw new UsageError('give --config FILE, or --data FILE and --output-dir DIR (see finlora pretrain --help)');

    // 1. Settings, whole.
    let cfg: PretrainConfig;
    try {
      cfg = loadPretrainConfig({ ...(typeof values.config === 'string' ? { configFile: values.config } : {}), flags: collectFlags(values) });
    } catch (e) {
      asUserError(e);
    }
    let backend;
    try {
      backend = getBackend(cfg.device);
    } catch (e) {
      throw new UserError(`device ${e instanceof Error ? e.message.replace(/^unknown device /, '') : String(e)}`);
    }
    const runDir = cfg.outputDir;
    if (!resume && fs.existsSync(runDir) && fs.readdirSync(runDir).length > 0 && !overwrite) {
      const what = listCheckpoints(runDir).length > 0 ? 'checkpoints of an earlier run' : 'files';
      throw new UserError(`${runDir} holds ${what}; pass --resume to continue it, or --overwrite to start over`);
    }

    // 2. Every data file.
    let files: CorpusFile[];
    try {
      files = cfg.data.map((f) => readDocuments(f));
    } catch (e) {
      asUserError(e);
    }
    const documents = files.flatMap((f) => f.documents);
    for (const f of files) log(`${f.file}: ${fmt(f.documents.length)} documents, ${fmt(f.characters)} characters`);

    // 3. The tokenizer: base_model's, a given one, the one a resumed run trained, or a new one.
    let tokenizerDir: string;
    let trained: ReturnType<typeof trainBpe> | null = null;
    let baseDir: string | null = null;
    try {
      if (cfg.baseModel !== null) {
        baseDir = (await resolveModel(cfg.baseModel)).dir;
        tokenizerDir = baseDir;
      } else if (cfg.tokenizerDir !== null) {
        tokenizerDir = cfg.tokenizerDir;
      } else if (resume && fs.existsSync(path.join(runDir, 'tokenizer.json'))) {
        tokenizerDir = runDir;
        log(`using the tokenizer this run trained before (${path.join(runDir, 'tokenizer.json')})`);
      } else {
        const t0 = Date.now();
        const specials = defaultSpecialTokens();
        trained = trainBpe(countWords(documents, specials), { vocabSize: cfg.vocabSize, specialTokens: specials, minFrequency: cfg.tokenizerMinFrequency });
        log(`trained a byte-level BPE tokenizer: ${fmt(trained.tokens.length)} ids (${trained.merges.length} merges) in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        // Written beside the run's other files below; loaded from a scratch copy first, so bad input leaves no directory.
        tokenizerDir = fs.mkdtempSync(path.join(os.tmpdir(), 'finlora-tokenizer-'));
        writeTokenizer(tokenizerDir, trained, { modelMaxLength: cfg.architecture?.maxPositionEmbeddings ?? cfg.sequenceLen });
      }
    } catch (e) {
      if (e instanceof HubError) throw new UserError(`base_model ${JSON.stringify(cfg.baseModel)}: ${e.message}`);
      asUserError(e);
    }
    const scratch = trained !== null ? tokenizerDir : null;
    try {
      let tokenizer: Tokenizer;
      try {
        tokenizer = await Tokenizer.fromDir(tokenizerDir, { warn: log });
      } catch (e) {
        throw new UserError(e instanceof Error ? e.message : String(e));
      }
      let eos: number;
      try {
        eos = eosTokenId(tokenizer);
      } catch (e) {
        throw new UserError(`${tokenizerDir}: ${e instanceof Error ? e.message : String(e)}`);
      }
      const padId = tokenizer.padId ?? eos;

      // 4. Blocks and the validation split.
      const t0 = Date.now();
      const packed = packDocuments(documents, tokenizer, cfg.sequenceLen);
      log(`${fmt(packed.documents)} documents: ${fmt(packed.tokens)} tokens (${(files.reduce((n, f) => n + f.characters, 0) / packed.tokens).toFixed(2)} characters per token) in ${fmt(packed.blocks.length)} blocks of ${cfg.sequenceLen}, tokenized in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      let split;
      try {
        split = splitValidation(packed.blocks.length, cfg.valSetSize, cfg.seed);
      } catch (e) {
        throw new UserError(e instanceof Error ? e.message : String(e));
      }
      const train = split.train.map((i) => packed.blocks[i]);
      const val = split.val.map((i) => packed.blocks[i]);
      const steps = stepCounts(train.length, cfg);
      log(`${fmt(train.length)} blocks to train on, ${fmt(val.length)} for validation; ${fmt(steps.total)} optimizer steps (${fmt(steps.perEpoch)} per epoch) of ${cfg.batchSize} × ${cfg.gradientAccumulationSteps} blocks; ${cfg.lrScheduler} schedule, peak learning rate ${cfg.learningRate}, ${cfg.warmupSteps} warmup steps`);

      // 5. The model.
      let model: LlamaForCausalLM;
      let configJson: Record<string, unknown>;
      const ids = { bos: tokenizer.bosId, eos, pad: tokenizer.padId };
      try {
        if (baseDir !== null) {
          model = LlamaForCausalLM.fromPretrained(baseDir, { dtype: 'f32', device: backend });
          configJson = JSON.parse(fs.readFileSync(path.join(baseDir, 'config.json'), 'utf8')) as Record<string, unknown>;
        } else {
          configJson = llamaConfigJson(cfg.architecture!, tokenizer.vocabSize, ids, cfg.dtype, cfg.initializerRange);
          model = new LlamaForCausalLM(parseLlamaConfig(configJson), backend, 'f32');
          initLlamaWeights(model, cfg.seed, cfg.initializerRange);
        }
      } catch (e) {
        asUserError(e);
      }
      try {
        if (tokenizer.vocabSize > model.config.vocabSize) {
          const maxId = Math.max(...packed.blocks.map((b) => Math.max(...b.inputIds)));
          if (maxId >= model.config.vocabSize) throw new UserError(`the tokenizer produced id ${maxId}, outside the model's vocabulary of ${model.config.vocabSize}`);
        }
        const c = model.config;
        const nParams = [...model.namedParameters()].reduce((n, [, t]) => n + t.size, 0);
        log(`${baseDir !== null ? `continuing ${cfg.baseModel}` : 'new LlamaForCausalLM'}: hidden ${c.hiddenSize}, ${c.numHiddenLayers} layers, ${c.numAttentionHeads} heads (${c.numKeyValueHeads} key/value), MLP ${c.intermediateSize}, vocabulary ${fmt(c.vocabSize)}${c.tieWordEmbeddings ? ', tied embeddings' : ''}: ${fmt(nParams)} parameters, ${(nParams * (cfg.dtype === 'bf16' ? 2 : 4) / 2 ** 20).toFixed(1)} MiB as ${cfg.dtype}`);

        // 6. Train. The output directory appears only now.
        const created = !fs.existsSync(runDir);
        if (overwrite && !resume && fs.existsSync(runDir)) fs.rmSync(runDir, { recursive: true, force: true });
        fs.mkdirSync(runDir, { recursive: true });
        if (trained !== null) for (const f of TOKENIZER_FILES) if (fs.existsSync(path.join(tokenizerDir, f))) fs.copyFileSync(path.join(tokenizerDir, f), path.join(runDir, f));
        writeFileAtomic(path.join(runDir, 'pretrain_config.json'), `${JSON.stringify(cfg, null, 2)}\n`);
        const target = modelDirTarget(model, { configJson, generationConfig: generationConfigJson(ids), tokenizerDir: trained !== null ? runDir : tokenizerDir, dtype: cfg.dtype });
        let result;
        try {
          result = runTraining({
            settings: cfg, model, target, train, val, padId, runDir, resume, fingerprint: fingerprint(cfg, train, val), log, progress: process.stderr,
          });
        } catch (e) {
          if (created && !fs.existsSync(path.join(runDir, CHECKPOINTS_DIR))) fs.rmSync(runDir, { recursive: true, force: true });
          asUserError(e);
        }
        out(
          `${result.resumedFrom !== null ? `resumed at step ${result.resumedFrom}; ` : ''}trained ${result.steps} steps in ${result.seconds.toFixed(1)} s ` +
            `(${Math.round(result.tokens / Math.max(1e-9, result.seconds))} tok/s), final loss ${result.loss.toFixed(4)}` +
            `${result.valLoss !== null ? `, validation loss ${result.valLoss.toFixed(4)} (perplexity ${Math.exp(result.valLoss).toFixed(2)})` : ''}\n` +
            `model: ${runDir} (config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json)\n`,
        );
        return 0;
      } finally {
        model.dispose();
      }
    } finally {
      if (scratch !== null) fs.rmSync(scratch, { recursive: true, force: true });
    }
  },
};
