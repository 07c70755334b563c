"""The part of the train stage's setup that decides what the training computes: the model it starts
from (model.name, the labels, dropout, seed, the fine-tuning method) and the fit over the prepared
data with its dev scoring. It is in nerpipe.train.checkpoints.TRAJECTORY_CODE, so a change here
discards a checkpoint; nerpipe.train.run around it (MLflow, export, reports) is not, so a fix there
after a failure at the end resumes the kept checkpoint at its final step.
"""

from nerpipe.model.loading import load_for_training
from nerpipe.model.methods import prepare_for_training
from nerpipe.train.loop import DevSet, RunContext, dev_scorer, fit


def training_model(params, labels):
    """The model that trains: model.name with a fresh head for `labels`, under train.method."""
    return prepare_for_training(load_for_training(params.model.name, labels, params.train.dropout, params.train.seed),
                                params.train, params.prepare.max_length)


def train_on(model, train_split, dev, params, pad_id, device, bf16, checkpoints, log_metrics, world):
    """fit `model` on the prepared train split, scoring the dev split (prepared.PreparedSplit both);
    returns the final TrainState. log_metrics: ({name: value}, step) -> None."""
    devset = DevSet(dev.examples, dev.words, dev.gold, model.config.id2label, params.train.batch_size)
    return fit(model.to(device), train_split.examples, RunContext(
        params.train, params.lr, pad_id, device, bf16, checkpoints,
        evaluate_dev=dev_scorer(devset, pad_id, device, bf16), log_metrics=log_metrics, world=world))
