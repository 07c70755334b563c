"""What every server of the logged model does with a request, whichever engine batches them: check its body
before it joins a batch (so that a bad request fails alone), and tag the texts of a batch of requests in one
model call.

    texts = parse_inputs(b'{"inputs": ["John Smith flew to Paris."]}')   # BadRequest naming the problem
    tag_together(model, [texts, other_texts])                             # [[entities per text], ...]
"""

import json


class BadRequest(ValueError):
    pass


def parse_inputs(body):
    """The texts of a request body {"inputs": [str, ...]}; BadRequest saying what is wrong otherwise."""
    try:
        data = json.loads(body)
    except ValueError as err:
        raise BadRequest(f"the body is not valid JSON ({err}); send {{\"inputs\": [\"text\", ...]}}") from None
    if not isinstance(data, dict) or "inputs" not in data:
        raise BadRequest("the body must be a JSON object with an 'inputs' key: {\"inputs\": [\"text\", ...]}")
    texts = data["inputs"]
    if not isinstance(texts, list):
        raise BadRequest(f"'inputs' must be a list of strings, not {type(texts).__name__}")
    wrong = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if wrong:
        raise BadRequest(f"'inputs' must be a list of strings: item {wrong[0][0]} is {wrong[0][1]}")
    return texts


def tag_together(model, requests_texts):
    """One predict call of the MLflow model for the texts of every request: a list of entity lists per
    request. Inside that call the windows go into forward passes by token budget, longest first
    (nerpipe.data.batching.sorted_batches), so texts of similar length share a pass."""
    texts = [text for texts in requests_texts for text in texts]
    entities = model.predict(texts) if texts else []
    out, start = [], 0
    for texts in requests_texts:
        out.append(entities[start:start + len(texts)])
        start += len(texts)
    return out


def compact_json(data):
    """The answer's bytes: JSON without indentation or spaces, UTF-8 as it is."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
