"""DG methods: one LightningModule per file, registered with ``@register_strategy(name)``.

Every module here is imported when the registry is first used, so adding a method is one new
file that subclasses :class:`vidlit.models.strategy.Strategy` and overrides ``compute_loss``.
"""
