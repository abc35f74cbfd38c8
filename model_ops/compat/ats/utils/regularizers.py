"""``ats.utils.regularizers``: the attention entropy regularizer."""

from model_ops.regularizers import MultinomialEntropy, multinomial_entropy

__all__ = ["MultinomialEntropy", "multinomial_entropy"]
