"""The image classification model: load it once with load_classifier, then classify batches of image bytes."""

from inference_consumer.model.classifier import BatchResult, Classification, ImageClassifier, ScoredLabel
from inference_consumer.model.loader import load_classifier

__all__ = ["BatchResult", "Classification", "ImageClassifier", "ScoredLabel", "load_classifier"]
