"""nlp: Chinese financial NLP — span annotation, token-classification training and fact extraction.

    from nlp import load
    extractor = load("runs/main")      # a model directory written by `nlp train`
    doc = extractor(text)              # doc.spans, doc.facts (dataclasses with to_dict())
"""

__version__ = "0.1.0"


def load(model_dir, **kwargs):
    """Load a trained model directory as an Extractor (see nlp.infer)."""
    from .infer import load as _load

    return _load(model_dir, **kwargs)


__all__ = ["load", "__version__"]
