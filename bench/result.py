"""The one record every trainer's run returns (bench.run_benchmark.run_nerpipe and
bench.hf_trainer.train_and_evaluate), so that the table and the ratios compare like with like."""

import dataclasses
import os
import resource
from dataclasses import dataclass

MODES = ("conlleval", "strict")


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # ru_maxrss is KiB on Linux


def loadavg():
    return round(os.getloadavg()[0], 2)


@dataclass
class TrainResult:
    trainer: str
    """'nerpipe' or 'hf_trainer'."""
    batch_order: str
    """How training batches are drawn: the Trainer's train_sampling_strategy, or nerpipe's."""
    bf16: bool
    """Whether training and prediction ran under bf16 autocast."""
    config: dict
    """Hyperparameters, threads, library versions."""
    train_sentences: int
    train_rows: int
    """Windows (model input rows) per epoch; a sentence longer than the window gives several."""
    steps: int
    """Optimizer steps taken."""
    planned_steps: int
    train_seconds: float
    """Wall seconds of training alone: nerpipe's TrainState.train_seconds (optimizer steps), the whole
    `trainer.train()` for the Trainer (which evaluates and saves nothing here)."""
    training_call_seconds: float
    """Wall seconds of the whole `fit()` / `trainer.train()` call."""
    dev_eval_seconds_in_training: float
    """Wall seconds of dev evaluations inside that call: nerpipe's TrainState.eval_seconds; 0 for the Trainer."""
    train_cpu_seconds: float
    """Process CPU seconds (all threads) of the call, dev evaluations excluded."""
    cpu_utilisation: float
    """train_cpu_seconds / (wall seconds they were spent in * threads): well below 1 means other processes
    took cores, and the speeds are a lower bound."""
    fed: dict
    """What training fed the model over all epochs: rows, tokens (real sub-tokens, [CLS]/[SEP] included),
    padded_tokens (what the matmuls processed), padding_fraction."""
    train_loss: float
    """Mean training loss over all optimizer steps."""
    loss_history: list
    """Rows of step and loss, as each trainer logs them."""
    dev_evals: list
    """Dev evaluations during training: step, epoch, dev_f1/precision/recall (conlleval) and `seconds`, the wall
    time since the training call began when it ended. nerpipe: once per epoch, or every --eval-every steps and
    at each epoch's end; the Trainer: the same with --eval-every or --target-f1, else none."""
    eval_seconds: dict
    """Split -> wall seconds to predict it after training."""
    scores: dict
    """Split -> mode (conlleval, strict) -> precision, recall, f1, support."""
    eval_batch_size: int
    peak_rss_mib: dict
    """Peak resident memory before training, after training, after evaluation."""
    loadavg_1min: list
    """1-minute load average before and after training."""
    device: str = "cpu"
    """'cpu', or the name of the GPU it trained on."""
    peak_gpu_mib: dict = None
    """On a GPU: peak memory of training and evaluation, allocated by tensors and reserved by torch."""
    target_f1: float = None
    """Time-to-accuracy (--target-f1): the dev F1 (conlleval, 0-1) at which training stopped; None without one."""
    time_to_target_seconds: float = None
    """Wall seconds from the start of the training call to the end of the first dev evaluation that reached
    target_f1, every step and every dev evaluation before it included; None when it was never reached."""
    target_step: int = None
    """The optimizer step of that evaluation."""

    @property
    def f1(self):
        return {split: {mode: s[mode]["f1"] for mode in MODES} for split, s in self.scores.items()}

    def to_json(self):
        """The fields plus the speeds derived from them (what the table and the ratios read)."""
        seconds = self.train_seconds
        return {**dataclasses.asdict(self), "f1": self.f1,
                # the sentences of the rows fed: all epochs', or fewer where a run stopped at its target
                "train_sentences_per_second": round(self.train_sentences * self.fed["rows"] / self.train_rows / seconds, 2),
                "train_rows_per_second": round(self.fed["rows"] / seconds, 2),
                "train_subtokens_per_second": round(self.fed["tokens"] / seconds, 1),
                "train_padded_tokens_per_second": round(self.fed["padded_tokens"] / seconds, 1),
                "train_subtokens_per_cpu_second": round(self.fed["tokens"] / self.train_cpu_seconds, 1)}


def fed_counts(rows, tokens, padded_tokens):
    return {"rows": rows, "tokens": tokens, "padded_tokens": padded_tokens,
            "padding_fraction": round(1 - tokens / max(padded_tokens, 1), 4)}


def entity_scores_only(scores):
    """score_split's output without the per-type and token-level parts."""
    return {split: {mode: {k: v for k, v in s[mode].items() if k != "per_type"} for mode in MODES}
            for split, s in scores.items()}


def reached_target(dev_evals, target):
    """(seconds, step) of the first dev evaluation whose F1 reached `target`; (None, None) if none did or no target."""
    hit = next((e for e in dev_evals if target and e["dev_f1"] >= target), None)
    return (round(hit["seconds"], 3), hit["step"]) if hit else (None, None)
