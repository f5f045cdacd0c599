// FinLoRA's classification scoring (test/test_dataset.py, evaluate_accuracy and the
// sklearn call after it), reproduced exactly:
//
// - the label set is the set of targets in the test file;
// - an answer (the decoded text after the last "Answer:", stripped) is lower-cased and
//   its prediction is the label that occurs in it earliest (str.find); it is correct
//   when that label equals the lower-cased target;
// - accuracy = correct / questions;
// - weighted F1 is sklearn.metrics.f1_score(targets, responses, average='weighted')
//   where a correct answer's response is its target and a wrong one's is the raw
//   answer text itself, so every distinct wrong answer is a class of its own (support
//   0, weight 0, but it takes precision from no class) while a wrong answer that is
//   exactly another label counts as a false positive of that label.
//
// Where FinLoRA leaves the outcome to Python's set order (two labels found at the same
// position, one a prefix of the other), the longer label wins here.

export interface ScoredAnswer {
  /** The answer text FinLoRA scores. */
  readonly output: string;
  readonly target: string;
  /** The first label in the lower-cased answer, or null when none occurs. */
  readonly prediction: string | null;
  readonly correct: boolean;
  /** What sklearn sees: the target when correct, else the answer. */
  readonly response: string;
}

/** FinLoRA's delimiter: the answer is what follows the last "Answer:" of the decoded text. */
export function extractAnswer(decoded: string, delimiter = 'Answer:'): string {
  const parts = decoded.split(delimiter);
  return parts[parts.length - 1].trim();
}

/** The label set FinLoRA uses: the distinct targets (lower-cased for matching). */
export function labelSet(targets: readonly string[]): string[] {
  return [...new Set(targets)].sort();
}

/** The label occurring first in the lower-cased text (longest first at one position), or null. */
export function firstLabel(text: string, labels: readonly string[]): string | null {
  const lower = text.toLowerCase();
  let best: string | null = null;
  let bestAt = Infinity;
  for (const label of labels) {
    const l = label.toLowerCase();
    const at = lower.indexOf(l);
    if (at === -1) continue;
    if (at < bestAt || (at === bestAt && best !== null && l.length > best.length)) {
      best = l;
      bestAt = at;
    }
  }
  return best;
}

export function scoreAnswers(outputs: readonly string[], targets: readonly string[]): ScoredAnswer[] {
  if (outputs.length !== targets.length) throw new Error(`scoreAnswers: ${outputs.length} answers for ${targets.length} targets`);
  const labels = labelSet(targets);
  return outputs.map((output, i) => {
    const target = targets[i];
    const prediction = firstLabel(output, labels);
    const correct = prediction !== null && prediction === target.toLowerCase();
    return { output, target, prediction, correct, response: correct ? target : output };
  });
}

export function accuracy(scored: readonly ScoredAnswer[]): number {
  return scored.length === 0 ? 0 : scored.filter((s) => s.correct).length / scored.length;
}

/** Code-point order, as numpy sorts the labels sklearn finds. */
function compareCodePoints(a: string, b: string): number {
  const x = [...a], y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0)! - y[i].codePointAt(0)!;
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

export interface ClassScores {
  readonly label: string;
  readonly precision: number;
  readonly recall: number;
  readonly f1: number;
  readonly support: number;
}

/**
 * Per-class precision, recall and F1 as sklearn's precision_recall_fscore_support
 * (labels: the sorted union of both lists; 0 where a ratio's denominator is 0, sklearn's
 * zero_division default) and their support-weighted mean F1 (average='weighted').
 */
export function weightedF1(yTrue: readonly string[], yPred: readonly string[]): { f1: number; classes: ClassScores[] } {
  if (yTrue.length !== yPred.length) throw new Error(`weightedF1: ${yTrue.length} targets, ${yPred.length} predictions`);
  const labels = [...new Set([...yTrue, ...yPred])].sort(compareCodePoints);
  const classes = labels.map((label) => {
    let tp = 0, trueSum = 0, predSum = 0;
    for (let i = 0; i < yTrue.length; i++) {
      const t = yTrue[i] === label, p = yPred[i] === label;
      if (t) trueSum++;
      if (p) predSum++;
      if (t && p) tp++;
    }
    const precision = predSum === 0 ? 0 : tp / predSum;
    const recall = trueSum === 0 ? 0 : tp / trueSum;
    // sklearn: F = (1 + β²)·tp / ((1 + β²)·tp + β²·fn + fp) = 2·tp / (true + pred) for β = 1
    const f1 = trueSum + predSum === 0 ? 0 : (2 * tp) / (trueSum + predSum);
    return { label, precision, recall, f1, support: trueSum };
  });
  const total = classes.reduce((s, c) => s + c.support, 0);
  const f1 = total === 0 ? 0 : classes.reduce((s, c) => s + c.f1 * c.support, 0) / total;
  return { f1, classes };
}

export interface ConfusionMatrix {
  /** Row labels: the targets (label set). */
  readonly labels: string[];
  /** Column labels: the label set, then "(none)" for answers naming no label. */
  readonly columns: string[];
  /** counts[target][prediction]. */
  readonly counts: number[][];
}

/** Targets against the first label found in each answer (matching is case-insensitive). */
export function confusionMatrix(scored: readonly ScoredAnswer[]): ConfusionMatrix {
  const labels = labelSet(scored.map((s) => s.target));
  const columns = [...labels, '(none)'];
  const counts = labels.map(() => columns.map(() => 0));
  const lowerIndex = new Map(labels.map((l, i) => [l.toLowerCase(), i]));
  for (const s of scored) {
    const row = labels.indexOf(s.target);
    const col = s.prediction === null ? labels.length : lowerIndex.get(s.prediction) ?? labels.length;
    counts[row][col]++;
  }
  return { labels, columns, counts };
}
