// A financial-news sentiment data set that finlora generates itself, seeded, in
// FinLoRA's JSONL format: {"context": "Instruction: ...\nInput: <sentence>\nAnswer: ",
// "target": "positive" | "negative" | "neutral"}, the shape of FinLoRA's sentiment test
// sets (fpb_test.jsonl and its siblings). The companies are invented.
//
// Sentences are templated so that the label follows from what the sentence says, not
// from single words:
//
// - a metric moves: the label is the direction times the metric's polarity — revenue,
//   orders or margins going up is positive, costs, losses or debt going up is negative
//   (so "rose" alone does not decide the label);
// - a negation ("did not rise", "failed to increase") or an unmet expectation turns
//   the direction around;
// - hedges ("is expected to", "analysts said", "according to the company") and the
//   size of the move (slightly, 12.5 %, EUR 41.3 mn from EUR 35.0 mn) leave it as it is;
// - company events (a contract won, a guidance cut, lay-offs) carry their own label;
// - neutral sentences state facts without a direction (a flat metric, a report date,
//   an appointment, the number of employees).
//
// About a third of the sentences are spaced as the Financial PhraseBank is (" , ",
// " % ", a space before the final period). Splits share no sentence, compared without
// case and spacing, so held-out accuracy measures generalisation to new sentences.
import { Rng } from '../tensor/rng.js';

export const SENTIMENT_LABELS = ['negative', 'neutral', 'positive'] as const;
export type SentimentLabel = (typeof SENTIMENT_LABELS)[number];

/** FinLoRA's sentiment instructions (fpb/nwgi: news, fiqa/tfns: tweets and headlines). */
export const SENTIMENT_INSTRUCTIONS = [
  'What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.',
  'What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}.',
  'What is the sentiment of this headline? Please choose an answer from {negative/neutral/positive}.',
] as const;

export interface SentimentExample {
  readonly sentence: string;
  readonly label: SentimentLabel;
}

const COMPANY_STEMS = [
  'Northwind', 'Kestrel', 'Bluefjord', 'Aldermoor', 'Silverline', 'Granite Bay', 'Halvorsen', 'Corvida', 'Lumenta', 'Tarnwick',
  'Ostrava', 'Meridia', 'Pellham', 'Vantora', 'Rookwood', 'Sundqvist', 'Ironvale', 'Cobaltia', 'Marlowe', 'Eskerby',
  'Fennick', 'Quillon', 'Brightwater', 'Zephyra', 'Oakhurst', 'Valdemar', 'Caldris', 'Hollisby', 'Nordvik', 'Talvera',
];
const COMPANY_SUFFIXES = ['', ' Group', ' Oyj', ' Holdings', ' Corp', ' AB', ' Industries', ' Bank', ' Energy', ' Systems', ' Foods', ' Logistics'];

// Metrics whose rise is good news, and metrics whose rise is bad news.
const GOOD_METRICS = [
  'net sales', 'revenue', 'operating profit', 'net profit', 'earnings per share', 'order intake', 'order backlog', 'operating margin',
  'gross margin', 'EBITDA', 'cash flow from operations', 'market share', 'comparable sales', 'the dividend', 'pre-tax profit', 'passenger numbers',
];
const BAD_METRICS = [
  'operating costs', 'the net loss', 'the operating loss', 'net debt', 'raw material costs', 'restructuring charges', 'credit losses',
  'customer churn', 'personnel expenses', 'impairment charges', 'the pre-tax loss', 'inventory write-downs',
];

// Directions in three grammatical forms: past tense, base form, present participle.
const UP: readonly (readonly [string, string])[] = [['rose', 'rise'], ['increased', 'increase'], ['grew', 'grow'], ['climbed', 'climb'], ['jumped', 'jump'], ['went up', 'go up'], ['surged', 'surge']] as const;
const DOWN: readonly (readonly [string, string])[] = [['fell', 'fall'], ['decreased', 'decrease'], ['declined', 'decline'], ['dropped', 'drop'], ['slipped', 'slip'], ['went down', 'go down'], ['shrank', 'shrink']] as const;

