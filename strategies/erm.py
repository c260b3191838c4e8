"""``erm``: empirical risk minimisation, i.e. plain fine-tuning with cross-entropy on the pooled
source domains. All of its behaviour (freeze policies, lr split, schedule) lives in the base."""
from vidlit.models.strategy import Strategy, register_strategy


@register_strategy("erm")
class ERM(Strategy):
    """Cross-entropy on every source clip; the baseline every DG method is compared with."""
