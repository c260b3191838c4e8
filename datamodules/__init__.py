"""Datasets: one LightningDataModule per file, registered with ``@register_datamodule(name)``.

Every module in this package is imported when the registry is first used, so adding a dataset
is one new file here that subclasses :class:`vidlit.data.MultiDomainDataModule` and implements
``index_records()``.
"""