const PERIODS = [
  'in the third quarter', 'in the first half of the year', 'in the second quarter', 'in 2023', 'in the fourth quarter', 'last year',
  'in the January-March period', 'in the review period', 'year-on-year', 'in the first nine months', 'in fiscal 2024',
];
const FUTURE_PERIODS = ['this year', 'in the current quarter', 'in 2025', 'in the coming months', 'next year', 'in the second half of the year'];
const SOURCES = ['the company said', 'the group said in a statement', 'according to the company', 'analysts said', 'the chief executive said', 'it said on Tuesday'];
const CURRENCIES = ['EUR', 'USD', 'SEK', 'GBP'];
const CITIES = ['Helsinki', 'Stockholm', 'Oslo', 'Tampere', 'Gothenburg', 'Copenhagen', 'Riga', 'Tallinn', 'Hamburg', 'Rotterdam'];
const COUNTRIES = ['Finland', 'Sweden', 'Norway', 'Estonia', 'Poland', 'Germany', 'the Netherlands', 'Denmark', 'Latvia', 'China'];
const ROLES = ['chief financial officer', 'chief executive officer', 'head of sales', 'chairman of the board', 'head of investor relations', 'chief operating officer'];
const FIRST = ['Anna', 'Mikko', 'Lars', 'Sofia', 'Jukka', 'Eva', 'Henrik', 'Maria', 'Pekka', 'Ingrid', 'Tomas', 'Kaisa'];
const LAST = ['Virtanen', 'Lindqvist', 'Berg', 'Korhonen', 'Nieminen', 'Dahl', 'Holm', 'Laine', 'Sandberg', 'Makela', 'Strand', 'Koski'];
const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const PRODUCTS = ['paper machines', 'software licences', 'wind turbines', 'steel pipes', 'packaging board', 'mobile networks', 'frozen foods', 'elevators', 'cargo ships', 'medical devices'];

const POSITIVE_EVENTS = [
  '{co} won a {cur} {n} million contract to supply {product} to {co2}',
  '{co} raised its full-year profit guidance',
  '{co} shares gained {pct} % after the results beat expectations',
  '{co} signed a {cur} {n} million order for {product} from a customer in {country}',
  'the board of {co} proposed a higher dividend of {cur} {small} per share',
  '{co} returned to profit {period}',
  '{co} said demand for its {product} remains strong and expects sales to grow',
];
const NEGATIVE_EVENTS = [
  '{co} issued a profit warning',
  '{co} cut its full-year outlook',
  '{co} will lay off {n} employees in {country}',
  '{co} shares fell {pct} % after the results missed expectations',
  '{co} lost a {cur} {n} million contract with {co2}',
  '{co} swung to a loss {period}',
  '{co} will close its plant in {city} and cut {n} jobs',
];
const NEUTRAL_FACTS = [
  '{co} will publish its interim report on {day} {month}',
  '{co} has {n} employees in {country}',
  "{co}'s head office is located in {city}",
  '{co} appointed {person} as {role} , effective {day} {month}',
  '{co} operates {n} stores in {country}',
  'the agreement between {co} and {co2} was signed on {day} {month}',
  "{co}'s {metric} amounted to {cur} {money} mn {period}",
  '{co} makes {product} and sells them in {few} countries',
  'the shares of {co} are listed on the {city} stock exchange',
  '{co} will hold its annual general meeting in {city} on {day} {month}',
  '{co2} owns {pct} % of the shares in {co}',
  'the transaction is expected to be completed in {month}',
];
const FLAT = ['was unchanged at {cur} {money} mn', 'remained flat at {cur} {money} mn', 'stayed at the previous year\'s level', 'was stable at {cur} {money} mn', 'was level with a year earlier'];

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[rng.int(items.length)];
}

function money(rng: Rng): number {
  return Math.round((1 + rng.next() * 499) * 10) / 10;
}

class Writer {
  constructor(private readonly rng: Rng) {}

  company(): string {
    return `${pick(this.rng, COMPANY_STEMS)}${pick(this.rng, COMPANY_SUFFIXES)}`;
  }

