"""The MLflow Python-function model the train stage logs: raw texts in, entities out, by nerpipe predict's code.

    model = mlflow.pyfunc.load_model("runs:/<run_id>/model")
    model.predict(["John Smith flew to Paris.", ""])
    -> [[{"text": "John Smith", "type": "PER", "start": 0, "end": 10, "score": 0.9731},
         {"text": "Paris", "type": "LOC", "start": 19, "end": 24, "score": 0.9902}], []]

One list of entities per input text, exactly as `nerpipe predict --format jsonl` gives them: the same
words, windows, batches, first-sub-token labels, IOB2 reading and 4-digit scores. The type hints of
`predict` are the model's signature: MLflow checks every input is a string (a number or null is a 400
from the server, not a text "None") and describes the output. The logged model directory holds

  pyfunc_model.py           this file, which MLflow runs to get the model (models from code: no pickle)
  code/nerpipe/             the nerpipe package that trained the model, put first on sys.path by MLflow:
                            the model loads where nerpipe is not installed, and in a fresh process runs
                            this code even where another nerpipe is installed
  artifacts/save_pretrained/   the trained model, a copy of data/model (config, safetensors weights, tokenizer,
                               nerpipe_model.json): transformers and `nerpipe predict --model` load it as it is

The windows, the document context and the precision are the model's own, from its nerpipe_model.json
(nerpipe/model/description.py). The model runs on CUDA when there is a GPU (CUDA_VISIBLE_DEVICES= keeps it
on the CPU), with bf16 autocast as the train.bf16 it was trained with says for that device.
"""

import threading

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel

from nerpipe.core.params import EvaluateParams
from nerpipe.model.description import usage_settings
from nerpipe.predict.model_source import load_trained_model
from nerpipe.predict.output import entity_records
from nerpipe.predict.text import predict_lines, ready_to_tag


class Entity(BaseModel):
    text: str
    type: str
    start: int
    """Offset of the first character, in code points (a Python string index)."""
    end: int
    """Offset after the last character: text == input[start:end]."""
    score: float
    """Mean over the entity's words of the softmax probability of each word's tag."""


class EntityTagger(PythonModel):
    def load_context(self, context):
        directory = context.artifacts["save_pretrained"]
        settings = usage_settings(directory)
        self.model, self.tokenizer, _ = load_trained_model(directory)
        self.device, self.bf16 = ready_to_tag(self.model, self.tokenizer, directory, settings["bf16"])
        self.max_length, self.window_overlap = settings["max_length"], settings["window_overlap"]
        self.context = settings["context"]
        self.batch_size = EvaluateParams.batch_size  # windows per forward pass: nerpipe predict's default
        # The server runs each request in a thread of its own. One forward pass at a time already uses
        # every core, and a fast tokenizer must not be called from two threads at once.
        self.lock = threading.Lock()

    def predict(self, model_input: list[str], params=None) -> list[list[Entity]]:
        with self.lock:
            predictions = predict_lines(self.model, self.tokenizer, model_input, self.max_length,
                                        self.window_overlap, self.batch_size, self.device, self.bf16,
                                        context=self.context)
            return [entity_records(prediction) for prediction in predictions]


set_model(EntityTagger())  # what MLflow takes from this file when it logs or loads the model