  /** Fills {placeholders} in a template. */
  fill(template: string, extra: Record<string, string> = {}): string {
    const r = this.rng;
    const co = this.company();
    let co2 = this.company();
    while (co2 === co) co2 = this.company();
    const values: Record<string, () => string> = {
      co: () => co,
      co2: () => co2,
      cur: () => pick(r, CURRENCIES),
      n: () => String(2 + r.int(480)),
      few: () => String(3 + r.int(60)),
      small: () => (0.1 + r.int(30) / 10).toFixed(2),
      pct: () => (0.5 + r.int(400) / 10).toFixed(1),
      money: () => money(r).toFixed(1),
      product: () => pick(r, PRODUCTS),
      country: () => pick(r, COUNTRIES),
      city: () => pick(r, CITIES),
      period: () => pick(r, PERIODS),
      day: () => String(1 + r.int(28)),
      month: () => pick(r, MONTHS),
      person: () => `${pick(r, FIRST)} ${pick(r, LAST)}`,
      role: () => pick(r, ROLES),
      metric: () => pick(r, [...GOOD_METRICS, ...BAD_METRICS]),
    };
    return template.replace(/\{(\w+)\}/g, (_, key: string) => extra[key] ?? values[key]?.() ?? `{${key}}`);
  }

  /** How far a metric moved: a size word, a percentage, or from one amount to another. */
  magnitude(up: boolean): string {
    const r = this.rng;
    switch (r.int(4)) {
      case 0:
        return pick(r, ['slightly', 'sharply', 'strongly', 'significantly', 'moderately', 'marginally']);
      case 1:
        return `by ${(0.5 + r.int(600) / 10).toFixed(1)} %`;
      case 2: {
        const cur = pick(r, CURRENCIES);
        const a = money(r);
        const b = Math.round(a * (up ? 1 + 0.02 + r.next() * 0.6 : 1 / (1 + 0.02 + r.next() * 0.6)) * 10) / 10;
        return `to ${cur} ${b.toFixed(1)} mn from ${cur} ${a.toFixed(1)} mn`;
      }
      default:
        return `by ${(0.5 + r.int(600) / 10).toFixed(1)} percent`;
    }
  }

  /** A metric moving: the label is the direction (after any negation) times the metric's polarity. */
  movement(): SentimentExample {
    const r = this.rng;
    const good = r.next() < 0.6;
    const metric = pick(r, good ? GOOD_METRICS : BAD_METRICS);
    const up = r.next() < 0.5;
    const [past, base] = pick(r, up ? UP : DOWN);
    const co = this.company();
    const period = pick(r, PERIODS);
    const owner = r.next() < 0.5 ? `${co}'s ${metric.replace(/^the /, '')}` : `${metric.replace(/^the /, 'The ')} at ${co}`;
    let sentence: string;
    let effectiveUp = up;
    switch (r.int(7)) {
      case 0:
      case 1:
        sentence = `${owner} ${past} ${this.magnitude(up)} ${period}`;
        break;
      case 2:
        sentence = `${pick(r, SOURCES).replace(/^./, (c) => c.toUpperCase())} that ${metric} at ${co} ${past} ${this.magnitude(up)} ${period}`;
        break;
      case 3:
        // A forecast: hedged, but the direction still decides.
        sentence = r.next() < 0.5
          ? `${co} expects its ${metric.replace(/^the /, '')} to ${base} ${this.magnitude(up)} ${pick(r, FUTURE_PERIODS)}`
          : `${metric.replace(/^./, (c) => c.toUpperCase())} at ${co} could ${base} ${this.magnitude(up)} ${pick(r, FUTURE_PERIODS)} , ${pick(r, SOURCES)}`;
        break;
      case 4:
        sentence = `${period.replace(/^./, (c) => c.toUpperCase())} , ${metric} at ${co} ${past} ${this.magnitude(up)}`;
        break;
      case 5:
        // A negation turns the direction around.
        effectiveUp = !up;
        sentence = r.next() < 0.5 ? `${owner} did not ${base} ${period} , ${pick(r, SOURCES)}` : `${owner} failed to ${base} ${period}`;
        break;
      default:
        // An expectation that was not met: the news is the other way.
        effectiveUp = !up;
        sentence = `Analysts had expected ${metric} at ${co} to ${base} ${period} , but that did not happen`;
        break;
    }
    const label: SentimentLabel = effectiveUp === good ? 'positive' : 'negative';
    return { sentence, label };
  }

  event(label: 'positive' | 'negative'): SentimentExample {
    const sentence = this.fill(pick(this.rng, label === 'positive' ? POSITIVE_EVENTS : NEGATIVE_EVENTS));
    return { sentence: sentence.replace(/^./, (c) => c.toUpperCase()), label };
  }

  neutral(): SentimentExample {
    const r = this.rng;
    let sentence: string;
    if (r.next() < 0.3) {
      const metric = pick(r, [...GOOD_METRICS, ...BAD_METRICS]);
      sentence = this.fill(`${r.next() < 0.5 ? "{co}'s " + metric.replace(/^the /, '') : metric + ' at {co}'} ${pick(r, FLAT)} {period}`);
    } else {
      sentence = this.fill(pick(r, NEUTRAL_FACTS));
    }
    return { sentence: sentence.replace(/^./, (c) => c.toUpperCase()), label: 'neutral' };
  }

  /** One sentence of the given label, spaced as ordinary text or as the PhraseBank is. */
  example(label: SentimentLabel): SentimentExample {
    const r = this.rng;
    let ex: SentimentExample;
    if (label === 'neutral') ex = this.neutral();
    else {
      // Movements carry most of the examples; events add other wording.
      do ex = r.next() < 0.7 ? this.movement() : this.event(label);
      while (ex.label !== label);
    }
    return { sentence: this.space(ex.sentence, r.next() < 0.35), label };
  }

  private space(sentence: string, phraseBank: boolean): string {
    const s = sentence.replace(/^./, (c) => c.toUpperCase());
    if (phraseBank) return `${s.replace(/ ?%/g, ' %').replace(/'s\b/g, " 's")} .`;
    return `${s.replace(/ , /g, ', ').replace(/ %/g, '%')}.`;
  }
}

/** Case- and spacing-blind identity of a sentence: two spellings of one sentence never land in different splits. */
export function sentenceKey(sentence: string): string {
  return sentence.toLowerCase().replace(/[^a-z0-9]+/g, '');
}

/** `n` distinct sentences with balanced labels (round-robin), skipping any whose key is in `exclude`. */
export function generateSentences(n: number, seed: number, exclude: ReadonlySet<string> = new Set()): SentimentExample[] {
  const w = new Writer(new Rng(seed));
  const seen = new Set<string>();
  const out: SentimentExample[] = [];
  let attempts = 0;
  while (out.length < n) {
    if (++attempts > 50 * n + 1000) throw new Error(`generateSentences: only ${out.length} distinct sentences found for ${n}`);
    const ex = w.example(SENTIMENT_LABELS[out.length % SENTIMENT_LABELS.length]);
    const key = sentenceKey(ex.sentence);
    if (seen.has(key) || exclude.has(key)) continue;
    seen.add(key);
    out.push(ex);
  }
  return out;
}

/** FinLoRA's context for a sentence, ending in "Answer: " as its sentiment files do. */
export function sentimentContext(sentence: string, instruction: string = SENTIMENT_INSTRUCTIONS[0]): string {
  return `Instruction: ${instruction}\nInput: ${sentence}\nAnswer: `;
}

export interface SentimentSplits {
  readonly train: SentimentExample[];
  readonly test: SentimentExample[];
}

/** Train and held-out test examples that share no sentence. */
export function sentimentSplits(nTrain: number, nTest: number, seed: number): SentimentSplits {
  const all = generateSentences(nTrain + nTest, seed);
  // Interleaved labels: the test set takes every k-th group of three so it stays balanced.
  const test: SentimentExample[] = [];
  const train: SentimentExample[] = [];
  const groups = Math.floor(all.length / 3);
  const testGroups = Math.ceil(nTest / 3);
  const stride = groups / testGroups;
  const isTestGroup = new Set(Array.from({ length: testGroups }, (_, i) => Math.floor(i * stride)));
  all.forEach((ex, i) => (isTestGroup.has(Math.floor(i / 3)) && test.length < nTest ? test : train).push(ex));
  return { train: train.slice(0, nTrain), test };
}

/**
 * `n` more training examples for given splits: new sentences (another seed) in neither
 * split, so a larger training set keeps the same held-out test set.
 */
export function extraTraining(splits: SentimentSplits, n: number, seed: number): SentimentExample[] {
  const taken = new Set([...splits.train, ...splits.test].map((x) => sentenceKey(x.sentence)));
  return generateSentences(n, seed, taken);
}

/** JSONL lines in FinLoRA's format, the instruction varying by a seeded draw. */
export function toJsonl(examples: readonly SentimentExample[], seed: number): string {
  const rng = new Rng(seed);
  return examples.map((ex) => `${JSON.stringify({ context: sentimentContext(ex.sentence, pick(rng, SENTIMENT_INSTRUCTIONS)), target: ex.label })}\n`).join('');
}
